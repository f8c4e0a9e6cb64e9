"""Plain helper functions shared by tests: a tiny teacher and synthetic task data.

Import as `from helpers import ...` (tests/conftest.py puts tests/ on sys.path).
Everything here writes into a directory the caller owns (a pytest tmp dir).
The synthetic data sets are small, short (every sequence fits the smallest
length bucket) and learnable by a 2-layer, hidden-36 BERT in a few epochs.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np

from tasks.features import Features

# --- vocabulary ---------------------------------------------------------------

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
POSITIVE = ["great", "fun", "good", "superb", "lovely", "charming"]
NEGATIVE = ["dull", "bad", "awful", "boring", "poor", "weak"]
FILLER = ["a", "the", "movie", "film", "plot", "story", "really", "very", "quite", "this", "was", "is", "with", "cast"]
PERSONS = ["john", "mary", "paul", "anna", "peter", "lisa"]
SURNAMES = ["smith", "jones", "brown"]
PLACES = ["paris", "london", "berlin", "rome"]
VERBS = ["met", "saw", "visited", "left", "called"]
OTHER = ["in", "at", "and", "then", "today", "yesterday", "where", "who", "what", "did", "go", "lives", "works", "?", ".", ","]
STS_WORDS = ["cat", "dog", "man", "woman", "house", "car", "ball", "tree", "runs", "sits"]
STS_FRESH = ["red", "blue", "big", "small", "eats", "plays"]
PIECES = ["##s", "##ing", "##ed", "##ly"]

WORDS = list(dict.fromkeys(POSITIVE + NEGATIVE + FILLER + PERSONS + SURNAMES + PLACES + VERBS + OTHER + STS_WORDS + STS_FRESH))
VOCAB = SPECIAL + WORDS + PIECES


def write_vocab(directory: Path, words: list[str] = VOCAB) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "vocab.txt"
    path.write_text("\n".join(words) + "\n")
    return path


def make_tokenizer(directory: Path):
    """A lower-casing BertTokenizerFast over VOCAB (vocab.txt written to `directory`).

    `from_pretrained(dir)`, not `BertTokenizerFast(vocab_file=...)`: transformers 5
    ignores `vocab_file` and builds a 5-token tokenizer that maps every word to [UNK].
    """
    from transformers import BertTokenizerFast

    write_vocab(directory)
    tok = BertTokenizerFast.from_pretrained(str(directory))
    assert len(tok) == len(VOCAB), (len(tok), len(VOCAB))
    return tok


def bert_init_params(arch, seed: int = 0) -> dict:
    """Encoder parameters (head 'none') of `arch` with BERT's init: N(0, initializer_range) matrices, zero
    biases, unit LayerNorm scales, drawn with numpy over `abstract_params` (no init to compile)."""
    import jax
    import numpy as np

    from distill.model.bert import abstract_params, build_model

    rng = np.random.default_rng(seed)

    def leaf(path, x):
        name = jax.tree_util.keystr(path)
        if name.endswith("['scale']"):
            return np.ones(x.shape, x.dtype)
        if name.endswith("['bias']"):
            return np.zeros(x.shape, x.dtype)
        return rng.normal(0.0, arch.initializer_range, x.shape).astype(x.dtype)

    return jax.tree_util.tree_map_with_path(leaf, abstract_params(build_model(arch, "none")))


def write_tiny_teacher(directory: Path, *, max_position_embeddings: int = 384, seed: int = 0) -> Path:
    """A random 2-layer, hidden-36, 3-head, FFN-37 BERT (head 'none') in the HF layout.

    384 positions cover every task's max_length (SQuAD's is 384). The weights
    are BERT's init (N(0, 0.02) matrices, zero biases, unit LayerNorm scales)
    drawn with numpy over `abstract_params`, which saves compiling an init.
    """
    from distill.arch import BertArch
    from distill.model.store import save_bert

    directory = Path(directory)
    tok = make_tokenizer(directory.parent / f".{directory.name}-vocab")
    arch = BertArch.uniform(2, 36, 3, 37, vocab_size=len(tok), max_position_embeddings=max_position_embeddings)
    return save_bert(directory, arch, bert_init_params(arch, seed), tok, head="none")


# --- SST-2 --------------------------------------------------------------------


def sst2_rows(n: int, seed: int) -> list[tuple[str, str]]:
    """(sentence, label) pairs: one sentiment word among 2-5 filler words."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        words = rng.sample(FILLER, rng.randint(2, 5))
        words.insert(rng.randint(0, len(words)), rng.choice(POSITIVE if label else NEGATIVE))
        rows.append((" ".join(words), str(label)))
    return rows


def write_tsv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join("\t".join(r) for r in [header, *rows]) + "\n")
    return path


def write_sst2(directory: Path, n_train: int = 200, n_dev: int = 40, seed: int = 0) -> Path:
    """train.tsv and dev.tsv in the GLUE SST-2 format (header `sentence\\tlabel`)."""
    directory = Path(directory)
    write_tsv(directory / "train.tsv", ["sentence", "label"], [list(r) for r in sst2_rows(n_train, seed)])
    write_tsv(directory / "dev.tsv", ["sentence", "label"], [list(r) for r in sst2_rows(n_dev, seed + 1)])
    return directory


