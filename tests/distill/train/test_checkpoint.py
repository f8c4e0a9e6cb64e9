"""Orbax checkpoints: round trip, retention (last k + best), restore onto abstract shapes."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from distill.arch import BertArch
from distill.model.bert import build_model, init_params
from distill.train.checkpoint import CheckpointConfig, Checkpointer
from distill.train.optim import OptimizerConfig
from distill.train.steps import TrainState, make_supervised_step
from tasks.errors import UserError

ARCH = BertArch.uniform(2, 36, 3, 37, vocab_size=101, max_position_embeddings=16)


def _trained_state(steps: int = 2):
    model = build_model(ARCH, "classification", 3)
    params = init_params(model, jax.random.key(0))
    tx = OptimizerConfig(learning_rate=1e-2, warmup_ratio=0.0).build(params, 10, ARCH.num_layers)
    state = TrainState.create(params, tx)
    step = make_supervised_step(model, tx, "classification")
    rng = np.random.default_rng(0)
    batch = {
        "input_ids": rng.integers(5, 101, (4, 7)).astype(np.int32),
        "token_type_ids": np.zeros((4, 7), np.int32),
        "attention_mask": np.ones((4, 7), np.int32),
        "labels": np.array([0, 1, 2, 1], np.int32),
        "weights": np.ones(4, np.float32),
    }
    for _ in range(steps):
        state, _ = step(state, batch, jax.random.key(1))
    return model, tx, state, batch


def _same(a, b) -> bool:
    return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_restore_gives_identical_state_and_predictions(tmp_path):
    model, tx, state, batch = _trained_state()
    ckpt = Checkpointer(tmp_path / "ckpt", CheckpointConfig(keep=2))
    ckpt.save(2, state.params, state.opt_state, {"step": 2, "history": [{"accuracy": 0.5}]}, score=0.5)
    ckpt.close()

    # A fresh process would only have a freshly initialised state of the same structure.
    fresh = TrainState.create(init_params(model, jax.random.key(7)), tx)
    restored = Checkpointer(tmp_path / "ckpt")
    params, opt_state, meta = restored.restore(None, fresh.params, fresh.opt_state)
    assert meta == {"step": 2, "history": [{"accuracy": 0.5}]}
    assert _same(params, state.params) and _same(opt_state, state.opt_state)
    assert jax.tree.structure(opt_state) == jax.tree.structure(state.opt_state)
    inputs = (batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
    np.testing.assert_array_equal(
        model.apply({"params": params}, *inputs).logits, model.apply({"params": state.params}, *inputs).logits
    )
    assert _same(restored.restore_params(2, fresh.params), state.params)


def test_keeps_last_k_and_the_best(tmp_path):
    _, _, state, _ = _trained_state(1)
    ckpt = Checkpointer(tmp_path / "ckpt", CheckpointConfig(keep=2))
    for step, score in [(1, 0.5), (2, 0.9), (3, 0.4), (4, 0.3), (5, None)]:
        ckpt.save(step, state.params, state.opt_state, {"step": step}, score=score)
    ckpt.wait()
    assert ckpt.best_step() == 2
    assert ckpt.latest_step() == 5
    assert sorted(ckpt.all_steps()) == [2, 4, 5]
    ckpt.close()


def test_restore_without_checkpoint_is_a_user_error(tmp_path):
    _, _, state, _ = _trained_state(0)
    with pytest.raises(UserError, match="no complete checkpoint"):
        Checkpointer(tmp_path / "empty").restore(None, state.params, state.opt_state)


def test_invalid_config():
    with pytest.raises(UserError):
        CheckpointConfig(keep=0)
    with pytest.raises(UserError):
        CheckpointConfig(every_steps=0)
