"""Loss functions: pure, chosen by name, returning (sum, count).

Metrics leave the device as sums plus a count and the host divides, so a
padded batch (rows with weight 0) never biases an average.

Supervised ("hard") task losses take `(logits, batch)`:
  classification  softmax cross-entropy against integer `labels`
  regression      squared error against float `labels`
  tagging         per-token cross-entropy; tokens labelled -100 are ignored
  span            mean of start and end cross-entropies

A tagger with a CRF (`BertOutput.crf`) is trained on the negative CRF
log-likelihood of each sentence's gold tags instead (`crf_tagging_loss`);
`hard_loss(kind, output, batch, tags)` picks between the two.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from distill.model.crf import CrfParams, compact, constrain, iob2_constraints, log_likelihood
from tasks.packing import is_packed

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


def crf_tagging_loss(logits, batch, crf: CrfParams, tags: tuple[str, ...] = ()):
    """Negative CRF log-likelihood of the gold tags; (sum over sentences, count of tagged tokens).

    The chain runs over each sentence's tagged positions (labels != -100: each
    word's first sub-token), moved together by `compact`; `tags` (the IOB2 tag
    names) forbid the moves IOB2 does not allow (none when empty). Counting
    tokens, not sentences, keeps the scale of `tagging_loss`: with zero CRF
    scores the two are equal.
    """
    labels = batch["labels"]
    valid = (labels != IGNORE) & (batch["weights"][:, None] > 0)
    emissions, mask, _ = compact(logits, valid)
    gold, _, _ = compact(jnp.where(valid, labels, 0), valid)
    if tags:
        crf = constrain(crf, *iob2_constraints(tags))
    nll = -log_likelihood(crf, emissions, gold, mask)  # 0 for a row without tagged positions
    return jnp.sum(nll), jnp.sum(valid).astype(jnp.float32)


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


def hard_loss(kind: str, output, batch, tags: tuple[str, ...] = ()):
    """The task loss of a model output (`BertOutput`) on gold labels; (sum, count).

    A CRF tagger (`output.crf` set) gets `crf_tagging_loss` with the IOB2
    constraints of `tags`; every other model `task_loss(kind)` on its logits.
    """
    if getattr(output, "crf", None) is not None:
        if kind != "tagging":
            raise ValueError(f"a CRF output needs the tagging task loss, not {kind!r}")
        return crf_tagging_loss(output.logits, batch, output.crf, tags)
    return task_loss(kind)(output.logits, batch)


# --- Distillation losses --------------------------------------------------
#
# Prediction-layer losses take `(student_logits, teacher_logits, mask,
# temperature)` and return (sum, count). `mask` weights the rows that count:
# (B,) for sentence heads, (B, T) for token heads (tagging: every real token;
# span: the start and end distributions over the real positions).


def soft_cross_entropy(s, t, mask, temperature: float = 1.0):
    """Cross-entropy of the student against the teacher's softened distribution, x T^2 (Hinton et al.)."""
    p = jax.nn.softmax(t.astype(jnp.float32) / temperature, axis=-1)
    ce = -jnp.sum(p * jax.nn.log_softmax(s.astype(jnp.float32) / temperature, axis=-1), axis=-1)
    return _weighted_sum(ce * temperature**2, mask), jnp.sum(mask)


def kl_divergence(s, t, mask, temperature: float = 1.0):
    """KL(teacher || student) of the softened distributions, x T^2; 0 when they agree."""
    log_p = jax.nn.log_softmax(t.astype(jnp.float32) / temperature, axis=-1)
    log_q = jax.nn.log_softmax(s.astype(jnp.float32) / temperature, axis=-1)
    kl = jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)
    return _weighted_sum(kl * temperature**2, mask), jnp.sum(mask)


def logit_mse(s, t, mask, temperature: float = 1.0):
    """Squared error between logits, summed over outputs (regression: the score)."""
    del temperature
    err = jnp.sum(jnp.square(s.astype(jnp.float32) - t.astype(jnp.float32)), axis=-1)
    return _weighted_sum(err, mask), jnp.sum(mask)