# --- STS-B --------------------------------------------------------------------

STSB_HEADER = ["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2", "score"]


def stsb_rows(n: int, seed: int) -> list[list[str]]:
    """10-column STS-B rows; score = 5 x the fraction of sentence1's 4 words that sentence2 keeps.

    Replacement words come from a separate pool (STS_FRESH), so the overlap can
    also be read off sentence2 alone; that keeps it learnable in a few epochs.
    """
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        first = rng.sample(STS_WORDS, 4)
        kept = i % 5
        second = first[:kept] + rng.sample(STS_FRESH, 4 - kept)
        rng.shuffle(second)
        score = 5.0 * kept / 4
        rows.append([str(i), "main-captions", "MSRvid", "2012test", f"{i:04d}", "none", "none",
                     " ".join(first), " ".join(second), f"{score:.3f}"])
    return rows


def write_stsb(directory: Path, n_train: int = 200, n_dev: int = 40, seed: int = 0) -> Path:
    directory = Path(directory)
    write_tsv(directory / "train.tsv", STSB_HEADER, stsb_rows(n_train, seed))
    write_tsv(directory / "dev.tsv", STSB_HEADER, stsb_rows(n_dev, seed + 1))
    return directory


# --- CoNLL-2003 ---------------------------------------------------------------


def conll_sentences(n: int, seed: int) -> list[list[tuple[str, str, str]]]:
    """Sentences of (token, POS, tag): capitalised names are PER (1-2 words), cities LOC."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        sent = []
        person = [(rng.choice(PERSONS).capitalize(), "NNP", "B-PER")]
        if rng.random() < 0.5:
            person.append((rng.choice(SURNAMES).capitalize(), "NNP", "I-PER"))
        place = [(rng.choice(PLACES).capitalize(), "NNP", "B-LOC")]
        filler = [(w, "XX", "O") for w in rng.sample(["then", "today", "yesterday", "and", "the", "a"], rng.randint(0, 2))]
        sent += filler[:1] + person + [(rng.choice(VERBS), "VBD", "O")]
        if rng.random() < 0.5:
            sent += [(rng.choice(["in", "at"]), "IN", "O")] + place
        else:
            other = [(rng.choice(PERSONS).capitalize(), "NNP", "B-PER")]
            sent += other + [("in", "IN", "O")] + place
        sent += filler[1:] + [(".", ".", "O")]
        out.append(sent)
    return out


def conll_text(sentences) -> str:
    lines = ["-DOCSTART- -X- O", ""]
    for sent in sentences:
        lines += [" ".join(t) for t in sent] + [""]
    return "\n".join(lines)


def write_conll(directory: Path, n_train: int = 150, n_dev: int = 30, seed: int = 0) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "train.txt").write_text(conll_text(conll_sentences(n_train, seed)))
    (directory / "dev.txt").write_text(conll_text(conll_sentences(n_dev, seed + 1)))
    return directory


# --- SQuAD v1.1 ---------------------------------------------------------------

SQUAD_PARAGRAPHS = [
    ("john lives in paris .", [
        ("where does john live ?", "paris"),
        ("who lives in paris ?", "john"),
    ]),
    ("lisa smith works in rome .", [
        ("who works in rome ?", "lisa smith"),
        ("where does lisa work ?", "rome"),
    ]),
    ("yesterday paul visited london .", [
        ("where did paul go ?", "london"),
        ("who visited london ?", "paul"),
    ]),
]
"""(context, [(question, answer)]): 3 contexts, 6 questions; 'who' asks for the
person, 'where' for the place, one of each per context."""


def squad_doc(paragraphs=SQUAD_PARAGRAPHS) -> dict:
    """A SQuAD v1.1 document; each answer is the first occurrence of its text in the context."""
    data = []
    for p, (context, qas) in enumerate(paragraphs):
        items = []
        for q, (question, answer) in enumerate(qas):
            start = context.index(answer)
            items.append({"id": f"q{p}-{q}", "question": question,
                          "answers": [{"text": answer, "answer_start": start}]})
        data.append({"title": f"t{p}", "paragraphs": [{"context": context, "qas": items}]})
    return {"version": "1.1", "data": data}


def write_squad(directory: Path, doc: dict | None = None) -> Path:
    """train-v1.1.json and dev-v1.1.json, both the same document."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    text = json.dumps(squad_doc() if doc is None else doc, indent=1)
    for name in ("train-v1.1.json", "dev-v1.1.json"):
        (directory / name).write_text(text)
    return directory


