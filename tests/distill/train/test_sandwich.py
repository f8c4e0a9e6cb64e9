"""Sandwich training of a supernet: masked gradients are the sub-network's, and training lowers the
distillation loss of the smallest and the largest sub-network."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from distill.arch import BertArch
from distill.kd.importance import weight_scores
from distill.kd.objective import LossConfig, TeacherOutputs, distill_loss
from distill.kd.supernet import Subnet, SubnetChoices, extract, rewire, width_masks
from distill.model.bert import build_model
from distill.train.sandwich import make_sandwich_step, subnet_grads
from distill.train.steps import TrainState

HEAD, LABELS = "classification", 3
KL = LossConfig(logits="kl", temperature=2.0)


@pytest.fixture(scope="module")
def teacher_arch() -> BertArch:
    """3 layers, hidden 36, 3 heads of 12, FFN 44, no dropout (so losses are deterministic)."""
    return BertArch.uniform(3, 36, 3, 44, vocab_size=101, max_position_embeddings=16, hidden_dropout=0.0,
                            attention_dropout=0.0)


@pytest.fixture
def teacher(teacher_arch, random_params) -> dict:
    return random_params(teacher_arch, HEAD, LABELS, seed=1)


@pytest.fixture
def batch(padded_batch) -> dict:
    ids, types, mask = padded_batch
    return {"input_ids": ids, "token_type_ids": types, "attention_mask": mask,
            "weights": np.ones(3, np.float32), "labels": np.array([0, 2, 1], np.int32)}


def teacher_outputs(arch, params, batch) -> TeacherOutputs:
    out = build_model(arch, HEAD, LABELS).apply({"params": params}, batch["input_ids"], batch["token_type_ids"],
                                                batch["attention_mask"])
    return TeacherOutputs(logits=out.logits)


def subnet_loss(params, supernet_arch, sub: Subnet, batch, teacher: TeacherOutputs) -> jax.Array:
    """The sub-network's loss computed the plain way: extract, build the student, apply."""
    model = build_model(sub.arch(supernet_arch), HEAD, LABELS)
    out = model.apply({"params": extract(params, supernet_arch, sub)}, batch["input_ids"], batch["token_type_ids"],
                      batch["attention_mask"])
    total, _ = distill_loss(None, out, teacher, batch, kind=HEAD, cfg=KL, layer_map=sub.layers)
    return total


def test_masked_gradients_are_the_subnets(teacher_arch, teacher, batch):
    supernet = rewire(teacher, teacher_arch, weight_scores(teacher, teacher_arch))
    target = teacher_outputs(teacher_arch, teacher, batch)
    sub = Subnet(layers=(0, 2), hidden_size=24, num_heads=(1, 2), ffn_sizes=(7, 31))
    head_mask, ffn_mask = width_masks(sub, teacher_arch)
    got, (loss, count) = subnet_grads(supernet, batch, jax.random.key(0), target, head_mask, ffn_mask,
                                      supernet=teacher_arch, shape=sub.shape, head=HEAD, num_labels=LABELS,
                                      kind=HEAD, loss_cfg=KL)
    want = jax.grad(subnet_loss)(supernet, teacher_arch, sub, batch, target)
    np.testing.assert_allclose(loss, subnet_loss(supernet, teacher_arch, sub, batch, target), atol=1e-6)
    assert float(count) == 3.0
    flat_got, flat_want = traverse_util.flatten_dict(got), traverse_util.flatten_dict(want)
    for path in flat_want:
        np.testing.assert_allclose(flat_got[path], flat_want[path], atol=1e-6, err_msg="/".join(path))
    # Units outside the sub-network get no gradient: layer 1 is not run, head 1 of layer 0 is masked.
    assert not np.any(flat_got[("encoder", "layer_1", "output", "kernel")])
    assert not np.any(flat_got[("encoder", "layer_0", "attention", "qkv", "kernel")][:, :, 1:])
    assert np.any(flat_got[("encoder", "layer_0", "attention", "qkv", "kernel")][:, :, 0])


def _train_sandwich(teacher_arch, teacher, batch, precision: str = "fp32"):
    """25 sandwich steps on one batch from the rewired teacher: (state, last metrics, params before the last
    step, the largest and smallest sub-networks, their losses before and after, the teacher's outputs)."""
    supernet = rewire(teacher, teacher_arch, weight_scores(teacher, teacher_arch))
    target = teacher_outputs(teacher_arch, teacher, batch)
    choices = SubnetChoices(layers=(1, 2), hidden=(24, 36), heads=(1, 2, 3), ffn=(7, 44))
    tx = optax.adamw(3e-3)
    step = make_sandwich_step(teacher_arch, choices, tx, head=HEAD, num_labels=LABELS, kind=HEAD, loss_cfg=KL,
                              num_sampled=1, seed=0, precision=precision)
    ends = (choices.largest(teacher_arch), choices.smallest(teacher_arch))
    before = [float(subnet_loss(supernet, teacher_arch, sub, batch, target)) for sub in ends]
    state = TrainState.create(jax.tree_util.tree_map(jnp.asarray, supernet), tx)
    for _ in range(25):
        last = jax.tree_util.tree_map(np.array, state.params)  # the step donates its input state
        state, metrics = step(state, batch, jax.random.key(0), target)
    after = [float(subnet_loss(state.params, teacher_arch, sub, batch, target)) for sub in ends]
    return state, metrics, last, ends, before, after, target


def test_sandwich_training_lowers_the_loss_of_the_smallest_and_largest(teacher_arch, teacher, batch):
    state, metrics, last, ends, before, after, target = _train_sandwich(teacher_arch, teacher, batch)
    assert int(state.step) == 25
    assert after[0] < 0.5 * before[0] and after[1] < 0.5 * before[1], (before, after)
    logged = jax.device_get(metrics)
    for role in ("largest", "smallest", "sampled"):
        assert logged[f"{role}_count"] > 0 and np.isfinite(logged[f"{role}_sum"])
    for role, sub in zip(("largest", "smallest"), ends):  # each logged loss is that sub-network's, before the update
        np.testing.assert_allclose(logged[f"{role}_sum"] / logged[f"{role}_count"],
                                   subnet_loss(last, teacher_arch, sub, batch, target), atol=1e-6)


def test_intermediate_losses_are_refused(teacher_arch):
    choices = SubnetChoices(layers=(1,), hidden=(36,), heads=(3,), ffn=(44,))
    with pytest.raises(ValueError, match="predictions only"):
        make_sandwich_step(teacher_arch, choices, optax.sgd(0.1), head=HEAD, num_labels=LABELS, kind=HEAD,
                           loss_cfg=LossConfig(hidden_weight=1.0))


def test_bf16_sandwich_training_lowers_the_loss_too(teacher_arch, teacher, batch):
    state, _, _, _, before, after, _ = _train_sandwich(teacher_arch, teacher, batch, precision="bf16")
    assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(state.params))
    assert after[0] < 0.5 * before[0] and after[1] < 0.5 * before[1], (before, after)
