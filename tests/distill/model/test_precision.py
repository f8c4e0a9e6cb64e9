"""bfloat16 compute (`--precision bf16`): `mixed_matmul`'s values and gradients against float32, the
model's logits and gradients at bf16 against fp32, float32 master weights after a step, and the run keys.

Sizes are odd and tiny (2 layers, hidden 36, 3 heads, sequence 7). Tolerances are bfloat16's: 8 bits of
significand give a relative rounding error of up to 2^-8 per operand; sums of a few dozen products stay
within a few 1e-3 relative, so the bounds below (1e-2 relative, cosine > 0.999) have margin (measured: see
each).
"""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from distill.arch import BertArch
from distill.files import config_key
from distill.kd.losses import hard_loss
from distill.model import bert
from distill.model.bert import build_model, in_precision, init_params, mixed_matmul
from distill.model.infer import model_inputs
from distill.run.config import DistillConfig, FinetuneConfig, SupernetConfig
from distill.train.loop import LoopConfig
from distill.train.steps import TrainState, make_supervised_step
from tasks.errors import UserError

ARCH = BertArch.uniform(2, 36, 3, 60, vocab_size=50, max_position_embeddings=16)
B, T = 5, 7


def _rel(a, b) -> float:
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


def _cos(a, b) -> float:
    a, b = np.ravel(a), np.ravel(b)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_mixed_matmul_matches_float32_in_value_and_gradient():
    kx, kw, kg = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (35, 36))
    w = jax.random.normal(kw, (36, 60)) * 0.2
    g = jax.random.normal(kg, (35, 60))
    y = mixed_matmul(x, w)
    assert y.dtype == jnp.float32 and y.shape == (35, 60)
    assert _rel(y, x @ w) < 1e-2  # measured 2.3e-3

    _, vjp = jax.vjp(mixed_matmul, x, w)
    dx, dw = vjp(g)
    assert dw.dtype == jnp.float32  # float32 master weights get float32 gradients
    assert dx.dtype == jnp.float32 and dx.shape == x.shape
    assert _rel(dx, g @ w.T) < 1e-2 and _rel(dw, x.T @ g) < 1e-2  # measured 3.1e-3, 2.4e-3
    # the weight gradient is accumulated and returned in float32, never rounded to bfloat16: it equals the
    # float32 product of the bfloat16-rounded operands (a bfloat16 result would be off by up to 2^-8)
    round16 = lambda a: a.astype(jnp.bfloat16).astype(jnp.float32)  # noqa: E731
    np.testing.assert_allclose(np.asarray(dw), np.asarray(round16(x).T @ round16(g)), rtol=1e-5, atol=1e-5)
    # (the input gradient comes back in bfloat16, the dtype `mixed_matmul` computes the input in)
    _, vjp32 = jax.vjp(mixed_matmul, x.astype(jnp.float32), w)  # a float32 input gets a float32 cotangent
    assert vjp32(g)[0].dtype == jnp.float32


@pytest.mark.parametrize("rows", [1, 2, 35])
def test_the_jitted_weight_gradient_is_the_float32_product_of_the_rounded_operands(rows):
    """Under jit, where XLA chooses the matmul's form: on the CPU the weight gradient runs from a row-major
    transposed copy of the input (`_weight_gradient`), which XLA must neither fold back into the
    rows-contracting form (a bfloat16 product its CPU matmul cannot run) nor get wrong; one row takes the
    plain form."""
    kx, kw, kg = jax.random.split(jax.random.key(rows), 3)
    x, w = jax.random.normal(kx, (rows, 36)), jax.random.normal(kw, (36, 60)) * 0.2
    g = jax.random.normal(kg, (rows, 60))
    grad = jax.jit(jax.grad(lambda a, b: jnp.sum(mixed_matmul(a, b) * g), argnums=(0, 1)))
    dx, dw = grad(x, w)
    round16 = lambda a: a.astype(jnp.bfloat16).astype(jnp.float32)  # noqa: E731
    np.testing.assert_allclose(np.asarray(dw), np.asarray(round16(x).T @ round16(g)), rtol=1e-5, atol=1e-5)
    assert _rel(dx, g @ w.T) < 1e-2
    if rows > 1 and jax.default_backend() == "cpu" and jax.local_device_count() == 1:
        # the speed, not only the values: no product left that contracts the rows of its first operand
        assert "lhs_contracting_dims={0}" not in grad.lower(x, w).compile().as_text()


