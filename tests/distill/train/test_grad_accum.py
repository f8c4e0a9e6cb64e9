"""Gradient accumulation (`LoopConfig.grad_accum`, `--grad-accum`): a step over n micro-batches makes the
update of the whole batch.

Dropout is off (rates 0), so the steps are deterministic and comparable, and the optimizer is plain SGD,
so an update is the gradient itself (AdamW's first step is about the gradient's sign, which would magnify
rounding in near-zero gradients). Fine-tuning and prediction-layer distillation (a CRF tagger's too) are
exact: the updates agree to float rounding (bound 1e-5 relative).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from distill.arch import BertArch
from distill.kd.objective import LossConfig
from distill.model.bert import build_model, init_params
from distill.run.config import DistillConfig, SupernetConfig
from distill.train.loop import LoopConfig
from distill.train.steps import TrainState, make_supervised_step, make_train_step, micro_batches
from tasks.errors import UserError

TEACHER = dataclasses.replace(BertArch.uniform(3, 36, 3, 37, vocab_size=50, max_position_embeddings=16),
                              hidden_dropout=0.0, attention_dropout=0.0)
STUDENT = dataclasses.replace(TEACHER, num_layers=2, num_heads=(3, 3), ffn_sizes=(37, 37))
B, T = 6, 7


def _batch(kind: str = "classification") -> dict:
    rng = np.random.default_rng(0)
    lengths = np.array([7, 5, 3, 6, 2, 4])
    mask = (np.arange(T)[None, :] < lengths[:, None]).astype(np.int32)
    batch = {
        "input_ids": (rng.integers(5, 50, (B, T)) * mask).astype(np.int32),
        "token_type_ids": np.zeros((B, T), np.int32),
        "attention_mask": mask,
        "weights": np.array([1, 1, 1, 1, 1, 0], np.float32),  # the last row is padding
        "index": np.array([0, 1, 2, 3, 4, -1], np.int32),
        "labels": rng.integers(0, 2, B).astype(np.int32),
    }
    if kind == "tagging":
        batch["labels"] = np.where(mask, rng.integers(0, 3, (B, T)), -100).astype(np.int32)
    return batch


def _gap(a, b) -> float:
    flat = lambda t: jnp.concatenate([x.ravel() for x in jax.tree.leaves(t)])  # noqa: E731
    return float(jnp.linalg.norm(flat(a) - flat(b)) / jnp.linalg.norm(flat(b)))


def _delta(state: TrainState, params) -> dict:
    return jax.tree.map(lambda new, old: new - old, state.params, params)


def test_micro_batches_interleave_rows():
    x = np.arange(12).reshape(6, 2)
    got = np.asarray(micro_batches(x, 3))
    assert got.shape == (3, 2, 2)
    np.testing.assert_array_equal(got[1], x[[1, 4]])


@pytest.mark.parametrize("kind,labels", [("classification", 2), ("tagging", 3)])
def test_fine_tuning_with_micro_batches_makes_the_same_update(kind, labels):
    model = build_model(STUDENT, kind, labels)
    params = init_params(model, jax.random.key(0))
    tx = optax.sgd(1.0)
    batch, updates, losses = _batch(kind), [], []
    for n in (1, 2, 3):
        step = make_supervised_step(model, tx, kind, grad_accum=n)
        state, m = step(TrainState.create(jax.tree.map(jnp.copy, params), tx), batch, jax.random.key(1))
        updates.append(_delta(state, params))
        losses.append(float(m["loss_sum"] / m["loss_count"]))
    for n in (1, 2):
        assert _gap(updates[n], updates[0]) < 1e-5
        assert losses[n] == pytest.approx(losses[0], rel=1e-5)


@pytest.mark.parametrize("kind,labels,crf", [("classification", 2, False), ("tagging", 3, True)])
def test_distillation_with_micro_batches_makes_the_same_update(kind, labels, crf):
    teacher = build_model(TEACHER, kind, labels)
    t_params = init_params(teacher, jax.random.key(2))
    student = build_model(STUDENT, kind, labels, crf=crf)
    params = init_params(student, jax.random.key(3))
    tx = optax.sgd(1.0)
    batch = dict(_batch(kind), original=np.array([1, 0, 1, 1, 0, 0], np.float32))  # hard labels: originals only
    tags = ("O", "B-X", "I-X") if crf else ()
    updates = []
    for n in (1, 2, 3):
        step = make_train_step(student, teacher, tx, kind, LossConfig(hard_weight=0.5), (0, 2), "all", tags,
                               grad_accum=n)
        state, _ = step(TrainState.create(jax.tree.map(jnp.copy, params), tx), batch, jax.random.key(1), t_params)
        updates.append(_delta(state, params))
    for n in (1, 2):
        assert _gap(updates[n], updates[0]) < 1e-5


def test_grad_accum_must_divide_the_batch_and_the_supernet_takes_none():
    with pytest.raises(UserError, match="--grad-accum: 3 must be >= 1 and divide --batch-size 16"):
        LoopConfig(batch_size=16, grad_accum=3)
    with pytest.raises(UserError, match="--grad-accum"):
        SupernetConfig(task="sst2", teacher="minilm", loop=LoopConfig(batch_size=16, grad_accum=2))
    with pytest.raises(UserError, match="--grad-accum: takes prediction-layer distillation only"):
        DistillConfig(loss=LossConfig(hidden_weight=1.0), loop=LoopConfig(batch_size=16, grad_accum=2))
