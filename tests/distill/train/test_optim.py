"""Optimizer config: schedules, layer-wise LR decay, frozen embeddings, weight-decay mask, LAMB, the moving
average of the weights."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from distill.arch import BertArch
from distill.model.bert import abstract_params, build_model
from distill.train.optim import OptimizerConfig, averaged, clip_by_global_norm, layer_lr_scales
from tasks.errors import UserError

ARCH = BertArch.uniform(2, 36, 3, 37, vocab_size=41, max_position_embeddings=16)


def tiny_params(seed: int = 0) -> dict:
    """The real parameter tree of a tiny classification BERT, every leaf random (no init compile)."""
    rng = np.random.default_rng(seed)
    shapes = abstract_params(build_model(ARCH, "classification", 2))
    return jax.tree.map(lambda x: rng.normal(0.0, 0.5, x.shape).astype(np.float32), shapes)


def flat(tree) -> dict:
    return {path: np.asarray(x) for path, x in traverse_util.flatten_dict(tree).items()}


def one_update(cfg: OptimizerConfig, params, grads, total_steps: int = 10):
    tx = cfg.build(params, total_steps, ARCH.num_layers)
    updates, _ = tx.update(grads, tx.init(params), params)
    return optax.apply_updates(params, updates)


@pytest.mark.parametrize("scale", [0.01, 3.0])
def test_clipping_matches_optax_and_keeps_its_state(scale):
    """Our global-norm clipping (one scalar factor, which XLA fuses into the optimizer) gives optax's
    clipped gradients, below the maximum norm (unchanged) and above it, and the same (empty) state, so
    checkpoints written with either restore into the other."""
    params = tiny_params(1)
    grads = jax.tree.map(lambda x: x * scale, tiny_params(2))
    norm = float(optax.tree.norm(grads))
    max_norm = 10.0
    assert (norm < max_norm) == (scale < 1)
    ours, theirs = clip_by_global_norm(max_norm), optax.clip_by_global_norm(max_norm)
    got, state = jax.jit(ours.update)(grads, ours.init(params))
    want, their_state = theirs.update(grads, theirs.init(params))
    for path, x in flat(want).items():
        np.testing.assert_allclose(flat(got)[path], x, rtol=1e-6, atol=0)
    assert float(optax.tree.norm(got)) == pytest.approx(min(norm, max_norm), rel=1e-5)
    assert jax.tree.structure(state) == jax.tree.structure(their_state)


def test_linear_schedule_warms_up_then_decays_to_zero():
    s = OptimizerConfig(learning_rate=1e-3, warmup_ratio=0.1, schedule="linear").schedule_fn(100)
    assert float(s(0)) == 0.0
    assert float(s(5)) == pytest.approx(5e-4)  # mid warm-up
    assert float(s(10)) == pytest.approx(1e-3)  # peak
    assert float(s(55)) == pytest.approx(5e-4)  # half-way down
    assert float(s(100)) == pytest.approx(0.0, abs=1e-12)  # end


def test_cosine_and_constant_schedules():
    cosine = OptimizerConfig(learning_rate=2e-3, warmup_ratio=0.2, schedule="cosine").schedule_fn(50)
    assert float(cosine(10)) == pytest.approx(2e-3)
    assert float(cosine(30)) == pytest.approx(1e-3)  # cosine midpoint
    assert float(cosine(50)) == pytest.approx(0.0, abs=1e-12)
    constant = OptimizerConfig(learning_rate=2e-3, warmup_ratio=0.2, schedule="constant").schedule_fn(50)
    assert float(constant(5)) == pytest.approx(1e-3)
    assert [float(constant(t)) for t in (10, 30, 50)] == pytest.approx([2e-3] * 3)


def test_no_warmup_starts_at_the_peak():
    s = OptimizerConfig(learning_rate=1e-3, warmup_ratio=0.0).schedule_fn(7)
    assert float(s(0)) == pytest.approx(1e-3)
    assert float(s(7)) == pytest.approx(0.0, abs=1e-12)


def test_layer_lr_scales():
    scales = flat(layer_lr_scales(tiny_params(), ARCH.num_layers, 0.5))
    for path, value in scales.items():
        if path[0] == "embeddings":
            expected = 0.5**3  # decay ** (L + 1)
        elif path[:2] == ("encoder", "layer_0"):
            expected = 0.5**2  # decay ** (L - 0)
        elif path[:2] == ("encoder", "layer_1"):
            expected = 0.5  # decay ** (L - 1)
        else:
            assert path[0] in ("pooler", "classifier"), path
            expected = 1.0
        assert value == pytest.approx(expected), path


def test_layer_lr_scales_with_shared_layers():
    # 3 layers in groups (0, 0, 1): group 0 (layers 0 and 1) takes its deepest layer's rate, decay ** (3 - 1).
    arch = BertArch.uniform(3, 36, 3, 37, vocab_size=41, max_position_embeddings=16).replace(layer_groups=(0, 0, 1))
    params = abstract_params(build_model(arch, "classification", 2))
    scales = flat(layer_lr_scales(params, arch.num_layers, 0.5, arch.groups))
    assert {p[1] for p in scales if p[0] == "encoder"} == {"layer_0", "layer_1"}
    for path, value in scales.items():
        if path[0] == "encoder":
            assert value == pytest.approx(0.25 if path[1] == "layer_0" else 0.5), path
        elif path[0] == "embeddings":
            assert value == pytest.approx(0.5**4), path


def test_layer_lr_decay_scales_each_update():
    # Adam's first step moves every weight by lr (grads all ones, no decay, no clipping),
    # so each leaf moves by lr times its layer's scale.
    params = tiny_params()
    grads = jax.tree.map(np.ones_like, params)
    cfg = OptimizerConfig(learning_rate=1e-2, warmup_ratio=0.0, weight_decay=0.0, max_grad_norm=0.0,
                          schedule="constant", layer_lr_decay=0.5)
    new = flat(one_update(cfg, params, grads))
    scales = flat(layer_lr_scales(params, ARCH.num_layers, 0.5))
    for path, old in flat(params).items():
        np.testing.assert_allclose(old - new[path], 1e-2 * scales[path], rtol=1e-4, err_msg=str(path))


def test_freeze_embeddings_leaves_every_embedding_leaf_unchanged():
    params = tiny_params()
    rng = np.random.default_rng(1)
    grads = jax.tree.map(lambda x: rng.normal(size=x.shape).astype(np.float32), params)
    cfg = OptimizerConfig(learning_rate=1e-2, warmup_ratio=0.0, weight_decay=0.1, freeze_embeddings=True)
    old, new = flat(params), flat(one_update(cfg, params, grads))
    assert any(p[0] == "embeddings" for p in old)
    for path in old:
        if path[0] == "embeddings":
            np.testing.assert_array_equal(new[path], old[path], err_msg=str(path))
        else:
            assert not np.allclose(new[path], old[path]), path


def test_weight_decay_skips_biases_and_layernorm():
    params = tiny_params()
    zeros = jax.tree.map(np.zeros_like, params)
    cfg = OptimizerConfig(learning_rate=1e-2, warmup_ratio=0.0, weight_decay=0.1, schedule="constant")
    old, new = flat(params), flat(one_update(cfg, params, zeros))
    seen = set()
    for path in old:
        seen.add(path[-1])
        if path[-1] in ("bias", "scale"):  # biases, LayerNorm scales and LayerNorm biases
            np.testing.assert_array_equal(new[path], old[path], err_msg=str(path))
        else:  # kernels and embedding tables: p <- p - lr * wd * p
            np.testing.assert_allclose(new[path], old[path] * (1 - 1e-2 * 0.1), rtol=1e-6, err_msg=str(path))
    assert seen == {"bias", "scale", "kernel", "embedding"}


def test_lamb_reduces_a_simple_loss():
    params = {"encoder": {"layer_0": {"dense": {"kernel": jnp.full((5, 3), 2.0), "bias": jnp.full((3,), -1.0)}}}}

    def loss(p):
        d = p["encoder"]["layer_0"]["dense"]
        return jnp.sum((d["kernel"] - 0.5) ** 2) + jnp.sum((d["bias"] - 0.25) ** 2)

    cfg = OptimizerConfig(name="lamb", learning_rate=0.05, warmup_ratio=0.0, schedule="constant", weight_decay=0.0)
    tx = cfg.build(params, 100, 1)
    state = tx.init(params)

    @jax.jit
    def step(p, s):
        updates, s = tx.update(jax.grad(loss)(p), s, p)
        return optax.apply_updates(p, updates), s

    start = float(loss(params))
    for _ in range(40):
        params, state = step(params, state)
    assert float(loss(params)) < 0.05 * start


@pytest.mark.parametrize(
    "kw, field",
    [
        ({"name": "sgd"}, "optimizer: unknown 'sgd'; valid: adamw, lamb"),
        ({"schedule": "step"}, "schedule: unknown 'step'; valid: linear, cosine, constant"),
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"learning_rate": -1e-3}, "learning_rate"),
        ({"warmup_ratio": 1.0}, "warmup_ratio"),
        ({"layer_lr_decay": 0.0}, "layer_lr_decay"),
        ({"layer_lr_decay": 1.5}, "layer_lr_decay"),
        ({"ema": 1.0}, "ema"),
        ({"ema": -0.5}, "ema"),
    ],
)
def test_invalid_settings_raise_user_error(kw, field):
    with pytest.raises(UserError) as err:
        OptimizerConfig(**kw)
    assert str(err.value).startswith(field)


def train(cfg: OptimizerConfig, params, steps: int):
    """`steps` AdamW updates with random gradients (the same for every config); (params after each, state)."""
    tx = cfg.build(params, 20, ARCH.num_layers)
    state, history, rng = tx.init(params), [], np.random.default_rng(2)
    for _ in range(steps):
        grads = jax.tree.map(lambda x: rng.normal(size=x.shape).astype(np.float32), params)
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        history.append(params)
    return history, state


@pytest.mark.parametrize("freeze", [False, True])
def test_the_moving_average_follows_its_recurrence_and_leaves_training_alone(freeze):
    """With `ema`, training takes the same steps as without (the average rides along in the optimizer
    state) and `averaged` gives a_t = d_t a_(t-1) + (1 - d_t) p_t from a_0 = the initial weights, d_t =
    min(decay, (1 + t) / (10 + t)); frozen embeddings stay their own average."""
    params, decay = tiny_params(), 0.6
    base = dict(learning_rate=1e-2, warmup_ratio=0.0, freeze_embeddings=freeze)
    plain, plain_state = train(OptimizerConfig(**base), params, 6)
    history, state = train(OptimizerConfig(**base, ema=decay), params, 6)
    for a, b in zip(jax.tree.leaves(plain[-1]), jax.tree.leaves(history[-1])):
        np.testing.assert_array_equal(a, b)
    assert averaged(plain[-1], plain_state) is plain[-1]  # no average kept: the weights themselves

    expect = flat(params)
    for t, p in enumerate(history):
        d = min(decay, (1 + t) / (10 + t))
        expect = {k: d * v + (1 - d) * flat(p)[k] for k, v in expect.items()}
    got = flat(averaged(history[-1], state))
    for path, want in expect.items():
        np.testing.assert_allclose(got[path], want, rtol=1e-5, atol=1e-6, err_msg=str(path))
        assert got[path].dtype == np.float32
        if freeze and path[0] == "embeddings":
            np.testing.assert_allclose(got[path], flat(params)[path], rtol=1e-6, err_msg=str(path))
        else:  # the average lags the weights
            assert not np.allclose(got[path], flat(history[-1])[path]), path


def test_the_average_is_cast_to_the_weights_dtypes():
    params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), tiny_params())
    history, state = train(OptimizerConfig(learning_rate=1e-2, ema=0.9), params, 2)
    assert {x.dtype for x in jax.tree.leaves(averaged(history[-1], state))} == {jnp.dtype(jnp.bfloat16)}


def test_the_average_starts_as_its_own_buffers():
    """A train step donates the weights and the optimizer state together: the average must not start out as
    the weights' own arrays (jnp.asarray of a float32 array would return it)."""
    params = jax.tree.map(jnp.asarray, tiny_params())
    state = OptimizerConfig(ema=0.9).build(params, 10, ARCH.num_layers).init(params)
    ours = {x.unsafe_buffer_pointer() for x in jax.tree.leaves(params)}
    assert not ours & {x.unsafe_buffer_pointer() for x in jax.tree.leaves(averaged(params, state))}