LOGIT_LOSSES = {"ce": soft_cross_entropy, "kl": kl_divergence, "mse": logit_mse}


def logit_loss(name: str):
    try:
        return LOGIT_LOSSES[name]
    except KeyError:
        raise ValueError(f"no logit loss {name!r}; valid: {sorted(LOGIT_LOSSES)}") from None


def prediction_distill_loss(kind: str, name: str, s_logits, t_logits, batch, temperature: float = 1.0):
    """The prediction-layer distillation loss for a task kind; (sum, count).

    classification: one distribution per example; regression: MSE on the
    score; tagging: one distribution per tagged token; span: distributions of
    the start and of the end over each example's real positions (averaged).
    """
    fn = logit_loss(name)
    w = batch["weights"]
    if kind in ("classification", "regression"):
        return fn(s_logits, t_logits, w, temperature)
    token_mask = batch["attention_mask"].astype(jnp.float32) * w[:, None]
    if kind == "tagging":
        # The tokens that carry a tag (each word's first piece), as in fine-tuning.
        if "labels" in batch:
            token_mask = token_mask * (batch["labels"] != IGNORE)
        return fn(s_logits, t_logits, token_mask, temperature)
    if kind == "span":
        # Positions past the sequence get a large negative logit in both models.
        neg = jnp.where(token_mask[..., None] > 0, 0.0, -1e4)
        s_pos = jnp.moveaxis(s_logits + neg, -1, 1)  # (B, 2, T)
        t_pos = jnp.moveaxis(t_logits + neg, -1, 1)
        total, _ = fn(s_pos, t_pos, jnp.repeat(w[:, None], 2, axis=1), temperature)
        return 0.5 * total, jnp.sum(w)
    raise ValueError(f"no distillation loss for task kind {kind!r}")


# Intermediate ("match") losses take `(student, teacher, token_mask)` and
# return (sum, count) with count = real elements compared.


def token_mask(batch: dict) -> jax.Array:
    """float32 (B, T): 1 on the real tokens of real examples, for padded (`tasks.batching`) and packed
    (`tasks.packing`: every token of a row's examples) batches alike."""
    mask = batch["attention_mask"]
    if is_packed(batch):
        return (mask > 0).astype(jnp.float32)
    return mask.astype(jnp.float32) * batch["weights"][:, None]


def pair_mask(batch: dict) -> jax.Array | None:
    """float32 (B, T, T) (query, key) pairs of one example in a packed batch; None for a padded one (there
    the pairs are every two real tokens of a row)."""
    if not is_packed(batch):
        return None
    seg = batch["attention_mask"]
    return ((seg[:, :, None] == seg[:, None, :]) & (seg[:, None, :] > 0)).astype(jnp.float32)


def hidden_mse(s, t, token_mask):
    """MSE between hidden states (B, T, H) at the real tokens; widths must agree (project first)."""
    err = jnp.mean(jnp.square(s.astype(jnp.float32) - t.astype(jnp.float32)), axis=-1)
    return _weighted_sum(err, token_mask), jnp.sum(token_mask)


def attention_mse(s, t, token_mask, pairs=None):
    """MSE between pre-softmax attention scores (B, N, T, T) over real (query, key) pairs (`pairs` (B, T, T)
    when given: a packed batch's pairs of one example, `pair_mask`).

    Head counts that differ are compared as the mean over heads. Scores are
    clipped to [-1e4, 1e4] so a masked -inf never makes a NaN.
    """
    if s.shape[1] != t.shape[1]:
        s, t = jnp.mean(s, axis=1, keepdims=True), jnp.mean(t, axis=1, keepdims=True)
    pair = token_mask[:, :, None] * token_mask[:, None, :] if pairs is None else pairs  # (B, T, T)
    clip = lambda x: jnp.clip(x.astype(jnp.float32), -1e4, 1e4)  # noqa: E731
    err = jnp.mean(jnp.square(clip(s) - clip(t)), axis=1)  # (B, T, T)
    return _weighted_sum(err, pair), jnp.sum(pair)


MATCH_LOSSES = {"hidden_mse": hidden_mse, "attention_mse": attention_mse}
