"""Metric functions on known cases, and evaluate() from model outputs."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from tasks.base import SpanExample, TaggingExample, TextExample
from tasks.decode import ClassPrediction, predict_labels
from tasks.errors import UserError
from tasks.features import encode
from tasks.metrics import (
    accuracy,
    binary_f1,
    entity_f1,
    entity_precision,
    entity_recall,
    evaluate,
    get_metric,
    matthews_corr,
    normalize_answer,
    paired_bootstrap,
    pearson,
    spearmanr,
    squad_exact_match,
    squad_f1,
)
from tasks.registry import get_task


def test_squad_normalization_and_scores():
    assert normalize_answer("The  Cat!") == "cat"
    assert normalize_answer("an apple, a pear") == "apple pear"
    assert squad_exact_match(["The Cat"], [["cat"]]) == 100.0
    assert squad_exact_match(["cat sat"], [["cat"]]) == 0.0
    # tokens {cat, sat} vs {cat, sat, on, mat}: precision 1, recall 1/2
    assert squad_f1(["the cat sat"], [["cat sat on the mat"]]) == pytest.approx(100 * 2 / 3)
    # best over ground truths, mean over questions
    assert squad_f1(["Paris", "x"], [["in Paris", "Paris"], ["y"]]) == pytest.approx(50.0)
    assert squad_exact_match(["Paris", "y"], [["London", "paris."], ["y"]]) == 100.0


def test_seqeval_entities():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG"], ["B-ORG", "O"]]
    # gold entities PER, LOC, ORG; predicted PER, ORG(wrong), ORG: 2 correct of 3 each
    assert entity_precision(pred, gold) == pytest.approx(2 / 3)
    assert entity_recall(pred, gold) == pytest.approx(2 / 3)
    assert entity_f1(pred, gold) == pytest.approx(2 / 3)
    assert entity_f1(gold, gold) == 1.0


def test_classification_metrics():
    assert accuracy([1, 0, 1, 1], [1, 0, 0, 1]) == 0.75
    assert binary_f1([1, 1, 0, 0], [1, 0, 0, 1]) == pytest.approx(0.5)
    # tp 1, fp 1, tn 2, fn 0 -> (1*2 - 1*0) / sqrt(2*1*3*2)
    assert matthews_corr([1, 1, 0, 0], [1, 0, 0, 0]) == pytest.approx(2 / np.sqrt(12))
    assert matthews_corr([0, 0, 0], [0, 1, 0]) == 0.0
    assert matthews_corr([2, 0, 1], [2, 0, 1]) == pytest.approx(1.0)


def test_correlations():
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert pearson([1.0, 2.0, 3.0, 4.0], [1.0, 3.0, 2.0, 4.0]) == pytest.approx(0.8)
    assert spearmanr([1, 2, 3, 4], [1, 4, 9, 16]) == pytest.approx(1.0)
    assert pearson([1, 2, 3, 4], [1, 4, 9, 16]) < 1.0
    assert pearson([2, 2, 2], [1, 2, 3]) == 0.0


def test_get_metric():
    assert get_metric("span", "f1") is squad_f1
    assert get_metric("tagging", "f1") is entity_f1
    with pytest.raises(UserError, match="valid metrics: accuracy, f1, matthews_corr"):
        get_metric("classification", "bleu")


def _one_hot(ids, width: int, classes: int) -> np.ndarray:
    out = np.zeros((len(ids), width, classes), dtype=np.float32)
    for i, row in enumerate(ids):
        for t, k in enumerate(row):
            if k >= 0:
                out[i, t, k] = 5.0
    return out


def test_evaluate_tagging(tokenizer):
    task = get_task("conll2003")
    examples = [
        TaggingExample("a", ("John", "Heisenbergification", "visited", "Paris"), ("B-PER", "I-PER", "O", "B-LOC")),
        TaggingExample("b", ("The", "UN", "met", "."), ("O", "B-ORG", "O", "O")),
    ]
    f = encode(task, examples, tokenizer)
    logits = _one_hot(f.labels, int(f.lengths.max()) + 3, task.num_labels)
    scores = evaluate(task, f, examples, logits)
    assert scores == {"f1": 1.0, "precision": 1.0, "recall": 1.0}
    logits[0, :, :] = 0
    logits[0, :, 0] = 1  # first sentence: all 'O'
    assert evaluate(task, f, examples, logits)["recall"] == pytest.approx(1 / 3)
    assert predict_labels(task, f, logits, examples)[1] == ("O", "B-ORG", "O", "O")


def test_evaluate_tagging_truncated_words_are_o(tokenizer):
    task = dataclasses.replace(get_task("conll2003"), max_length=8)
    words = ("a", "b", "c", "d", "e", "f", "Paris")
    examples = [TaggingExample("a", words, ("O",) * 6 + ("B-LOC",))]
    f = encode(task, examples, tokenizer)
    scores = evaluate(task, f, examples, _one_hot(f.labels, 8, task.num_labels))
    assert scores["recall"] == 0.0 and scores["precision"] == 0.0


def test_evaluate_span_over_windows(tokenizer):
    task = dataclasses.replace(get_task("squad"), max_length=64, doc_stride=16, max_query_length=16)
    filler = " ".join(f"Line {k} says nothing much about towers {k}." for k in range(15))
    context = f"{filler} The tallest building is the Eiffel Tower in Paris. {filler}"
    answer = "the Eiffel Tower"
    examples = [
        SpanExample("q1", "What is the tallest building?", context, ((answer, context.index(answer)),)),
        SpanExample("q2", "Who wrote it?", "Ada Lovelace wrote it.", (("Ada Lovelace", 0), ("Ada", 0))),
    ]
    f = encode(task, examples, tokenizer)
    assert (f.example_index == 0).sum() > 2
    width = int(f.lengths.max())
    start = np.full((len(f), width), -10.0, dtype=np.float32)
    end = np.full((len(f), width), -10.0, dtype=np.float32)
    start[:, 0] = end[:, 0] = 20.0  # [CLS] is never a valid answer
    for i in range(len(f)):
        if f.start_positions[i] > 0:
            start[i, f.start_positions[i]] = 3.0
            end[i, f.end_positions[i]] = 3.0
    # a decoy in a window without the answer: end before start, so invalid
    decoy = int(np.flatnonzero(f.start_positions == 0)[0])
    ctx = np.flatnonzero(f.offsets[decoy][:, 0] >= 0)
    start[decoy, ctx[5]], end[decoy, ctx[2]] = 9.0, 9.0
    scores = evaluate(task, f, examples, (start, end))
    assert scores == {"exact_match": 100.0, "f1": 100.0}
    assert predict_labels(task, f, (start, end), examples) == [answer, "Ada Lovelace"]
    # too long spans are not allowed
    short = dataclasses.replace(task, max_answer_length=1)
    assert evaluate(short, f, examples, (start, end))["exact_match"] < 100.0


def test_evaluate_classification_and_regression(tokenizer):
    mrpc = get_task("mrpc")
    examples = [TextExample(str(i), "A cat.", "The cat.", label) for i, label in enumerate("1001")]
    f = encode(mrpc, examples, tokenizer)
    logits = np.eye(2, dtype=np.float32)[f.labels] * 4
    assert evaluate(mrpc, f, examples, logits) == {"f1": 1.0, "accuracy": 1.0}
    cola = get_task("cola")
    f_cola = encode(cola, [TextExample(str(i), "A cat.", None, lab) for i, lab in enumerate("1001")], tokenizer)
    assert set(evaluate(cola, f_cola, [], logits)) == {"matthews_corr", "accuracy"}
    (first, *_) = predict_labels(mrpc, f, logits)
    assert isinstance(first, ClassPrediction) and first.label == "1"
    assert sum(first.probabilities) == pytest.approx(1.0) and first.probabilities[1] > 0.9
    stsb = get_task("stsb")
    pairs = [TextExample(str(i), "A.", "B.", s) for i, s in enumerate([0.5, 2.0, 4.5])]
    f_sts = encode(stsb, pairs, tokenizer)
    scores = evaluate(stsb, f_sts, pairs, np.array([[1.0], [2.0], [4.0]]))
    assert set(scores) == {"pearson", "spearmanr"} and scores["spearmanr"] == pytest.approx(1.0)
    assert all(isinstance(v, float) for v in scores.values())
    with pytest.raises(ValueError, match="3 rows"):
        evaluate(stsb, f_sts, pairs, np.zeros(2))


def test_paired_bootstrap_tells_a_real_difference_from_the_choice_of_examples():
    rng = np.random.default_rng(7)
    refs = rng.integers(0, 2, 401)
    a = refs.copy()
    a[:40] = 1 - a[:40]  # 90.0% right
    b = refs.copy()
    b[:100] = 1 - b[:100]  # 75.1% right, wrong wherever a is
    test = paired_bootstrap(accuracy, a, b, refs, samples=500)
    assert test.difference == pytest.approx(accuracy(a, refs) - accuracy(b, refs))
    assert 0 < test.low < test.difference < test.high and test.p_value < 0.01 and test.winner() == "a"
    swapped = paired_bootstrap(accuracy, b, a, refs, samples=500)
    assert swapped.difference == pytest.approx(-test.difference) and swapped.winner() == "b"
    # one example apart out of 401: the interval holds zero
    c = a.copy()
    c[200] = 1 - c[200]
    close = paired_bootstrap(accuracy, a, c, refs, samples=500)
    assert close.low <= 0 <= close.high and close.p_value > 0.05 and close.winner() == "tie"
    same = paired_bootstrap(accuracy, a, a, refs, samples=50)
    assert (same.difference, same.low, same.high, same.p_value, same.winner()) == (0.0, 0.0, 0.0, 1.0, "tie")
    # the same seed gives the same interval
    assert paired_bootstrap(accuracy, a, b, refs, samples=500) == test


def test_paired_bootstrap_takes_every_kind_of_prediction():
    rng = np.random.default_rng(3)
    gold = rng.normal(size=61)
    near, far = gold + 0.1 * rng.normal(size=61), gold + 2.0 * rng.normal(size=61)
    scores = paired_bootstrap(pearson, near, far, gold, samples=200)
    assert scores.difference == pytest.approx(pearson(near, gold) - pearson(far, gold)) and scores.winner() == "a"
    tags = [["B-PER", "O"], ["O", "B-LOC", "I-LOC"], ["B-ORG"]] * 7  # lists index one by one
    missed = [["O", "O"], ["O", "B-LOC", "I-LOC"], ["O"]] * 7
    tagged = paired_bootstrap(entity_f1, tags, missed, tags, samples=100)
    assert tagged.difference == pytest.approx(1.0 - entity_f1(missed, tags)) and tagged.winner() == "a"
    with pytest.raises(ValueError, match="one entry per example"):
        paired_bootstrap(accuracy, [1, 0], [1], [1, 0])
    with pytest.raises(ValueError, match="samples"):
        paired_bootstrap(accuracy, [1], [1], [1], samples=0)
