"""Supernet training by the sandwich rule (BigNAS, once-for-all; DynaBERT's width- and depth-adaptive
distillation).

Each step trains, on the same batch, the largest and the smallest sub-network
of the space and `num_sampled` random ones (`SubnetChoices.sandwich`: a
function of the step index, so a resumed run trains the same ones). Each
sub-network distils from the teacher's cached outputs (`distill_loss`: soft
logits, plus gold labels with `hard_weight`); their gradients are summed into
one optimizer update of the supernet.

Compilation. One jitted function per step would compile once per combination
of sampled shapes, which never repeats. So `subnet_grads` (module-level,
pure) is jitted per sub-network *shape* (its layers and hidden size) and batch
length, with the widths as mask arrays (`distill.kd.supernet.masked`): a space
with 4 layer counts and 5 hidden sizes compiles at most 20 gradient functions
per length bucket, whatever the per-layer heads and FFN sizes; `apply_update`
is jitted once.
A masked sub-network costs what its shape's widest member costs.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from distill.arch import BertArch
from distill.kd.objective import LossConfig, TeacherOutputs, distill_loss
from distill.kd.supernet import SubnetChoices, masked, padded, width_masks
from distill.model.bert import build_model, in_precision
from distill.model.infer import model_inputs
from distill.train.steps import TrainState

ROLES = ("largest", "smallest")
"""Names of the first sub-networks of a sandwich (the rest are 'sampled')."""


def subnet_grads(
    params,
    batch: dict,
    rng: jax.Array,
    teacher: TeacherOutputs,
    head_mask: jax.Array,
    ffn_mask: jax.Array,
    *,
    supernet: BertArch,
    shape: tuple[tuple[int, ...], int],
    head: str,
    num_labels: int,
    kind: str,
    loss_cfg: LossConfig,
    precision: str = "fp32",
    attention_dropout: bool = True,
):
    """(gradient of the sub-network's distillation loss w.r.t. the supernet, (loss, example count))."""
    model = in_precision(build_model(padded(supernet, shape).arch(supernet), head, num_labels), precision,
                         attention_dropout=attention_dropout)

    def objective(p):
        out = model.apply(
            {"params": masked(p, supernet, shape, head_mask, ffn_mask)},
            **model_inputs(batch),
            deterministic=False,
            rngs={"dropout": rng},
        )
        return distill_loss(None, out, teacher, batch, kind=kind, cfg=loss_cfg, layer_map=shape[0])

    (total, _), grads = jax.value_and_grad(objective, has_aux=True)(params)
    return grads, (total, jnp.sum(batch["weights"]))


_subnet_grads = jax.jit(
    subnet_grads,
    static_argnames=("supernet", "shape", "head", "num_labels", "kind", "loss_cfg", "precision", "attention_dropout"),
)


@jax.jit
def _add(a, b):
    return jax.tree_util.tree_map(jnp.add, a, b)


def apply_update(state: TrainState, grads, *, tx) -> tuple[TrainState, jax.Array]:
    """One optimizer update with summed gradients; returns the state and the gradient norm."""
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    return TrainState(state.step + 1, optax.apply_updates(state.params, updates), opt_state), optax.tree.norm(grads)


def sandwich_step(
    state: TrainState,
    batch: dict,
    rng: jax.Array,
    teacher: TeacherOutputs,
    *,
    update,
    supernet: BertArch,
    choices: SubnetChoices,
    num_sampled: int,
    seed: int,
    head: str,
    num_labels: int,
    kind: str,
    loss_cfg: LossConfig,
    precision: str = "fp32",
    attention_dropout: bool = True,
):
    """One sandwich step; metrics as the loop wants them (`loss` is the sum of the sub-networks' losses,
    with `largest`, `smallest` and `sampled` each logged as a mean)."""
    step = int(state.step)  # one host sync per step: the sandwich is a function of the step index
    subnets = choices.sandwich(supernet, step, seed, num_sampled)
    # Host rows go to the device once for all sub-networks; a batch the loop has sharded stays as it is (across
    # processes it is not this process's to move).
    batch = jax.tree.map(lambda x: x if isinstance(x, jax.Array) else jax.device_put(x), batch)
    step_rng = jax.random.fold_in(rng, step)
    total_grads, losses = None, []
    for k, sub in enumerate(subnets):
        head_mask, ffn_mask = width_masks(sub, supernet)
        grads, loss = _subnet_grads(
            state.params, batch, jax.random.fold_in(step_rng, k), teacher, head_mask, ffn_mask,
            supernet=supernet, shape=sub.shape, head=head, num_labels=num_labels, kind=kind, loss_cfg=loss_cfg,
            precision=precision, attention_dropout=attention_dropout,
        )
        total_grads = grads if total_grads is None else _add(total_grads, grads)
        losses.append(loss)
    state, grad_norm = update(state, total_grads)
    count = losses[0][1]
    metrics = {"loss_sum": sum(t for t, _ in losses) * count, "loss_count": count, "grad_norm": grad_norm,
               "examples": count}
    roles = ROLES + ("sampled",) * num_sampled
    for role in dict.fromkeys(roles):
        mine = [t for r, (t, _) in zip(roles, losses) if r == role]
        metrics[f"{role}_sum"] = sum(mine) * count
        metrics[f"{role}_count"] = count * len(mine)
    return state, metrics


def make_sandwich_step(
    supernet: BertArch,
    choices: SubnetChoices,
    tx,
    *,
    head: str,
    num_labels: int,
    kind: str,
    loss_cfg: LossConfig,
    num_sampled: int = 2,
    seed: int = 0,
    precision: str = "fp32",
    attention_dropout: bool = True,
):
    """`sandwich_step` with its settings bound: `step(state, batch, rng, teacher_outputs) -> (state, metrics)`."""
    if loss_cfg.intermediate:
        raise ValueError("supernet training distils predictions only (hidden sizes differ between sub-networks)")
    choices.check(supernet)
    update = jax.jit(functools.partial(apply_update, tx=tx), donate_argnums=0)
    return functools.partial(
        sandwich_step, update=update, supernet=supernet, choices=choices, num_sampled=num_sampled, seed=seed,
        head=head, num_labels=num_labels, kind=kind, loss_cfg=loss_cfg, precision=precision,
        attention_dropout=attention_dropout,
    )
