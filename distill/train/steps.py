"""Train state and the pure train steps (supervised fine-tuning, distillation).

Steps are module-level pure functions; fixed settings (model, optimizer, loss
name) are bound with `functools.partial` and the result is jitted once with
the state donated. The dropout key is `fold_in(rng, state.step)`, so no RNG
is carried around the loop.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from distill.kd.losses import hard_loss
from distill.kd.objective import PROJ, LossConfig, TeacherOutputs, distill_loss, teacher_forward
from distill.model.bert import BertForTask
from distill.model.infer import model_inputs


@struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any

    @classmethod
    def create(cls, params, tx: optax.GradientTransformation) -> TrainState:
        return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def supervised_step(
    state: TrainState, batch: dict, rng: jax.Array, *, model: BertForTask, tx, kind: str, tags: tuple[str, ...] = ()
):
    """One step of fine-tuning on hard labels (`losses.hard_loss`; `tags`: a CRF tagger's IOB2 tags).
    Returns (state, metric sums)."""
    dropout_rng = jax.random.fold_in(rng, state.step)

    def objective(params):
        out = model.apply({"params": params}, *model_inputs(batch), deterministic=False, rngs={"dropout": dropout_rng})
        total, count = hard_loss(kind, out, batch, tags)
        return total / jnp.maximum(count, 1.0), (total, count)

    (_, (total, count)), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {
        "loss_sum": total,
        "loss_count": count,
        "grad_norm": optax.tree.norm(grads),
        "examples": jnp.sum(batch["weights"]),
    }
    return TrainState(state.step + 1, params, opt_state), metrics


def make_supervised_step(model: BertForTask, tx, kind: str, tags: tuple[str, ...] = ()):
    fn = functools.partial(supervised_step, model=model, tx=tx, kind=kind, tags=tuple(tags))
    return jax.jit(fn, donate_argnums=0)


def train_step(
    state: TrainState,
    batch: dict,
    rng: jax.Array,
    teacher: TeacherOutputs | Any,
    *,
    model: BertForTask,
    teacher_model: BertForTask | None,
    tx,
    kind: str,
    loss_cfg: LossConfig,
    layer_map: tuple[int, ...],
    stage: str = "all",
    tags: tuple[str, ...] = (),
):
    """One distillation step; only the student (and its hidden projection) is trained.

    `teacher` is either the teacher's cached outputs for this batch
    (`TeacherOutputs`: the teacher never runs) or the teacher's parameters
    (it runs forward, without dropout or gradient, on the batch). Returns
    (state, metrics) with each loss term as an unweighted sum and count.
    """
    if not isinstance(teacher, TeacherOutputs):
        teacher = teacher_forward(teacher_model, teacher, batch, loss_cfg, layer_map)
    dropout_rng = jax.random.fold_in(rng, state.step)
    need_hidden = stage != "prediction" and bool(loss_cfg.hidden_weight or loss_cfg.embedding_weight)
    need_scores = stage != "prediction" and bool(loss_cfg.attention_weight)

    def objective(params):
        student_params = {k: v for k, v in params.items() if k != PROJ}
        out = model.apply(
            {"params": student_params},
            *model_inputs(batch),
            deterministic=False,
            output_hidden_states=need_hidden,
            output_attentions=need_scores,
            rngs={"dropout": dropout_rng},
        )
        return distill_loss(
            params.get(PROJ), out, teacher, batch, kind=kind, cfg=loss_cfg, layer_map=layer_map, stage=stage, tags=tags
        )

    (total, terms), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {
        "loss_sum": total * jnp.sum(batch["weights"]),
        "loss_count": jnp.sum(batch["weights"]),
        "grad_norm": optax.tree.norm(grads),
        "examples": jnp.sum(batch["weights"]),
        **{f"{k}_sum": s for k, (s, _) in terms.items()},
        **{f"{k}_count": c for k, (_, c) in terms.items()},
    }
    return TrainState(state.step + 1, params, opt_state), metrics


def make_train_step(
    model, teacher_model, tx, kind: str, loss_cfg: LossConfig, layer_map: tuple[int, ...], stage: str,
    tags: tuple[str, ...] = (),
):
    """`train_step` with its settings bound, jitted; `tags`: the IOB2 tags constraining a CRF student's hard loss."""
    fn = functools.partial(
        train_step,
        model=model,
        teacher_model=teacher_model,
        tx=tx,
        kind=kind,
        loss_cfg=loss_cfg,
        layer_map=tuple(layer_map),
        stage=stage,
        tags=tuple(tags),
    )
    return jax.jit(fn, donate_argnums=0)
