"""encode(): token ids, label alignment and SQuAD windows."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from tasks.base import SpanExample, TaggingExample, TextExample
from tasks.features import IGNORE, encode
from tasks.registry import get_task


def test_classification(tokenizer):
    task = get_task("sst2")
    examples = [TextExample("a", "a fine film", label="1"), TextExample("b", "dull " * 300, label="0")]
    f = encode(task, examples, tokenizer)
    assert len(f) == 2 and f.kind == "classification" and f.max_length == 128
    assert f.labels.dtype == np.int32 and f.labels.tolist() == [1, 0]
    assert f.input_ids[0].dtype == np.int32
    assert f.input_ids[0][0] == tokenizer.cls_token_id and f.input_ids[0][-1] == tokenizer.sep_token_id
    assert f.lengths.tolist() == [5, 128]  # [CLS] a fine film [SEP]; the long one truncated
    assert f.example_index.tolist() == [0, 1]
    assert not f.token_type_ids[0].any()


def test_pairs_regression_and_unlabelled(tokenizer):
    task = get_task("stsb")
    f = encode(task, [TextExample("a", "A man sings.", "A man is singing.", 3.8)], tokenizer)
    assert f.labels.dtype == np.float32 and f.labels[0] == pytest.approx(3.8)
    types = f.token_type_ids[0]
    assert types[0] == 0 and types[-1] == 1 and set(types.tolist()) == {0, 1}
    unlabelled = encode(get_task("mrpc"), [TextExample("t", "A cat.", "The cat.")], tokenizer)
    assert unlabelled.labels is None


def test_first_subtoken_labelling(tokenizer):
    task = get_task("conll2003")
    words = ("John", "Heisenbergification", "visited", "Paris")
    tags = ("B-PER", "I-PER", "O", "B-LOC")
    assert len(tokenizer.tokenize("Heisenbergification")) > 2  # really split into pieces
    f = encode(task, [TaggingExample("s", words, tags)], tokenizer)
    word_ids, labels = f.word_ids[0], f.labels[0]
    assert word_ids[0] == -1 and word_ids[-1] == -1  # [CLS], [SEP]
    pieces = np.flatnonzero(word_ids == 1)
    assert len(pieces) > 2
    ids = {t: i for i, t in enumerate(task.labels)}
    assert labels[pieces[0]] == ids["I-PER"]
    assert (labels[pieces[1:]] == IGNORE).all()
    expected = [IGNORE, ids["B-PER"], ids["I-PER"]] + [IGNORE] * (len(pieces) - 1)
    expected += [ids["O"], ids["B-LOC"], IGNORE]
    assert labels.tolist() == expected
    assert len(labels) == f.lengths[0] == len(f.input_ids[0])


@pytest.mark.parametrize("n_words", [200])
def test_tagging_truncation(tokenizer, n_words):
    task = get_task("conll2003")
    f = encode(task, [TaggingExample("s", ("word",) * n_words, ("O",) * n_words)], tokenizer)
    assert f.lengths[0] == task.max_length
    assert (f.labels[0] != IGNORE).sum() == task.max_length - 2


def _long_context(answer: str) -> tuple[str, int]:
    before = " ".join(f"Sentence {k} talks about the weather in town number {k}." for k in range(12))
    after = " ".join(f"Later line {k} mentions rivers and bridges {k}." for k in range(12))
    context = f"{before} The tallest building is {answer} in the city. {after}"
    return context, context.index(answer)


def test_squad_windows(tokenizer):
    task = dataclasses.replace(get_task("squad"), max_length=64, doc_stride=16, max_query_length=16)
    answer = "the Eiffel Tower"
    context, start = _long_context(answer)
    example = SpanExample("q1", "  What is the tallest building?", context, ((answer, start),))
    f = encode(task, [example], tokenizer)
    assert len(f) >= 4 and (f.example_index == 0).all()
    assert f.lengths.max() <= 64
    hits = 0
    for i in range(len(f)):
        off = f.offsets[i]
        assert off.shape == (f.lengths[i], 2) and tuple(off[0]) == (-1, -1)
        in_context = f.token_type_ids[i] == 1
        in_context[-1] = False  # final [SEP]
        assert ((off[:, 0] >= 0) == in_context).all()
        s, e = f.start_positions[i], f.end_positions[i]
        covered = off[in_context, 0].min() <= start and off[in_context, 1].max() >= start + len(answer)
        if covered:
            hits += 1
            assert context[off[s, 0] : off[e, 1]] == answer
        else:
            assert s == e == 0
    assert 1 <= hits < len(f)
    # consecutive windows share doc_stride context tokens
    first_ctx = f.offsets[0][f.offsets[0][:, 0] >= 0]
    second_ctx = f.offsets[1][f.offsets[1][:, 0] >= 0]
    assert (first_ctx[-task.doc_stride :] == second_ctx[: task.doc_stride]).all()


def test_squad_question_cut_and_examples(tokenizer):
    task = dataclasses.replace(get_task("squad"), max_length=64, doc_stride=16, max_query_length=16)
    question = " ".join(["why"] * 40) + "?"
    short = SpanExample("q1", "Who?", "Ada wrote it.", (("Ada", 0),))
    long = SpanExample("q2", question, "Ada wrote it.", ())
    f = encode(task, [short, long], tokenizer)
    assert f.example_index.tolist() == [0, 1]
    assert (f.token_type_ids[1] == 0).sum() == 16 + 2  # [CLS] question(16) [SEP]
    assert f.start_positions.tolist()[1] == 0
    assert "Ada wrote it." [f.offsets[0][f.start_positions[0], 0] : f.offsets[0][f.end_positions[0], 1]] == "Ada"
    unlabelled = encode(task, [long], tokenizer)
    assert unlabelled.start_positions is None and unlabelled.labels is None


def test_wrong_example_type(tokenizer):
    with pytest.raises(TypeError, match="TextExample"):
        encode(get_task("sst2"), [TaggingExample("s", ("a",), ("O",))], tokenizer)