def test_mixed_matmul_with_bfloat16_results_keeps_a_float32_weight_gradient():
    """The accelerator form (`bf16_results()`): the result and the input's cotangent in bfloat16, the
    weight gradient still accumulated and returned in float32."""
    kx, kw, kg = jax.random.split(jax.random.key(3), 3)
    x, w = jax.random.normal(kx, (35, 36)), jax.random.normal(kw, (36, 60)) * 0.2
    g = jax.random.normal(kg, (35, 60))
    y, vjp = jax.vjp(lambda a, b: mixed_matmul(a, b, jnp.bfloat16), x.astype(jnp.bfloat16), w)
    assert y.dtype == jnp.bfloat16 and _rel(y.astype(jnp.float32), x @ w) < 1e-2  # measured 2.8e-3
    dx, dw = vjp(g.astype(jnp.bfloat16))
    assert dx.dtype == jnp.bfloat16 and dw.dtype == jnp.float32
    round16 = lambda a: a.astype(jnp.bfloat16).astype(jnp.float32)  # noqa: E731
    np.testing.assert_allclose(np.asarray(dw), np.asarray(round16(x).T @ round16(g)), rtol=1e-5, atol=1e-5)
    assert _rel(dx.astype(jnp.float32), g @ w.T) < 1e-2  # measured 2.9e-3


def test_a_bf16_dense_layer_has_the_fp32_layers_parameters_and_float32_gradients():
    """In bf16 compute the dense layers are `ReshapedDense`s with nn.Dense's parameter tree, so one set of
    float32 weights serves both precisions, and their gradients come back float32."""
    model = build_model(ARCH, "classification", 2)
    params = init_params(model, jax.random.key(0))
    fast = in_precision(model, "bf16")
    ids = jnp.ones((2, T), jnp.int32)
    assert jax.tree.structure(fast.init(jax.random.key(0), ids)["params"]) == jax.tree.structure(params)
    grads = jax.grad(lambda p: fast.apply({"params": p}, ids).logits.sum())(params)
    assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads))
    for name in ("intermediate", "output"):
        assert float(jnp.abs(grads["encoder"]["layer_0"][name]["kernel"]).sum()) > 0


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    ids = rng.integers(5, 50, (B, T)).astype(np.int32)
    mask = np.ones((B, T), np.int32)
    mask[0, 5:] = 0
    return {"input_ids": ids, "token_type_ids": np.zeros_like(ids), "attention_mask": mask,
            "labels": rng.integers(0, 2, B).astype(np.int32), "weights": np.ones(B, np.float32)}


@pytest.mark.parametrize("accelerator_form", [False, True], ids=["cpu-form", "accelerator-form"])
@pytest.mark.parametrize("head", ["classification", "tagging"])
def test_bf16_model_matches_fp32_logits_and_gradients(batch, head, accelerator_form, monkeypatch):
    """Both forms of bfloat16 compute: CPU's (float32 matmul results and GELU inputs) and GPUs' and TPUs'
    (bfloat16 ones, `bf16_results`), the latter run here on CPU by asking for it."""
    monkeypatch.setattr(bert, "bf16_results", lambda: accelerator_form)
    model = build_model(ARCH, head, 2)
    params = init_params(model, jax.random.key(1))
    params = jax.tree.map(lambda p: p * 4 if p.ndim == 2 else p, params)  # away from init's near-zero logits
    fast = in_precision(model, "bf16")
    assert fast.dtype == jnp.bfloat16 and in_precision(model, "fp32") is model
    labels = batch["labels"] if head == "classification" else np.tile(batch["labels"][:, None], (1, T))
    data = {**batch, "labels": labels}

    def loss(m, p):
        out = m.apply({"params": p}, **model_inputs(data), deterministic=True)
        total, count = hard_loss(head, out, data, ())
        return total / count, out.logits

    (l32, logits32), g32 = jax.value_and_grad(lambda p: loss(model, p), has_aux=True)(params)
    (l16, logits16), g16 = jax.value_and_grad(lambda p: loss(fast, p), has_aux=True)(params)
    assert logits16.dtype == jnp.float32
    # measured 6.0e-3 (classification), 6.4e-3 (tagging); accelerator form 6.5e-3, 6.5e-3
    assert _rel(logits16, logits32) < 2e-2
    assert abs(float(l16 - l32)) < 1e-2 * abs(float(l32))
    flat32, flat16 = traverse_util.flatten_dict(g32), traverse_util.flatten_dict(g16)
    assert all(flat16[k].dtype == jnp.float32 for k in flat16)
    assert _cos(np.concatenate([np.ravel(flat16[k]) for k in flat32]),
                np.concatenate([np.ravel(flat32[k]) for k in flat32])) > 0.999  # measured 0.99999


def test_a_bf16_train_step_keeps_float32_master_weights_and_lowers_the_loss(batch):
    model = build_model(ARCH, "classification", 2)
    params = init_params(model, jax.random.key(2))
    tx = optax.adam(3e-3)
    step = make_supervised_step(in_precision(model, "bf16"), tx, "classification")
    state = TrainState.create(params, tx)
    losses = []
    for _ in range(30):
        state, m = step(state, jax.device_put(batch), jax.random.key(0))
        losses.append(float(m["loss_sum"] / m["loss_count"]))
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(state.params))
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(state.opt_state) if hasattr(p, "dtype")
               and jnp.issubdtype(p.dtype, jnp.floating))
    assert losses[-1] < 0.5 * losses[0]  # memorises 5 examples: measured 0.69 -> 0.01


