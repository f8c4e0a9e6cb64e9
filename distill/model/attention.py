"""Softmax attention for XLA:CPU, with its own gradient: `cpu_attention(qkv, mask, keep, keep_prob)`.

XLA's CPU backend runs a batched product of bfloat16 operands at its bfloat16 speed (AMX / AVX512-BF16,
through YNNPACK) only when both operands are laid out with the batch dimensions first, the lhs contracts
its last dimension and the result is float32; any other form, a transpose XLA folds into the product
included, is converted to float32 and runs at a fraction of that speed. Written with `jnp.einsum` and
differentiated by JAX, attention's six products (two forward, four backward) all took the slow form, and
the (rows, heads, length, length) arrays between them went through memory in float32 several times.

Here:
- the queries, keys and values are moved to heads-major order (B, N, T, H) once, as 32-bit words where
  they are bfloat16 (two values to a word), a copy XLA cannot fold into the products;
- the forward pass runs over chunks of rows (`chunk_rows`: a chunk's probabilities stay in the caches)
  and keeps only each query's log-sum-exp; the backward pass recomputes the probabilities chunk by
  chunk, as FlashAttention does;
- the backward computes the key side in the transposed orientation (keys by queries), so the value and
  key gradients are products of the fast form too, without a transposed copy of a length x length array.

The dropout mask on the probabilities is an argument (`keep`, drawn by the caller's `Dropout`), so the
backward applies the very mask the forward used. Query rows whose every key is masked (padding rows of a
packed batch, rows of a padding example) attend to nothing: their context is zero, and so is their
gradient. GPUs and TPUs do not use this (they run `jax.nn.dot_product_attention` or cuDNN's kernel).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

CHUNK_BYTES = 8 << 20
"""A chunk's float32 (heads, length, length) scores take at most this many bytes, so that the chunk's
probabilities, their gradient and the masks stay in the caches between the products that use them: on a
2-core AMX Xeon, batch 32 x length 128 x 12 heads (0.75 MiB a row), chunks of 8 rows took the
forward + backward 97 -> 77 ms in bfloat16 (chunks of 4: 82, the whole batch at once: 84)."""

_MASKED = -1e30
"""The logit of a masked query-key pair (finite, so that a row with no key left gives no NaN)."""


def chunk_rows(batch: int, heads: int, length: int) -> int:
    """Rows per chunk: the largest divisor of `batch` whose scores fit `CHUNK_BYTES`, or the whole batch
    where that divisor is under half the rows that would fit (a prime batch of long rows: many one-row
    chunks cost more than they save)."""
    fit = max(1, CHUNK_BYTES // (heads * length * length * 4))
    if fit >= batch:
        return batch
    best = max(c for c in range(1, fit + 1) if batch % c == 0)
    return best if 2 * best >= fit else batch


def to_heads_major(x: jax.Array, perm: tuple[int, ...]) -> jax.Array:
    """`x.transpose(perm)` for a `perm` that keeps the last axis last; bfloat16 is moved as 32-bit words
    (pairs of neighbours on the last axis), which XLA cannot fold into the product that consumes it."""
    if x.dtype != jnp.bfloat16 or x.shape[-1] % 2:
        return x.transpose(perm)
    words = lax.bitcast_convert_type(x.reshape(x.shape[:-1] + (x.shape[-1] // 2, 2)), jnp.uint32)
    moved = lax.bitcast_convert_type(words.transpose(perm), jnp.bfloat16)
    return moved.reshape(moved.shape[:-2] + (x.shape[-1],))


def cpu_attention(qkv: jax.Array, mask: jax.Array, keep: jax.Array | None, keep_prob: float = 1.0) -> jax.Array:
    """Softmax attention of `qkv` (B, T, 3, N, H) -> context (B, T, N, H), in `qkv`'s dtype (float32
    logits, softmax and accumulation). `mask`: bool, (B, 1, 1, T) keys or (B, 1, T, T) query-key pairs
    (`distill.model.bert._heads_mask`); `keep`: bool (B, N, T, T), the dropout keep mask on the
    probabilities, whose kept entries are scaled by 1 / `keep_prob`; None for no dropout."""
    chunk = chunk_rows(qkv.shape[0], qkv.shape[3], qkv.shape[1])
    mask = jnp.broadcast_to(mask, (qkv.shape[0],) + mask.shape[1:])
    return _attention(qkv, mask, keep, float(keep_prob), chunk)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _attention(qkv, mask, keep, keep_prob, chunk):
    return _forward(qkv, mask, keep, keep_prob, chunk)[0]


def _split(x: jax.Array | None, chunk: int) -> jax.Array | None:
    return None if x is None else x.reshape((x.shape[0] // chunk, chunk) + x.shape[1:])


def _merge(x: jax.Array) -> jax.Array:
    return x.reshape((-1,) + x.shape[2:])


def _scale(q: jax.Array) -> float:
    return 1.0 / math.sqrt(q.shape[-1])


def _dropped(p: jax.Array, keep: jax.Array | None, keep_prob: float, dtype=None) -> jax.Array:
    """`p` with the dropped entries zeroed and the kept ones scaled by 1 / `keep_prob` as rounded to `dtype`
    (default `p`'s): the backward's float32 gradients scale by the factor the forward's probabilities had."""
    if keep is None:
        return p
    scale = jnp.asarray(1.0 / keep_prob, dtype or p.dtype).astype(p.dtype)
    return jnp.where(keep, p * scale, jnp.zeros((), p.dtype))


def _forward(qkv, mask, keep, keep_prob, chunk):
    """Context and the backward's residuals (the inputs and each query's log-sum-exp)."""
    heads = to_heads_major(qkv, (0, 2, 3, 1, 4))  # (B, 3, N, T, H)

    def one(xs):
        h, m, kp = xs
        return _chunk_forward(h[:, 0], h[:, 1], h[:, 2], m, kp, keep_prob)

    context, lse = lax.map(one, (_split(heads, chunk), _split(mask, chunk), _split(keep, chunk)))
    return to_heads_major(_merge(context), (0, 2, 1, 3)), (heads, mask, keep, _merge(lse))


def _chunk_forward(q, k, v, mask, keep, keep_prob):
    """One chunk, heads-major (c, N, T, H): context (c, N, T, H) and log-sum-exp (c, N, T)."""
    logits = jnp.where(mask, jnp.einsum("bnth,bnsh->bnts", q, k, preferred_element_type=jnp.float32) * _scale(q),
                       _MASKED)
    top = jnp.max(logits, axis=-1, keepdims=True)
    e = jnp.where(mask, jnp.exp(logits - top), 0.0)
    total = jnp.maximum(jnp.sum(e, axis=-1, keepdims=True), 1e-30)
    p = _dropped((e / total).astype(q.dtype), keep, keep_prob)
    context = jnp.einsum("bnts,bnsh->bnth", p, v, preferred_element_type=jnp.float32).astype(q.dtype)
    return context, (top + jnp.log(total))[..., 0]


def _backward(keep_prob, chunk, res, g):
    heads, mask, keep, lse = res
    g = to_heads_major(g, (0, 2, 1, 3))  # (B, N, T, H)

    def one(xs):
        h, m, kp, s, gc = xs
        return _chunk_backward(h[:, 0], h[:, 1], h[:, 2], m, kp, s, gc, keep_prob)

    grads = lax.map(one, tuple(_split(x, chunk) for x in (heads, mask, keep, lse, g)))  # (B/c, c, 3, N, T, H)
    return to_heads_major(_merge(grads), (0, 3, 1, 2, 4)), None, None


def _chunk_backward(q, k, v, mask, keep, lse, g, keep_prob):
    """One chunk's (dq, dk, dv), stacked (c, 3, N, T, H). The query side in the (query, key) orientation,
    the key side in (key, query), so that every product contracts its lhs's last dimension."""
    dtype, scale = q.dtype, _scale(q)
    f32 = jnp.float32
    p = jnp.where(mask, jnp.exp(jnp.einsum("bnth,bnsh->bnts", q, k, preferred_element_type=f32) * scale
                                - lse[..., None]), 0.0)
    dp = _dropped(jnp.einsum("bnth,bnsh->bnts", g, v, preferred_element_type=f32), keep, keep_prob, dtype)
    row = jnp.sum(dp * p, axis=-1)  # (c, N, T): each query's sum of dp * p, shared by both orientations
    ds = (p * (dp - row[..., None]) * scale).astype(dtype)
    dq = jnp.einsum("bnts,bnsh->bnth", ds, k, preferred_element_type=f32)

    mask_t = mask[..., 0, :, None] if mask.shape[-2] == 1 else jnp.swapaxes(mask, -1, -2)
    keep_t = None if keep is None else jnp.swapaxes(keep, -1, -2)
    p_t = jnp.where(mask_t, jnp.exp(jnp.einsum("bnsh,bnth->bnst", k, q, preferred_element_type=f32) * scale
                                    - lse[..., None, :]), 0.0)
    dp_t = _dropped(jnp.einsum("bnsh,bnth->bnst", v, g, preferred_element_type=f32), keep_t, keep_prob, dtype)
    ds_t = (p_t * (dp_t - row[..., None, :]) * scale).astype(dtype)
    dk = jnp.einsum("bnst,bnth->bnsh", ds_t, q, preferred_element_type=f32)
    dv = jnp.einsum("bnst,bnth->bnsh", _dropped(p_t.astype(dtype), keep_t, keep_prob), g, preferred_element_type=f32)
    return jnp.stack([dq, dk, dv], axis=1).astype(dtype)


_attention.defvjp(_forward, _backward)
