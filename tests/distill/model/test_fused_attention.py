"""cuDNN's fused attention (`BertForTask.attention == "cudnn"`, chosen by `in_precision` in bfloat16 on
NVIDIA GPUs): the same logits and gradients as XLA's attention. Runs only where JAX sees a GPU (skipped in
CI); on the CPU, the choice itself is checked (always 'xla').

Shape: 2 layers, hidden 72, 3 heads of 24 (cuDNN takes head sizes that are multiples of 8), rows of
lengths 9, 5 and 2 padded to 12 (cuDNN's backward takes even lengths), and a padding row (length 0, as
batches end with), which must stay finite and out of the real rows' results. Both sides compute in bfloat16, so each is compared with float32 and
must land as close to it as the other (measured on an H200: see the bounds).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distill.arch import BertArch
from distill.model.bert import build_model, fused_attention, in_precision, init_params

ARCH = BertArch.uniform(2, 72, 3, 97, vocab_size=64, max_position_embeddings=16)
GPU = jax.default_backend() == "gpu"


def _batch():
    rng = np.random.default_rng(0)
    ids = rng.integers(5, ARCH.vocab_size, (4, 12)).astype(np.int32)
    mask = (np.arange(12)[None, :] < np.array([9, 5, 2, 0])[:, None]).astype(np.int32)
    return jnp.asarray(ids * mask), jnp.zeros_like(ids), jnp.asarray(mask)


def _rel(a, b) -> float:
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


def test_fused_attention_only_on_gpus_in_bfloat16():
    assert fused_attention(ARCH, jnp.float32) == "xla"
    assert fused_attention(BertArch.uniform(2, 36, 3, 37), jnp.bfloat16) == "xla"  # head size 12
    assert fused_attention(ARCH, jnp.bfloat16) == ("cudnn" if GPU else "xla")


@pytest.mark.skipif(not GPU, reason="cuDNN attention needs an NVIDIA GPU")
def test_cudnn_attention_matches_xla_attention():
    base = build_model(ARCH, "classification", 2)
    params = init_params(base, jax.random.key(0))
    fused = in_precision(base, "bf16", attention_dropout=False)
    assert fused.attention == "cudnn"
    unfused = fused.clone(attention="xla")
    batch = _batch()

    def loss(model, p):  # the real rows only, as the losses weigh padding rows 0
        return jnp.sum(model.apply({"params": p}, *batch).logits[:3] ** 2)

    hlo = jax.jit(lambda p: loss(fused, p)).lower(params).compile().as_text()
    assert "cudnn" in hlo.lower()  # the fused kernel runs, not a fallback

    ref_logits = base.apply({"params": params}, *batch).logits
    ref_grads = jax.grad(lambda p: loss(base, p))(params)
    for model in (fused, unfused):
        logits = model.apply({"params": params}, *batch).logits
        assert bool(jnp.all(jnp.isfinite(logits)))
        assert _rel(logits[:3], ref_logits[:3]) < 2e-2
    got = jax.grad(lambda p: loss(fused, p))(params)
    other = jax.grad(lambda p: loss(unfused, p))(params)
    flat = lambda t: jnp.concatenate([x.ravel() for x in jax.tree.leaves(t)])  # noqa: E731
    assert _rel(flat(got), flat(ref_grads)) < 2 * _rel(flat(other), flat(ref_grads)) + 1e-2
    assert _rel(flat(got), flat(other)) < 5e-2
