"""Metrics: pure functions `(predictions, references) -> float`, found by name.

`METRICS[kind][name]` holds one function per metric a task kind reports:

- classification: predictions and references are int class ids (N,);
  accuracy, binary f1 (positive class 1, as GLUE's MRPC/QQP) and
  matthews_corr (CoLA), all in [0, 1] (Matthews in [-1, 1]); F1 and
  Matthews are scikit-learn's.
- regression: float scores (N,); pearson and spearmanr (scipy.stats).
- tagging: lists of IOB2 tag sequences; entity-level f1, precision and
  recall from seqeval (default, conlleval-compatible mode).
- span: predicted answer strings and, per question, the list of gold answer
  strings; exact_match and f1 in percent (0-100), exactly as the official
  SQuAD v1.1 evaluate script computes them.

`evaluate(task, features, examples, outputs)` turns model outputs (in
feature order) into the task's metrics, decoding them with tasks/decode.py
(`predictions` gives what the metrics compare); `predict_labels`
(re-exported from there) gives readable predictions. `paired_bootstrap`
tells whether one model's predictions beat another's on the same examples
beyond what the choice of examples explains.
"""

from __future__ import annotations

import collections
import dataclasses
import re
import string
import warnings
from typing import Callable, Sequence

import numpy as np
from scipy import stats
from seqeval import metrics as seqeval_metrics
from sklearn import metrics as sklearn_metrics

from tasks.base import Task
from tasks.decode import (
    ClassPrediction,
    class_predictions,
    predict_labels,
    score_predictions,
    span_predictions,
    tag_predictions,
)
from tasks.errors import UserError
from tasks.features import Features

MetricFn = Callable[[Sequence, Sequence], float]

__all__ = [
    "METRICS", "ClassPrediction", "MetricFn", "PairedTest", "accuracy", "binary_f1", "entity_f1",
    "entity_precision", "entity_recall", "evaluate", "get_metric", "matthews_corr",
    "normalize_answer", "paired_bootstrap", "pearson", "predict_labels", "predictions", "spearmanr", "squad_exact_match",
    "squad_exact_match_score", "squad_f1", "squad_f1_score",
]


def _pair(predictions, references) -> tuple[np.ndarray, np.ndarray]:
    p, r = np.asarray(predictions), np.asarray(references)
    if p.shape != r.shape or p.ndim != 1:
        raise ValueError(f"predictions {p.shape} and references {r.shape} must be equal 1-D shapes")
    return p, r


def accuracy(predictions, references) -> float:
    """Fraction of predictions equal to the reference."""
    p, r = _pair(predictions, references)
    return float(np.mean(p == r)) if len(p) else 0.0


def binary_f1(predictions, references) -> float:
    """F1 of class 1, whatever the other classes (scikit-learn's `f1_score` over label 1; 0 when there is
    no true or predicted positive)."""
    p, r = _pair(predictions, references)
    if not len(p):
        return 0.0
    return float(sklearn_metrics.f1_score(r, p, labels=[1], average="micro", zero_division=0))


def matthews_corr(predictions, references) -> float:
    """Matthews correlation (scikit-learn's `matthews_corrcoef`, the multi-class form); 0 if undefined."""
    p, r = _pair(predictions, references)
    if not len(p):
        return 0.0
    return float(sklearn_metrics.matthews_corrcoef(r, p))


def _correlation(fn, predictions, references) -> float:
    p, r = _pair(predictions, references)
    if len(p) < 2 or np.ptp(p) == 0 or np.ptp(r) == 0:
        return 0.0  # undefined for constant inputs; scored as no correlation
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(fn(p.astype(np.float64), r.astype(np.float64))[0])


def pearson(predictions, references) -> float:
    """Pearson correlation (scipy.stats.pearsonr); 0 for constant inputs."""
    return _correlation(stats.pearsonr, predictions, references)


def spearmanr(predictions, references) -> float:
    """Spearman rank correlation (scipy.stats.spearmanr); 0 for constant inputs."""
    return _correlation(stats.spearmanr, predictions, references)


def _tag_lists(predictions, references) -> tuple[list[list[str]], list[list[str]]]:
    p, r = [list(x) for x in predictions], [list(x) for x in references]
    if len(p) != len(r) or any(len(a) != len(b) for a, b in zip(p, r)):
        raise ValueError("predicted and gold tag sequences must have equal lengths")
    return p, r


def entity_f1(predictions, references) -> float:
    """seqeval entity-level F1 (IOB2 tags)."""
    p, r = _tag_lists(predictions, references)
    return float(seqeval_metrics.f1_score(r, p, zero_division=0))


def entity_precision(predictions, references) -> float:
    """seqeval entity-level precision."""
    p, r = _tag_lists(predictions, references)
    return float(seqeval_metrics.precision_score(r, p, zero_division=0))


def entity_recall(predictions, references) -> float:
    """seqeval entity-level recall."""
    p, r = _tag_lists(predictions, references)
    return float(seqeval_metrics.recall_score(r, p, zero_division=0))


# --- SQuAD v1.1, as in the official evaluate-v1.1.py -------------------------


def normalize_answer(s: str) -> str:
    """Lower text and remove punctuation, articles and extra whitespace."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def squad_f1_score(prediction: str, ground_truth: str) -> float:
    """Token-overlap F1 of one prediction against one answer (0-1)."""
    pred = normalize_answer(prediction).split()
    gold = normalize_answer(ground_truth).split()
    common = collections.Counter(pred) & collections.Counter(gold)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def squad_exact_match_score(prediction: str, ground_truth: str) -> float:
    """1.0 if the normalized strings are equal, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(ground_truth))


