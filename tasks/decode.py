"""Model outputs (in feature order) -> predictions in the task's own terms.

Pure numpy functions used by `tasks.metrics.evaluate` and by prediction
tools: class ids, scores, one IOB2 tag per word (from each word's first
sub-token: the argmax of its logits, or a tag id already decoded, e.g. by a
CRF's Viterbi; words cut off by truncation get 'O'), and SQuAD answer strings
(best valid span over all windows of a question: start <= end, at most
`max_answer_length` tokens, both inside the context, searched over the
`n_best` top start and end logits of each window, as BERT/transformers do).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from tasks.base import Task
from tasks.features import Features


@dataclass(frozen=True)
class ClassPrediction:
    """A predicted class name and the softmax probability of every class."""

    label: str
    probabilities: tuple[float, ...]


def _rows(features: Features, outputs, name: str, ndim: int, positions: bool = False) -> np.ndarray:
    """`outputs` as an array of `ndim` dims, one row per feature; with
    `positions`, axis 1 must cover the longest feature."""
    out = np.asarray(outputs)
    if out.ndim != ndim or out.shape[0] != len(features):
        raise ValueError(f"{name} must be {ndim}-D with {len(features)} rows, got {out.shape}")
    if positions and len(features) and out.shape[1] < features.lengths.max():
        raise ValueError(
            f"{name} have {out.shape[1]} positions; the longest feature has {features.lengths.max()}"
        )
    return out


def class_predictions(task: Task, features: Features, logits) -> np.ndarray:
    """int (N,) argmax class ids from logits (N, C)."""
    out = _rows(features, logits, "classification logits", 2)
    if out.shape[1] != task.num_labels:
        raise ValueError(f"logits have {out.shape[1]} classes, {task.name} has {task.num_labels}")
    return np.argmax(out, axis=-1)


def score_predictions(features: Features, outputs) -> np.ndarray:
    """float (N,) regression scores from (N,) or (N, 1) outputs."""
    out = np.asarray(outputs, dtype=np.float64)
    if out.ndim == 2 and out.shape[1] == 1:
        out = out[:, 0]
    return _rows(features, out, "regression outputs", 1)


def _first_subtokens(words: np.ndarray) -> np.ndarray:
    previous = np.concatenate([[-1], words[:-1]])
    return np.flatnonzero((words >= 0) & (words != previous))


def tagged_positions(features: Features, length: int) -> np.ndarray:
    """bool (N, length): the positions that carry a word's tag (each word's first sub-token)."""
    out = np.zeros((len(features), length), bool)
    for i, words in enumerate(features.word_ids):
        out[i, _first_subtokens(words[:length])] = True
    return out


def tag_predictions(task: Task, features: Features, examples: Sequence, logits) -> list[list[str]]:
    """One IOB2 tag per word of each example, from logits (N, L, C) or decoded tag ids (N, L) int."""
    decoded = np.asarray(logits).ndim == 2 and np.issubdtype(np.asarray(logits).dtype, np.integer)
    out = _rows(features, logits, "tag ids" if decoded else "tagging logits", 2 if decoded else 3, positions=True)
    if decoded and len(out) and (out.min() < 0 or out.max() >= task.num_labels):
        raise ValueError(f"tag ids must be in [0, {task.num_labels}), got [{out.min()}, {out.max()}]")
    _check_examples(features, examples)
    tags = [["O"] * len(e.tokens) for e in examples]
    for i, words in enumerate(features.word_ids):
        pos = _first_subtokens(words)
        ids = out[i, pos] if decoded else np.argmax(out[i, pos], axis=-1)
        row = tags[features.example_index[i]]
        for w, k in zip(words[pos], ids):
            row[w] = task.labels[k]
    return tags


def span_predictions(task: Task, features: Features, examples: Sequence, outputs) -> list[str]:
    """The best answer text of each example from (start_logits, end_logits), each (N, L)."""
    if not isinstance(outputs, (tuple, list)) or len(outputs) != 2:
        raise ValueError("span outputs must be a pair (start_logits, end_logits)")
    starts = _rows(features, outputs[0], "start logits", 2, positions=True)
    ends = _rows(features, outputs[1], "end logits", 2, positions=True)
    _check_examples(features, examples)
    best: list[tuple[float, str]] = [(-np.inf, "")] * len(examples)
    for i, off in enumerate(features.offsets):
        n = len(off)
        span = _best_span(starts[i, :n], ends[i, :n], off[:, 0] >= 0, task)
        if span is None:
            continue
        score, s, e = span
        ex = features.example_index[i]
        if score > best[ex][0]:
            best[ex] = (score, examples[ex].context[off[s, 0] : off[e, 1]])
    return [text for _, text in best]


def _best_span(start: np.ndarray, end: np.ndarray, valid: np.ndarray, task: Task):
    """(score, start, end) of the best valid span of one window, or None."""
    s = np.argsort(start)[::-1][: task.n_best]
    e = np.argsort(end)[::-1][: task.n_best]
    width = e[None, :] - s[:, None] + 1
    ok = valid[s][:, None] & valid[e][None, :] & (width >= 1) & (width <= task.max_answer_length)
    if not ok.any():
        return None
    score = np.where(ok, start[s][:, None] + end[e][None, :], -np.inf)
    a, b = np.unravel_index(np.argmax(score), score.shape)
    return float(score[a, b]), int(s[a]), int(e[b])


def _check_examples(features: Features, examples: Sequence) -> None:
    if len(features) and features.example_index.max() >= len(examples):
        raise ValueError(
            f"features refer to example {features.example_index.max()}, "
            f"but only {len(examples)} examples were given"
        )


def predict_labels(task: Task, features: Features, outputs, examples: Sequence | None = None) -> list:
    """Human-readable predictions for a predict tool.

    classification: a `ClassPrediction` per feature; regression: a float per
    feature; tagging: a tuple of tags per example; span: an answer string
    per example (tagging and span need `examples`).
    """
    if task.kind == "classification":
        logits = np.asarray(outputs, dtype=np.float64)
        ids = class_predictions(task, features, logits)
        z = np.exp(logits - logits.max(axis=-1, keepdims=True))
        probs = z / z.sum(axis=-1, keepdims=True)
        return [ClassPrediction(task.labels[k], tuple(map(float, p))) for k, p in zip(ids, probs)]
    if task.kind == "regression":
        return [float(x) for x in score_predictions(features, outputs)]
    if examples is None:
        raise ValueError(f"predict_labels for a {task.kind} task needs the examples")
    if task.kind == "tagging":
        return [tuple(t) for t in tag_predictions(task, features, examples, outputs)]
    return span_predictions(task, features, examples, outputs)
