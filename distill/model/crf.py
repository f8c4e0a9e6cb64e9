"""Linear-chain CRF for token tagging: log-likelihood (forward algorithm) and Viterbi decoding.

Pure functions over a `CrfParams` pytree (transition scores plus start and
end scores), written with `jax.lax.scan` over time so they jit for any
length. Sequences are left-aligned: `mask[b]` is 1 for the first `n_b`
positions and 0 after (`compact` moves the tagged positions of a sub-token
sequence, each word's first piece, to the left first). A row with no tagged
position scores 0 and decodes to nothing.

`iob2_constraints(labels)` lists the moves IOB2 forbids (O -> I-X, B-X -> I-Y,
I-X -> I-Y for X != Y, and starting on I-X); `constrain` adds a large negative
score to them, so neither training nor decoding can produce an invalid
sequence. `decode` is the jitted, constrained Viterbi over given positions
that evaluation uses. Shapes: emissions (B, T, K), tags (B, T) int, mask (B, T).

The model's CRF option (`distill.model.bert.BertForTask(crf=True)`) holds the
scores; its loss is `distill.kd.losses.crf_tagging_loss`.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tasks.errors import UserError

FORBIDDEN = -1e4
"""Score added to a forbidden move: exp(-1e4) is 0 in float32, and it stays finite (no NaN in gradients)."""


class CrfParams(NamedTuple):
    transitions: jax.Array  # (K, K): score of tag i followed by tag j
    start: jax.Array  # (K,): score of starting on tag j
    end: jax.Array  # (K,): score of ending on tag i


def init_crf(num_tags: int) -> CrfParams:
    return CrfParams(jnp.zeros((num_tags, num_tags)), jnp.zeros((num_tags,)), jnp.zeros((num_tags,)))


def iob2_constraints(labels: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(allowed transitions (K, K), allowed starts (K,)) for IOB2 tags like 'O', 'B-PER', 'I-PER'."""
    def parse(label):
        if label == "O":
            return "O", None
        prefix, _, kind = label.partition("-")
        if prefix not in ("B", "I") or not kind:
            raise ValueError(f"not an IOB2 tag: {label!r}")
        return prefix, kind

    parsed = [parse(label) for label in labels]
    allowed = np.ones((len(labels), len(labels)), bool)
    for j, (pj, kj) in enumerate(parsed):
        if pj != "I":
            continue
        for i, (pi, ki) in enumerate(parsed):  # I-X may only follow B-X or I-X
            allowed[i, j] = pi in ("B", "I") and ki == kj
    start = np.array([p != "I" for p, _ in parsed])
    return allowed, start


def constrain(params: CrfParams, allowed: np.ndarray | None, allowed_start: np.ndarray | None) -> CrfParams:
    """The scores with forbidden moves pushed to FORBIDDEN (None: no constraints)."""
    if allowed is None:
        return params
    trans = jnp.where(jnp.asarray(allowed), params.transitions, FORBIDDEN)
    start = params.start if allowed_start is None else jnp.where(jnp.asarray(allowed_start), params.start, FORBIDDEN)
    return CrfParams(trans, start, params.end)


def sequence_score(params: CrfParams, emissions, tags, mask) -> jax.Array:
    """Score of the given tag sequences (B,): start + emissions + transitions + end, over the real positions."""
    mask = mask.astype(emissions.dtype)
    tags = jnp.where(mask > 0, tags, 0)
    emit = jnp.take_along_axis(emissions, tags[..., None], axis=-1)[..., 0]  # (B, T)
    trans = params.transitions[tags[:, :-1], tags[:, 1:]]  # (B, T-1)
    lengths = jnp.sum(mask, axis=1).astype(jnp.int32)
    last = jnp.take_along_axis(tags, jnp.maximum(lengths - 1, 0)[:, None], axis=1)[:, 0]
    score = params.start[tags[:, 0]] + jnp.sum(emit * mask, axis=1) + jnp.sum(trans * mask[:, 1:], axis=1)
    return jnp.where(lengths > 0, score + params.end[last], 0.0)


