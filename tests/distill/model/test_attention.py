"""`distill.model.attention.cpu_attention`: the values and gradients of softmax attention with dropout,
against JAX's autodiff of the written-out formula and `jax.nn.dot_product_attention`, whatever the chunks;
and the model on one CPU device: the same outputs, gradients and dropout masks as the written-out path.

Sizes are odd and tiny (batch 5, length 7, 3 heads of 12; one case with heads of 5, which moves bfloat16
element by element rather than as 32-bit words).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distill.arch import BertArch
from distill.model import attention, bert
from distill.model.attention import chunk_rows, cpu_attention, to_heads_major
from distill.model.bert import build_mask, build_model, init_params

B, T = 5, 7
SEGMENTS = {  # per row: the example number of each token, 0 on padding
    "padded": np.array([[1] * 7, [1, 1, 1, 0, 0, 0, 0], [1] * 5 + [0, 0], [1, 1, 0, 0, 0, 0, 0], [0] * 7]),
    "packed": np.array([[1, 1, 1, 2, 2, 0, 0], [1, 1, 1, 1, 0, 0, 0], [1, 2, 3, 3, 3, 3, 3], [1] * 7, [0] * 7]),
}


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12))


def _inputs(kind: str, dtype, heads: int = 3, size: int = 12, dropout: bool = True, seed: int = 0):
    rng = np.random.default_rng(seed)
    qkv = jnp.asarray(rng.normal(size=(B, T, 3, heads, size)), dtype)
    segments = jnp.asarray(SEGMENTS[kind])
    mask = build_mask(segments, kind == "packed")
    heads_mask = mask[:, None, None, :] if mask.ndim == 2 else mask[:, None]
    keep = jnp.asarray(rng.random((B, heads, T, T)) < 0.75) if dropout else None
    return qkv, heads_mask, keep, segments


def _reference(qkv, mask, keep, keep_prob):
    """The written-out formula in float32 at full precision, differentiated by JAX; a query with no key
    attends to nothing (as `cpu_attention` defines it)."""
    q, k, v = (qkv[:, :, i].astype(jnp.float32) for i in range(3))
    logits = jnp.einsum("btnh,bsnh->bnts", q, k, precision="highest") / math.sqrt(q.shape[-1])
    p = jax.nn.softmax(jnp.where(mask, logits, -jnp.inf), axis=-1, where=mask)
    p = jnp.where(mask, p, 0.0)
    if keep is not None:
        p = jnp.where(keep, p / keep_prob, 0.0)
    return jnp.einsum("bnts,bsnh->btnh", p, v, precision="highest")


def _value_and_grads(f, qkv, weights):
    value = f(qkv).astype(jnp.float32)
    grad = jax.grad(lambda x: jnp.sum(f(x).astype(jnp.float32) * weights))(qkv)
    return value, grad.astype(jnp.float32)


@pytest.mark.parametrize("kind", ["padded", "packed"])
@pytest.mark.parametrize("dropout", [False, True])
@pytest.mark.parametrize("dtype,size,tol", [(jnp.float32, 12, 2e-6), (jnp.float32, 5, 2e-6),
                                            (jnp.bfloat16, 12, 3e-2), (jnp.bfloat16, 5, 3e-2)])
def test_values_and_gradients_match_the_formula(kind, dropout, dtype, size, tol):
    qkv, mask, keep, _ = _inputs(kind, dtype, size=size, dropout=dropout)
    weights = jnp.asarray(np.random.default_rng(1).normal(size=(B, T, 3, size)), jnp.float32)
    got = _value_and_grads(lambda x: cpu_attention(x, mask, keep, 0.75), qkv, weights)
    want = _value_and_grads(lambda x: _reference(x, mask, keep, 0.75), qkv.astype(jnp.float32), weights)
    assert got[0].dtype == jnp.float32 and cpu_attention(qkv, mask, keep, 0.75).dtype == dtype
    assert _rel(got[0], want[0]) < tol and _rel(got[1], want[1]) < tol


def test_bfloat16_gradients_scale_as_the_forward_does():
    """No systematic error in bfloat16: over three draws, the least-squares scale of each result against
    the float32 formula (taken with the keep probability that the forward's bfloat16 factor, 1 / 0.75 ->
    1.3359375, implies) is 1 to within 1e-3 (measured: 4e-4 at most). The backward once scaled the query
    and key gradients by the exact 1 / 0.75 while the forward used the rounded factor: -1.2e-3 to -2e-3."""
    effective = 1.0 / float(jnp.asarray(1.0 / 0.75, jnp.bfloat16))
    pairs = [[], [], [], []]
    for seed in (8, 10, 11):
        qkv, mask, keep, _ = _inputs("packed", jnp.bfloat16, seed=seed)
        weights = jnp.asarray(np.random.default_rng(9).normal(size=(B, T, 3, 12)), jnp.float32)
        got = _value_and_grads(lambda x: cpu_attention(x, mask, keep, 0.75), qkv, weights)
        want = _value_and_grads(lambda x: _reference(x, mask, keep, effective), qkv.astype(jnp.float32), weights)
        for i, (a, b) in enumerate([(got[0], want[0])] + [(got[1][:, :, j], want[1][:, :, j]) for j in range(3)]):
            pairs[i].append((np.asarray(a, np.float64), np.asarray(b, np.float64)))
    for results in pairs:
        a, b = (np.concatenate([r[k].ravel() for r in results]) for k in (0, 1))
        assert abs(np.sum(a * b) / np.sum(b * b) - 1.0) < 1e-3


def test_rows_with_keys_match_jax_dot_product_attention_and_rows_without_are_zero():
    qkv, mask, _, segments = _inputs("packed", jnp.float32, dropout=False)
    got = cpu_attention(qkv, mask, None)
    want = jax.nn.dot_product_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], mask=mask)
    real = np.asarray(segments > 0)
    assert _rel(np.asarray(got)[real], np.asarray(want)[real]) < 2e-6
    assert not np.asarray(got)[~real].any()  # padding tokens of packed rows, the all-padding row


@pytest.mark.parametrize("kind", ["padded", "packed"])
def test_chunks_change_nothing(monkeypatch, kind):
    qkv, mask, keep, _ = _inputs(kind, jnp.float32, seed=3)
    weights = jnp.asarray(np.random.default_rng(4).normal(size=(B, T, 3, 12)), jnp.float32)
    f = lambda x: cpu_attention(x, mask, keep, 0.75)  # noqa: E731
    whole = _value_and_grads(f, qkv, weights)
    monkeypatch.setattr(attention, "CHUNK_BYTES", 3 * T * T * 4)  # one row per chunk (5 is prime)
    assert chunk_rows(B, 3, T) == 1
    single = _value_and_grads(f, qkv, weights)
    for a, b in zip(whole, single):
        assert _rel(a, b) < 1e-6


def test_chunk_rows():
    assert chunk_rows(32, 12, 128) == 8  # 0.75 MiB of scores a row, 8 MiB a chunk
    assert chunk_rows(32, 12, 32) == 32 and chunk_rows(7, 12, 32) == 7  # short rows: one chunk
    for batch in (6, 12, 30, 31, 64, 100):
        c = chunk_rows(batch, 12, 128)
        assert batch % c == 0 and (c * 12 * 128 * 128 * 4 <= attention.CHUNK_BYTES or c == batch)
    assert chunk_rows(31, 12, 128) == 31  # prime: one-row chunks would cost more than they save
    assert chunk_rows(30, 12, 128) == 10 and chunk_rows(36, 12, 128) == 9


@pytest.mark.parametrize("perm", [(0, 2, 1, 3), (0, 2, 3, 1, 4), (0, 3, 1, 2, 4)])
def test_heads_major_is_a_transpose(perm):
    x = jnp.asarray(np.random.default_rng(2).normal(size=(3, 5, 3, 4, 6)[: len(perm)]), jnp.bfloat16)
    assert np.array_equal(np.asarray(to_heads_major(x, perm)), np.asarray(x.transpose(perm)))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_the_model_computes_what_the_written_out_path_does(monkeypatch, dtype):
    """A training forward with attention dropout: the same logits and parameter gradients as the path that
    writes attention out with scores (the one the distillation's attention losses take), so the same
    dropout masks too (the attention's `Dropout` draws them from the same stream)."""
    arch = BertArch.uniform(2, 36, 3, 60, vocab_size=50, max_position_embeddings=16)
    model = bert.in_precision(build_model(arch, "classification", 3), "bf16" if dtype == jnp.bfloat16 else "fp32")
    params = init_params(model, jax.random.key(0))
    ids = jnp.asarray(np.random.default_rng(6).integers(1, 50, size=(B, T)))
    segments = jnp.asarray(SEGMENTS["padded"][:, :T])
    segments = segments.at[-1, 0].set(1)  # the classifier reads token 0

    def loss(p):
        out = model.apply({"params": p}, ids, jnp.zeros_like(ids), segments, deterministic=False,
                          rngs={"dropout": jax.random.key(7)})
        logits = out.logits
        return jnp.sum(logits.astype(jnp.float32) ** 2), logits

    calls = []
    monkeypatch.setattr(bert, "cpu_attention", lambda *a: calls.append(a) or cpu_attention(*a))
    (_, ours), grads = jax.value_and_grad(loss, has_aux=True)(params)
    assert len(calls) == arch.num_layers and calls[0][2] is not None  # this path ran, with dropout
    monkeypatch.setattr(bert, "_own_cpu_attention", lambda: False)
    (_, theirs), their_grads = jax.value_and_grad(loss, has_aux=True)(params)
    tol = 1e-5 if dtype == jnp.float32 else 5e-2
    assert _rel(ours, theirs) < tol
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(their_grads)):
        assert _rel(a, b) < tol


def test_a_dropout_that_drops_everything_keeps_nothing():
    arch = BertArch.uniform(1, 36, 3, 60, vocab_size=50, max_position_embeddings=16)
    arch = dataclasses.replace(arch, attention_dropout=0.999)
    model = build_model(arch, "classification", 2)
    params = init_params(model, jax.random.key(0))
    ids = jnp.ones((2, T), jnp.int32)
    out = model.apply({"params": params}, ids, jnp.zeros_like(ids), jnp.ones_like(ids), deterministic=False,
                      rngs={"dropout": jax.random.key(1)})
    assert np.isfinite(np.asarray(out.logits)).all()
