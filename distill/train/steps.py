"""Train state and the pure train steps (supervised fine-tuning, distillation).

Steps are module-level pure functions; fixed settings (model, optimizer, loss
name) are bound with `functools.partial` and the result is jitted once with
the state donated. The dropout key is `fold_in(rng, state.step)`, so no RNG
is carried around the loop.

`grad_accum` n > 1 computes a step's gradient over n micro-batches in turn (a `lax.scan`; micro-batch m
holds rows m, m + n, m + 2n, ..., so each one spreads over the devices a batch is split across) and
applies one update: the memory of a batch n times smaller, the update of the whole batch. The gradient
is exactly the whole batch's: each micro-batch's loss sums are divided by the whole batch's counts
(fine-tuning's example or token count; each distillation term's, from `term_counts`, as transformers
passes `num_items_in_batch`). Distillation takes it with the prediction-layer terms only (`DistillConfig`
refuses it with intermediate ones, whose counts need the student's hidden states).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from distill.kd.losses import hard_loss
from distill.kd.objective import PROJ, LossConfig, TeacherOutputs, distill_loss, teacher_forward, term_counts
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


def micro_batches(tree, n: int):
    """`tree`'s arrays (batch on axis 0) as n micro-batches stacked on a new axis 0: micro-batch m holds
    rows m, m + n, ... (each micro-batch spans every device's share of a data-parallel batch)."""
    return jax.tree.map(lambda x: x.reshape((x.shape[0] // n, n) + x.shape[1:]).swapaxes(0, 1), tree)


def accumulate(grad_fn, params, micro: Any, n: int, rng: jax.Array):
    """The sums over the n micro-batches (`micro_batches`) of `grad_fn(params, micro_batch, rng_m) -> (grads,
    aux)` (aux: a tree of arrays to add up), one micro-batch at a time."""
    first = jax.tree.map(lambda x: x[0], micro)
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(grad_fn, params, first, rng))

    def body(carry, xs):
        m, mb = xs
        out = grad_fn(params, mb, jax.random.fold_in(rng, m))
        return jax.tree.map(jnp.add, carry, out), None

    total, _ = jax.lax.scan(body, zeros, (jnp.arange(n), micro))
    return total


def supervised_step(
    state: TrainState, batch: dict, rng: jax.Array, *, model: BertForTask, tx, kind: str, tags: tuple[str, ...] = (),
    grad_accum: int = 1,
):
    """One step of fine-tuning on hard labels (`losses.hard_loss`; `tags`: a CRF tagger's IOB2 tags).
    Returns (state, metric sums)."""
    dropout_rng = jax.random.fold_in(rng, state.step)

    def grad_fn(params, mb, key, mean: bool = False):
        def objective(p):
            out = model.apply({"params": p}, **model_inputs(mb), deterministic=False, rngs={"dropout": key})
            total, count = hard_loss(kind, out, mb, tags)
            return (total / jnp.maximum(count, 1.0) if mean else total), (total, count)

        (_, aux), grads = jax.value_and_grad(objective, has_aux=True)(params)
        return grads, aux

    if grad_accum == 1:  # the batch's mean loss, differentiated directly
        grads, (total, count) = grad_fn(state.params, batch, dropout_rng, mean=True)
    else:  # the sum over micro-batches of their loss sums, over the batch's count
        grads, (total, count) = accumulate(grad_fn, state.params, micro_batches(batch, grad_accum), grad_accum,
                                           dropout_rng)
        grads = jax.tree.map(lambda g: g / jnp.maximum(count, 1.0), grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {
        "loss_sum": total,
        "loss_count": count,
        "grad_norm": optax.tree.norm(grads),
        "examples": jnp.sum(batch["weights"]),
    }
    return TrainState(state.step + 1, params, opt_state), metrics


def make_supervised_step(model: BertForTask, tx, kind: str, tags: tuple[str, ...] = (), grad_accum: int = 1):
    fn = functools.partial(supervised_step, model=model, tx=tx, kind=kind, tags=tuple(tags), grad_accum=grad_accum)
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
    grad_accum: int = 1,
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

    def objective(params, mb, t, key, norms=None):
        student_params = {k: v for k, v in params.items() if k != PROJ}
        out = model.apply(
            {"params": student_params},
            **model_inputs(mb),
            deterministic=False,
            output_hidden_states=need_hidden,
            output_attentions=need_scores,
            rngs={"dropout": key},
        )
        return distill_loss(
            params.get(PROJ), out, t, mb, kind=kind, cfg=loss_cfg, layer_map=layer_map, stage=stage, tags=tags,
            norms=norms,
        )

    if grad_accum == 1:
        (total, terms), grads = jax.value_and_grad(objective, has_aux=True)(state.params, batch, teacher, dropout_rng)
    else:
        norms = term_counts(teacher, batch, kind=kind, cfg=loss_cfg, stage=stage, tags=tags, crf=model.crf)
        grads, (total, terms) = _accumulated(objective, state.params, batch, teacher, norms, grad_accum, dropout_rng)
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


def _accumulated(objective, params, batch: dict, teacher: TeacherOutputs, norms: dict, n: int, rng: jax.Array):
    """(grads, (total, terms)) of `objective(params, batch, teacher, rng, norms)` summed over n micro-batches,
    each divided by the whole batch's counts `norms`: the whole batch's loss and gradient."""
    def grad_fn(p, micro, key):
        (part, terms), grads = jax.value_and_grad(objective, has_aux=True)(p, *micro, key, norms)
        return grads, (part, terms)

    micro = (micro_batches(batch, n), _teacher_micro_batches(teacher, n))
    return accumulate(grad_fn, params, micro, n, rng)


def _teacher_micro_batches(teacher: TeacherOutputs, n: int) -> TeacherOutputs:
    """`micro_batches` of the teacher's outputs (its stacked hidden states (K, B, T, H) split on axis 1)."""
    hidden = None
    if teacher.hidden is not None:
        hidden = micro_batches(teacher.hidden.swapaxes(0, 1), n).swapaxes(1, 2)
    return TeacherOutputs(micro_batches(teacher.logits, n), hidden, micro_batches(teacher.attention, n))


def make_train_step(
    model, teacher_model, tx, kind: str, loss_cfg: LossConfig, layer_map: tuple[int, ...], stage: str,
    tags: tuple[str, ...] = (), grad_accum: int = 1,
):
    """`train_step` with its settings bound, jitted; `tags`: the IOB2 tags constraining a CRF student's hard loss;
    `grad_accum`: micro-batches per step (see the module's docstring)."""
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
        grad_accum=grad_accum,
    )
    return jax.jit(fn, donate_argnums=0)
