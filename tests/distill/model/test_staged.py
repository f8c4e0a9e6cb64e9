"""A staged forward (`distill.model.infer.staged_logits`: embeddings, each layer and the head jitted apart)
gives the whole model's logits, for every head, padded and packed batches, per-layer widths and shared
layers; architectures of equal widths share its compilations. Tiny odd sizes."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from helpers import token_features

from distill.arch import BertArch
from distill.model import infer
from distill.model.bert import build_model
from distill.model.infer import logits_step, predict, staged_logits
from tasks.batching import batches, collate
from tasks.packing import PackShape, packed_batches


@pytest.mark.parametrize("head, labels", [("classification", 3), ("regression", 1), ("tagging", 5), ("span", 2)])
def test_staged_logits_equal_the_whole_models(hetero_arch, random_params, head, labels):
    model = build_model(hetero_arch, head, labels)
    params = random_params(hetero_arch, head, labels, seed=3)
    batch = collate(token_features("classification"), np.arange(11), 7)
    want = np.asarray(logits_step(params, batch, model=model))
    got = np.asarray(staged_logits(model, params, batch))
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind, labels", [("classification", 3), ("regression", 1)])
def test_staged_predict_on_packed_rows_equals_the_whole_models(hetero_arch, random_params, kind, labels):
    f = token_features(kind, n=17)
    model = build_model(hetero_arch, kind, labels)
    params = random_params(hetero_arch, kind, labels, seed=4)
    shape = PackShape(rows=3, length=15, examples=9)
    want = predict(model, params, packed_batches(f, shape), len(f), f.max_length)
    got = predict(model, params, packed_batches(f, shape), len(f), f.max_length, staged=True)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    padded = predict(model, params, batches(f, 4), len(f), f.max_length, staged=True)  # length buckets
    np.testing.assert_allclose(padded, want, rtol=0, atol=1e-5)


def test_shared_layers_and_bfloat16(random_params):
    """Layers that share one parameter group run it again; in bfloat16 compute the staged logits are within twice
    the whole model's rounding of the float32 logits (stages round to bfloat16 where one compilation may keep
    float32: XLA's excess precision)."""
    arch = BertArch(num_layers=3, hidden_size=36, head_size=12, num_heads=(2, 3, 2), ffn_sizes=(20, 37, 20),
                    vocab_size=101, max_position_embeddings=16, layer_groups=(0, 1, 0))
    params = random_params(arch, "classification", 3, seed=5)
    batch = collate(token_features("classification"), np.arange(11), 7)
    whole, staged = {}, {}
    for name, dtype in (("fp32", jnp.float32), ("bf16", jnp.bfloat16)):
        model = build_model(arch, "classification", 3, dtype)
        whole[name] = np.asarray(logits_step(params, batch, model=model))
        staged[name] = np.asarray(staged_logits(model, params, batch))
    np.testing.assert_allclose(staged["fp32"], whole["fp32"], rtol=0, atol=1e-5)
    rounding = np.abs(whole["bf16"] - whole["fp32"]).max()
    assert 0 < np.abs(staged["bf16"] - whole["fp32"]).max() <= 2 * rounding


def test_architectures_of_equal_widths_share_compiled_stages(random_params):
    """Two architectures built from the same three layer widths in other orders and counts compile no stage
    the first did not: the layer stages grow by the distinct widths only, the embeddings and head stages by
    the hidden size."""
    make = lambda heads, ffn: BertArch(num_layers=len(heads), hidden_size=36, head_size=12,  # noqa: E731
                                       num_heads=heads, ffn_sizes=ffn, vocab_size=101, max_position_embeddings=16)
    first, second = make((1, 3, 2), (20, 37, 11)), make((2, 1), (11, 20))
    batch = collate(token_features("classification"), np.arange(11), 7)
    for stage in (infer._embed_stage, infer._layer_stage, infer._head_stage):
        stage.cache_clear()
    for arch in (first, second):
        model = build_model(arch, "classification", 3)
        staged_logits(model, random_params(arch, "classification", 3), batch)
    assert infer._layer_stage.cache_info().currsize == 3
    assert infer._embed_stage.cache_info().currsize == infer._head_stage.cache_info().currsize == 1
