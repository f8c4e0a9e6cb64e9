"""Loss functions: pure, chosen by name, returning (sum, count).

Metrics leave the device as sums plus a count and the host divides, so a
padded batch (rows with weight 0) never biases an average.

Supervised ("hard") task losses take `(logits, batch)`:
  classification  softmax cross-entropy against integer `labels`
  regression      squared error against float `labels`
  tagging         per-token cross-entropy; tokens labelled -100 are ignored
  span            mean of start and end cross-entropies
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

LossFn = Callable[[jax.Array, dict], tuple[jax.Array, jax.Array]]
IGNORE = -100


def classification_loss(logits, batch):
    w = batch["weights"]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"].astype(jnp.int32))
    return _weighted_sum(ce, w), jnp.sum(w)


def regression_loss(logits, batch):
    w = batch["weights"]
    err = logits[:, 0] - batch["labels"].astype(jnp.float32)
    return _weighted_sum(jnp.square(err), w), jnp.sum(w)


def tagging_loss(logits, batch):
    labels = batch["labels"]
    valid = (labels != IGNORE) & (batch["weights"][:, None] > 0)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(valid, labels, 0))
    return _weighted_sum(ce, valid.astype(jnp.float32)), jnp.sum(valid).astype(jnp.float32)


def span_loss(logits, batch):
    w = batch["weights"]
    start = optax.softmax_cross_entropy_with_integer_labels(logits[..., 0], batch["start_positions"])
    end = optax.softmax_cross_entropy_with_integer_labels(logits[..., 1], batch["end_positions"])
    return _weighted_sum(0.5 * (start + end), w), jnp.sum(w)


def _weighted_sum(values, weights):
    """Sum of values x weights; rows of weight 0 are dropped by `where`, so a NaN there cannot leak in."""
    return jnp.sum(jnp.where(weights > 0, values * weights, 0.0))


TASK_LOSSES: dict[str, LossFn] = {
    "classification": classification_loss,
    "regression": regression_loss,
    "tagging": tagging_loss,
    "span": span_loss,
}


def task_loss(kind: str) -> LossFn:
    try:
        return TASK_LOSSES[kind]
    except KeyError:
        raise ValueError(f"no task loss for {kind!r}; valid: {sorted(TASK_LOSSES)}") from None