def test_precision_is_validated_and_keys_runs_apart():
    with pytest.raises(UserError, match="precision"):
        LoopConfig(precision="fp16")
    # fp32 keeps every key from before the flag (the fine-tuned-teacher key is pinned in test_finetune.py)
    assert "precision" not in FinetuneConfig().cache_settings()
    assert "precision" not in SupernetConfig().cache_settings()
    bf16 = FinetuneConfig(loop=LoopConfig(epochs=3, precision="bf16"))
    assert config_key(bf16.cache_settings()) != config_key(FinetuneConfig().cache_settings())
    assert SupernetConfig(loop=LoopConfig(epochs=1, precision="bf16")).cache_settings()["precision"] == "bf16"
    # a distillation's teacher stage and a supernet's data stage train in the run's precision
    run = DistillConfig(loop=LoopConfig(precision="bf16"))
    assert run.teacher_stage().loop.precision == "bf16"
    sn = SupernetConfig(loop=dataclasses.replace(LoopConfig(epochs=1), precision="bf16"))
    assert sn.data_stage().teacher_stage().loop.precision == "bf16"


def test_bf16_labelling_is_close_to_fp32_and_cached_apart(tmp_path, monkeypatch):
    """`--precision bf16` labels in bfloat16 compute too: the logits stay within bfloat16's error of the
    float32 ones, and the two are separate cache entries (a float32 run never reads bf16 labels)."""
    from helpers import write_sst2, write_task_teacher

    from distill.model.store import load_bert
    from distill.run.data import teacher_labels
    from tasks.features import encode
    from tasks.readers import read_split
    from tasks.registry import get_task

    monkeypatch.setenv("BERTNAS_CACHE", str(tmp_path / "cache"))
    task = get_task("sst2")
    teacher = load_bert(write_task_teacher(tmp_path / "teacher", "sst2", seed=3))
    data = write_sst2(tmp_path / "data", n_train=60, n_dev=8)
    train = encode(task, read_split(task, "train", data), teacher.tokenizer)
    fp32 = teacher_labels(DistillConfig(), task, teacher, train)
    bf16 = teacher_labels(DistillConfig(loop=LoopConfig(precision="bf16")), task, teacher, train)
    assert fp32.labelled == bf16.labelled == 60  # the second is not a cache hit of the first
    a, b = np.asarray(fp32.logits), np.asarray(bf16.logits)
    assert not np.array_equal(a, b) and _rel(jnp.asarray(b), jnp.asarray(a)) < 2e-2
    again = teacher_labels(DistillConfig(loop=LoopConfig(precision="bf16")), task, teacher, train)
    assert again.labelled == 0 and np.array_equal(np.asarray(again.logits), b)


def test_auto_precision_is_bf16_only_where_bfloat16_matmuls_are_fast(monkeypatch):
    """`--precision auto` (the default): bf16 on a CPU with AMX or AVX512-BF16, fp32 on other CPUs; explicit
    values stay."""
    from distill import cli

    assert cli.precision("fp32") == "fp32" and cli.precision("bf16") == "bf16"
    if jax.default_backend() == "cpu":
        monkeypatch.setattr(cli, "cpu_flags", lambda: {"avx2", "avx512f", "avx512_vnni"})
        assert cli.precision("auto") == "fp32"
        monkeypatch.setattr(cli, "cpu_flags", lambda: {"avx512f", "amx_tile", "amx_bf16"})
        assert cli.precision("auto") == "bf16"
        monkeypatch.setattr(cli, "cpu_flags", lambda: {"avx512f", "avx512_bf16"})  # AMD Zen 4
        assert cli.precision("auto") == "bf16"
    else:
        assert cli.precision("auto") == "bf16"
    args = cli.Parser(prog="t")
    cli.add_run_args(args, lr=1e-4, epochs=1)
    assert args.parse_args(["--output", "o"]).precision == "auto"
    assert cli.loop_from_args(args.parse_args(["--output", "o", "--precision", "bf16"])).precision == "bf16"