def write_task_teacher(directory: Path, task_name: str, *, seed: int = 0) -> Path:
    """A random tiny teacher saved as if fine-tuned on `task_name` (its head and labels, `task` in config)."""
    import jax

    from distill.arch import BertArch
    from distill.model.bert import build_model, init_params
    from distill.model.store import save_bert
    from tasks.registry import get_task

    directory = Path(directory)
    task = get_task(task_name)
    tok = make_tokenizer(directory.parent / f".{directory.name}-vocab")
    arch = BertArch.uniform(2, 36, 3, 37, vocab_size=len(tok), max_position_embeddings=task.max_length)
    params = init_params(build_model(arch, task.kind, task.num_labels), jax.random.key(seed))
    labels = task.labels if task.kind in ("classification", "tagging") else ()
    return save_bert(
        directory, arch, jax.device_get(params), tok, head=task.kind, labels=labels,
        extra={"task": task.name, "max_length": task.max_length},
    )


# --- Chinese character-level NER (the generic `ner` task) ----------------------

CJK_SURNAMES = list("张王李赵")
CJK_GIVEN = list("伟芳娜敏静")
CJK_PLACES = ["北京", "上海", "广州", "深圳", "南京"]
CJK_VERBS = ["在", "去", "住在", "来自"]
CJK_FILLER = ["今天", "昨天", "我们", "他们", "说"]
CJK_CHARS = sorted(set("".join(CJK_SURNAMES + CJK_GIVEN + CJK_PLACES + CJK_VERBS + CJK_FILLER)))
CJK_VOCAB = SPECIAL + CJK_CHARS + ["。", "，"]
"""[PAD] [UNK] [CLS] [SEP] [MASK], then each character once: a bert-base-chinese style vocab.txt."""


def chinese_ner_sentences(n: int, seed: int) -> list[list[tuple[str, str]]]:
    """Sentences of (character, BIO tag): a 2-3 character person (PER), a verb, a 2-character place (LOC)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        name = rng.choice(CJK_SURNAMES) + "".join(rng.sample(CJK_GIVEN, rng.randint(1, 2)))
        sent = [(c, "O") for c in rng.choice(CJK_FILLER)] if rng.random() < 0.5 else []
        sent += [(c, "B-PER" if i == 0 else "I-PER") for i, c in enumerate(name)]
        sent += [(c, "O") for c in rng.choice(CJK_VERBS)]
        sent += [(c, "B-LOC" if i == 0 else "I-LOC") for i, c in enumerate(rng.choice(CJK_PLACES))]
        sent.append(("。", "O"))
        out.append(sent)
    return out


def write_chinese_ner(directory: Path, n_train: int = 120, n_dev: int = 30, seed: int = 0) -> Path:
    """train.txt and dev.txt: one `character tag` line per character, a blank line after each sentence."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name, n, s in (("train.txt", n_train, seed), ("dev.txt", n_dev, seed + 1)):
        sents = chinese_ner_sentences(n, s)
        (directory / name).write_text("".join("".join(f"{c} {t}\n" for c, t in sent) + "\n" for sent in sents),
                                      encoding="utf-8")
    return directory


def write_chinese_hf_teacher(directory: Path, seed: int = 0) -> Path:
    """A random 2-layer, hidden-36 BERT as a Hugging Face directory holds a Chinese BERT: a plain
    `BertConfig` config.json (no `bertnas` block), model.safetensors with `bert.` names, vocab.txt only."""
    from safetensors.numpy import save_file

    from distill.arch import BertArch
    from distill.model.hf import to_hf

    directory = Path(directory)
    write_vocab(directory, CJK_VOCAB)
    arch = BertArch.uniform(2, 36, 3, 37, vocab_size=len(CJK_VOCAB), max_position_embeddings=128)
    params = bert_init_params(arch, seed)
    save_file(to_hf(params, arch, prefix="bert."), str(directory / "model.safetensors"))
    config = {**arch.to_hf_config(), "architectures": ["BertForMaskedLM"], "directionality": "bidi"}
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    return directory


def sst2_training_left(data_dir: Path, validation: int) -> int:
    """The training examples of an SST-2 directory that a `validation` slice leaves (`tasks.holdout`: its
    repeats and parts leave training too)."""
    from tasks.holdout import split_off
    from tasks.readers import read_split
    from tasks.registry import get_task

    return len(split_off(read_split(get_task("sst2"), "train", data_dir), validation)[0])


def token_features(kind: str, n: int = 11, seed: int = 5) -> Features:
    """`n` random sentence features of 2-7 tokens (ids 5-100 after a [CLS] of 2, the second half of each
    of token type 1), labelled as `kind` ('classification': 3 classes; else a 0-5 score), max length 7."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, 8, size=n).astype(np.int32)
    ids = [np.concatenate([[2], rng.integers(5, 101, size=k - 1)]).astype(np.int32) for k in lengths]
    types = [(np.arange(k) >= k // 2).astype(np.int32) for k in lengths]
    labels = rng.integers(0, 3, size=n).astype(np.int32) if kind == "classification" else \
        rng.uniform(0, 5, size=n).astype(np.float32)
    return Features(kind=kind, max_length=7, input_ids=ids, token_type_ids=types, lengths=lengths,
                    example_index=np.arange(n, dtype=np.int32), labels=labels)