def log_partition(params: CrfParams, emissions, mask) -> jax.Array:
    """log of the sum over all tag sequences of exp(score) (B,): the forward algorithm."""
    mask = mask.astype(bool)
    alpha0 = params.start[None, :] + emissions[:, 0]  # (B, K)

    def step(alpha, inputs):
        emit, m = inputs  # (B, K), (B,)
        nxt = jax.nn.logsumexp(alpha[:, :, None] + params.transitions[None], axis=1) + emit
        return jnp.where(m[:, None], nxt, alpha), None

    alpha, _ = jax.lax.scan(step, alpha0, (jnp.swapaxes(emissions[:, 1:], 0, 1), mask[:, 1:].T))
    total = jax.nn.logsumexp(alpha + params.end[None, :], axis=1)
    return jnp.where(mask[:, 0], total, 0.0)


def log_likelihood(params: CrfParams, emissions, tags, mask) -> jax.Array:
    """log p(tags | emissions) per sequence (B,); 0 for a row without positions."""
    emissions = emissions.astype(jnp.float32)
    return sequence_score(params, emissions, tags, mask) - log_partition(params, emissions, mask)


def viterbi(params: CrfParams, emissions, mask) -> tuple[jax.Array, jax.Array]:
    """The best tag sequence (B, T) (0 past each row's length) and its score (B,)."""
    emissions = emissions.astype(jnp.float32)
    mask = mask.astype(bool)
    b, t, k = emissions.shape
    delta0 = params.start[None, :] + emissions[:, 0]

    def forward(delta, inputs):
        emit, m = inputs
        cand = delta[:, :, None] + params.transitions[None]  # (B, K_prev, K)
        best_prev = jnp.argmax(cand, axis=1)  # (B, K)
        nxt = jnp.max(cand, axis=1) + emit
        keep = jnp.broadcast_to(jnp.arange(k)[None], (b, k))  # past the end: stay on the same tag
        return jnp.where(m[:, None], nxt, delta), jnp.where(m[:, None], best_prev, keep)

    delta, back = jax.lax.scan(forward, delta0, (jnp.swapaxes(emissions[:, 1:], 0, 1), mask[:, 1:].T))
    final = delta + params.end[None, :]
    last = jnp.argmax(final, axis=1)
    score = jnp.max(final, axis=1)

    def backward(tag, ptr):  # ptr (B, K): the best previous tag for each tag at the next position
        prev = jnp.take_along_axis(ptr, tag[:, None], axis=1)[:, 0]
        return prev, tag

    first, path = jax.lax.scan(backward, last, back, reverse=True)
    tags = jnp.concatenate([first[:, None], jnp.swapaxes(path, 0, 1)], axis=1) if t > 1 else last[:, None]
    return jnp.where(mask, tags, 0), jnp.where(mask[:, 0], score, 0.0)


@jax.jit
def decode(params: CrfParams, emissions, positions, allowed, allowed_start) -> jax.Array:
    """Constrained Viterbi over the `positions` of each row (B, T) bool, in order: their best tags
    (B, T) int at those positions, 0 elsewhere. `allowed`/`allowed_start` as `iob2_constraints` gives them."""
    params = constrain(params, allowed, allowed_start)
    chained, mask, index = compact(emissions, positions)
    tags, _ = viterbi(params, chained, mask)
    return expand(tags, index, positions)


def compact(x: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Move the positions where `mask` is set to the left, in order: (x compacted, new mask, gather index).

    `x` is (B, T, ...); the index (B, T) maps each compacted position back to its original one.
    """
    mask = mask.astype(bool)
    order = jnp.argsort(~mask, axis=1, stable=True)  # masked positions first, each group in order
    gathered = jnp.take_along_axis(x, order.reshape(order.shape + (1,) * (x.ndim - 2)), axis=1)
    count = jnp.sum(mask, axis=1)
    return gathered, jnp.arange(mask.shape[1])[None, :] < count[:, None], order


def expand(tags: jax.Array, index: jax.Array, mask: jax.Array, fill: int = 0) -> jax.Array:
    """Inverse of `compact` for decoded tags: back to the original positions, `fill` elsewhere."""
    out = jnp.full(tags.shape, fill, tags.dtype)
    rows = jnp.arange(tags.shape[0])[:, None]
    count = jnp.sum(mask.astype(bool), axis=1)
    valid = jnp.arange(tags.shape[1])[None, :] < count[:, None]
    return out.at[rows, jnp.where(valid, index, tags.shape[1])].set(tags, mode="drop")


def check_crf(task, crf: bool) -> None:
    """A UserError when a CRF (`--crf`) is asked for a task that is not token tagging."""
    if crf and task.kind != "tagging":
        raise UserError(
            f"--crf: task {task.name} is {task.kind}; a CRF needs a token-tagging task (e.g. conll2003, ner)"
        )
