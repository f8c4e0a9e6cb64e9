"""Task losses against numpy references; padding rows (weight 0) never count."""

from __future__ import annotations

import numpy as np
import pytest

from distill.kd.losses import IGNORE, TASK_LOSSES, task_loss

RNG = np.random.default_rng(0)
WEIGHTS = np.array([1, 1, 1, 0, 0], np.float32)  # 3 real rows, 2 padding rows


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    z = x - x.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def ce(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Cross-entropy per row of `logits` (..., C) against integer `labels` (...)."""
    return -np.take_along_axis(log_softmax(logits), labels[..., None], axis=-1)[..., 0]


def with_garbage_padding(x: np.ndarray) -> np.ndarray:
    """`x` with huge values in the padding rows, which must not change the loss."""
    x = x.copy()
    x[WEIGHTS == 0] = 1e4
    return x


def check(kind: str, logits, batch, want_sum: float, want_count: float):
    total, count = task_loss(kind)(logits, batch)
    assert float(count) == want_count
    assert float(total) == pytest.approx(want_sum, rel=1e-5)


def test_classification_loss():
    logits = with_garbage_padding(RNG.normal(size=(5, 3)).astype(np.float32))
    labels = np.array([2, 0, 1, 1, 0], np.int32)
    check("classification", logits, {"labels": labels, "weights": WEIGHTS}, ce(logits[:3], labels[:3]).sum(), 3)


def test_regression_loss():
    logits = with_garbage_padding(RNG.normal(size=(5, 1)).astype(np.float32))
    labels = np.array([0.5, 4.0, 2.25, 3.0, 0.0], np.float32)
    want = np.sum((logits[:3, 0].astype(np.float64) - labels[:3]) ** 2)
    check("regression", logits, {"labels": labels, "weights": WEIGHTS}, want, 3)


def test_tagging_loss_ignores_minus_100_and_padding_rows():
    logits = with_garbage_padding(RNG.normal(size=(5, 7, 9)).astype(np.float32))
    labels = RNG.integers(0, 9, size=(5, 7)).astype(np.int32)
    labels[:, 0] = IGNORE  # [CLS]
    labels[0, 5:] = IGNORE  # a shorter sentence
    labels[1, 2] = IGNORE  # a non-first sub-token
    valid = (labels != IGNORE) & (WEIGHTS[:, None] > 0)
    want = ce(logits, np.where(valid, labels, 0))[valid].sum()
    check("tagging", logits, {"labels": labels, "weights": WEIGHTS}, want, float(valid.sum()))
    assert valid.sum() == 6 + 4 + 5  # padding rows hold real-looking tags, yet are not counted


def test_span_loss_is_the_mean_of_start_and_end():
    logits = with_garbage_padding(RNG.normal(size=(5, 7, 2)).astype(np.float32))
    starts = np.array([1, 3, 0, 2, 6], np.int32)
    ends = np.array([2, 5, 0, 4, 6], np.int32)
    batch = {"start_positions": starts, "end_positions": ends, "weights": WEIGHTS}
    want = 0.5 * (ce(logits[:3, :, 0], starts[:3]) + ce(logits[:3, :, 1], ends[:3])).sum()
    check("span", logits, batch, want, 3)


def test_registry():
    assert set(TASK_LOSSES) == {"classification", "regression", "tagging", "span"}
    for kind, fn in TASK_LOSSES.items():
        assert task_loss(kind) is fn


def test_unknown_loss_lists_the_valid_names():
    with pytest.raises(ValueError) as err:
        task_loss("nope")
    message = str(err.value)
    assert "'nope'" in message
    for kind in TASK_LOSSES:
        assert kind in message