def _squad_mean(fn, predictions, references) -> float:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} questions")
    if not len(predictions):
        return 0.0
    total = sum(max(fn(p, g) for g in golds) for p, golds in zip(predictions, references))
    return 100.0 * total / len(predictions)


def squad_exact_match(predictions, references) -> float:
    """Percent of questions whose prediction matches some gold answer exactly."""
    return _squad_mean(squad_exact_match_score, predictions, references)


def squad_f1(predictions, references) -> float:
    """Mean over questions of the best F1 against any gold answer, in percent."""
    return _squad_mean(squad_f1_score, predictions, references)


METRICS: dict[str, dict[str, MetricFn]] = {
    "classification": {"accuracy": accuracy, "f1": binary_f1, "matthews_corr": matthews_corr},
    "regression": {"pearson": pearson, "spearmanr": spearmanr},
    "tagging": {"f1": entity_f1, "precision": entity_precision, "recall": entity_recall},
    "span": {"exact_match": squad_exact_match, "f1": squad_f1},
}
"""Metric functions by task kind and name; names match tasks.base.KIND_METRICS."""


def get_metric(kind: str, name: str) -> MetricFn:
    """The metric `name` for tasks of `kind`; UserError listing valid names."""
    table = METRICS.get(kind)
    if table is None:
        raise UserError(f"unknown task kind {kind!r}; valid kinds: {', '.join(METRICS)}")
    if name not in table:
        raise UserError(f"unknown {kind} metric {name!r}; valid metrics: {', '.join(table)}")
    return table[name]


def evaluate(task: Task, features: Features, examples: Sequence, outputs) -> dict[str, float]:
    """The task's metrics (`task.metric_names`) for model `outputs` in feature order.

    outputs: classification logits (N, C); regression scores (N,) or (N, 1);
    tagging logits (N, L, C), or tag ids (N, L) int already decoded (a CRF's
    Viterbi), with L >= the longest feature; span a pair
    (start_logits, end_logits), each (N, L).
    """
    preds, refs = predictions(task, features, examples, outputs)
    return {name: float(get_metric(task.kind, name)(preds, refs)) for name in task.metric_names}


def predictions(task: Task, features: Features, examples: Sequence, outputs) -> tuple[Sequence, Sequence]:
    """What the task's metrics compare, one entry per example: the predictions decoded from `outputs` (as
    `evaluate` takes them) and the gold references."""
    if task.kind in ("classification", "regression"):
        if features.labels is None:
            raise UserError(f"the {task.name} features have no gold labels to evaluate against")
        if task.kind == "classification":
            return class_predictions(task, features, outputs), np.asarray(features.labels)
        return score_predictions(features, outputs), np.asarray(features.labels)
    if task.kind == "tagging":
        return tag_predictions(task, features, examples, outputs), [list(e.tags) for e in examples]
    if not any(e.answers for e in examples):
        raise UserError(f"the {task.name} examples have no gold answers to evaluate against")
    return span_predictions(task, features, examples, outputs), [[text for text, _ in e.answers] or [""]
                                                                  for e in examples]


@dataclasses.dataclass(frozen=True)
class PairedTest:
    """Two systems' predictions on the same examples compared by a paired bootstrap: `difference` is
    metric(a) - metric(b) (`metric_a`, `metric_b` on all the examples); `low`, `high` bound its central `level`
    interval over resamplings of the examples; `p_value` is two-sided (the share of resampled differences on
    the far side of zero, doubled)."""

    difference: float
    low: float
    high: float
    p_value: float
    samples: int
    level: float
    metric_a: float
    metric_b: float

    def winner(self) -> str:
        """'a' or 'b' where the interval excludes zero, else 'tie'."""
        return "a" if self.low > 0 else "b" if self.high < 0 else "tie"


def paired_bootstrap(metric: MetricFn, a: Sequence, b: Sequence, references: Sequence, *, samples: int = 1000,
                     level: float = 0.95, seed: int = 0) -> PairedTest:
    """Whether predictions `a` beat `b` on `references` by `metric` beyond what the choice of examples
    explains: both are scored on the same `samples` resamplings (with replacement) of the examples, as in
    Koehn (2004) and Berg-Kirkpatrick et al. (2012), and the differences give the interval and p-value."""
    n = len(references)
    if not len(a) == len(b) == n or n == 0:
        raise ValueError(f"a, b and references need one entry per example: {len(a)}, {len(b)}, {n}")
    if samples < 1 or not 0 < level < 1:
        raise ValueError(f"samples must be >= 1 and level in (0, 1), got {samples} and {level}")
    take = _taker(a), _taker(b), _taker(references)
    rng = np.random.default_rng(seed)
    diffs = np.empty(samples)
    for i in range(samples):
        idx = rng.integers(0, n, n)
        pa, pb, refs = (t(idx) for t in take)
        diffs[i] = metric(pa, refs) - metric(pb, refs)
    diffs = np.nan_to_num(diffs, nan=0.0)  # a resample on which a correlation is undefined counts as no change
    tail = (1 - level) / 2
    p = min(1.0, 2 * min(float(np.mean(diffs <= 0)), float(np.mean(diffs >= 0))))
    whole_a, whole_b = float(metric(a, references)), float(metric(b, references))
    return PairedTest(whole_a - whole_b, float(np.quantile(diffs, tail)), float(np.quantile(diffs, 1 - tail)), p,
                      samples, level, whole_a, whole_b)


def _taker(values: Sequence) -> Callable[[np.ndarray], Sequence]:
    """Index `values` by an index array: numpy arrays at once, anything else (tag or answer lists) as a list."""
    if isinstance(values, np.ndarray):
        return lambda idx: values[idx]
    return lambda idx: [values[i] for i in idx]