def test_auto_precision_resumes_a_run_in_the_precision_it_trained_in(tmp_path, monkeypatch):
    """`--resume` with `--precision auto`: the run's own precision (fp32 for runs from before the flag), so
    the same command resumes it whatever this machine would pick for a new run."""
    from distill import cli

    monkeypatch.setattr(cli, "cpu_flags", lambda: {"amx_bf16"})
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir(), new.mkdir()
    (old / "config.json").write_text(json.dumps({"finetune": {"loop": {"epochs": 2}}, "task": "sst2"}))
    (new / "config.json").write_text(json.dumps({"distill": {"loop": {"epochs": 2, "precision": "fp32"}}}))
    assert cli.precision("auto", str(old)) == "fp32" and cli.precision("auto", str(new)) == "fp32"
    if jax.default_backend() == "cpu":  # no run there: what this (AMX) machine picks for a new run
        assert cli.precision("auto", str(tmp_path / "none")) == "bf16"
    assert cli.precision("bf16", str(old)) == "bf16"  # an explicit value is what the user asked for
    # --attention-dropout auto likewise: on for runs from before the flag, else the run's own value
    (new / "config.json").write_text(json.dumps({"distill": {"loop": {"attention_dropout": False}}}))
    assert cli.attention_dropout("auto", str(old)) is True and cli.attention_dropout("auto", str(new)) is False
    assert cli.attention_dropout("on", str(new)) is True


def test_attention_dropout_off_leaves_only_the_hidden_dropout():
    arch = dataclasses.replace(ARCH, hidden_dropout=0.0, attention_dropout=0.5)
    model = build_model(arch, "classification", 2)
    params = init_params(model, jax.random.key(0))
    ids = jax.random.randint(jax.random.key(1), (B, T), 0, arch.vocab_size)
    mask = jnp.ones((B, T), jnp.int32).at[0, 4:].set(0)

    def logits(m, deterministic):
        return m.apply({"params": params}, ids, jnp.zeros_like(ids), mask, deterministic=deterministic,
                       rngs={"dropout": jax.random.key(2)}).logits

    assert not np.allclose(logits(model, False), logits(model, True))  # the attention dropout acts
    off = in_precision(model, "fp32", attention_dropout=False)
    assert off.attention_dropout is False and off.attention == "xla"  # fused kernels only on GPUs, in bf16
    np.testing.assert_allclose(logits(off, False), logits(model, True), rtol=1e-6, atol=1e-6)


def test_attention_dropout_flag_and_keys():
    from distill.cli import attention_dropout

    assert attention_dropout("auto") is (jax.default_backend() == "cpu")
    assert attention_dropout("on") is True and attention_dropout("off") is False
    base = FinetuneConfig(task="sst2", teacher="minilm")
    assert "attention_dropout" not in base.cache_settings()  # earlier teachers' keys stay valid
    off = dataclasses.replace(base, loop=dataclasses.replace(base.loop, attention_dropout=False))
    assert off.cache_settings()["attention_dropout"] is False
    on_devices = dataclasses.replace(base, loop=dataclasses.replace(base.loop, devices=1))
    assert on_devices.cache_settings() == base.cache_settings()  # N devices compute what one does


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_attention_matches_jax_dot_product_attention(packed, dtype):
    """`bert._attention` (the path without scores or dropout) computes what `jax.nn.dot_product_attention`'s
    XLA form does, values and gradients, over padded rows (one all padding) and packed rows (`build_mask`):
    the values bit for bit here (measured: 0 in both dtypes), the gradients to float32 rounding, and in
    bfloat16 to its rounding."""
    rng = np.random.default_rng(5)
    q, k, v = (jnp.asarray(rng.normal(size=(3, T, 3, 12)), dtype) for _ in range(3))
    if packed:  # rows of two examples, one of one, one empty
        segments = np.array([[1, 1, 1, 2, 2, 0, 0], [1, 1, 1, 1, 0, 0, 0], [0] * T], np.int32)
    else:
        segments = (np.arange(T)[None, :] < np.array([[7], [3], [0]])).astype(np.int32)
    mask = bert.build_mask(jnp.asarray(segments), packed)
    heads = mask[:, None, None, :] if mask.ndim == 2 else mask[:, None]
    tol = 1e-6 if dtype == jnp.float32 else 1e-2
    real = jnp.asarray(segments > 0)[:, :, None, None]  # rows with no key at all differ only in their garbage

    def ours(q, k, v):
        return jnp.where(real, bert._attention(q, k, v, mask), 0).astype(jnp.float32)

    def reference(q, k, v):
        return jnp.where(real, jax.nn.dot_product_attention(q, k, v, mask=heads), 0).astype(jnp.float32)

    assert _rel(ours(q, k, v), reference(q, k, v)) < tol
    weights = jnp.asarray(rng.normal(size=(3, T, 3, 12)), jnp.float32)
    loss = lambda f: lambda *a: jnp.sum(f(*a) * weights)  # noqa: E731
    for got, want in zip(jax.grad(loss(ours), (0, 1, 2))(q, k, v), jax.grad(loss(reference), (0, 1, 2))(q, k, v)):
        assert _rel(got.astype(jnp.float32), want.astype(jnp.float32)) < tol
