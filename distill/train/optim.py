"""Optimizers and schedules, chosen by name from a frozen config.

`OptimizerConfig.build(params, total_steps, num_layers)` returns an optax
transformation with: gradient clipping, warm-up then decay, AdamW or LAMB
(no weight decay on biases and LayerNorm), optional layer-wise learning-rate
decay and frozen embeddings, and optionally an exponential moving average of
the weights kept in the optimizer state (`averaged` reads it), which is what
is evaluated and exported.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

from tasks.errors import UserError

OPTIMIZERS = ("adamw", "lamb")
SCHEDULES = ("linear", "cosine", "constant")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    name: str = "adamw"
    """'adamw' or 'lamb'."""
    learning_rate: float = 1e-4
    weight_decay: float = 0.01
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-6
    schedule: str = "linear"
    """Decay after warm-up: 'linear' (to 0), 'cosine' or 'constant'."""
    warmup_ratio: float = 0.1
    """Fraction of the total steps spent warming up linearly from 0."""
    max_grad_norm: float = 1.0
    """Global-norm gradient clipping; 0 disables it."""
    layer_lr_decay: float = 1.0
    """Layer-wise LR decay: layer i of L gets lr * decay**(L - i), embeddings decay**(L + 1)."""
    freeze_embeddings: bool = False
    ema: float = 0.0
    """Decay of an exponential moving average of the weights (0: none), kept in the optimizer state (so
    checkpoints and resumes carry it); evaluations and exports take the average instead of the weights.
    Step t uses min(ema, (1 + t) / (10 + t)), so the first steps' average is not the initial weights'. A
    two-stage distillation keeps one average over both stages."""

    def __post_init__(self):
        if self.name not in OPTIMIZERS:
            raise UserError(f"optimizer: unknown {self.name!r}; valid: {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise UserError(f"schedule: unknown {self.schedule!r}; valid: {', '.join(SCHEDULES)}")
        if not self.learning_rate > 0:
            raise UserError(f"learning_rate: must be > 0, got {self.learning_rate}")
        if not 0 <= self.warmup_ratio < 1:
            raise UserError(f"warmup_ratio: must be in [0, 1), got {self.warmup_ratio}")
        if not 0 < self.layer_lr_decay <= 1:
            raise UserError(f"layer_lr_decay: must be in (0, 1], got {self.layer_lr_decay}")
        if not 0 <= self.ema < 1:
            raise UserError(f"ema: must be in [0, 1), got {self.ema}")

    def key_settings(self) -> dict[str, Any]:
        """The fields, for the cache and run keys: without `ema` when it is off, so the keys of runs and
        cached teachers and supernets from before the field stay valid."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if not self.ema:
            del d["ema"]
        return d

    def schedule_fn(self, total_steps: int) -> optax.Schedule:
        warmup = int(self.warmup_ratio * total_steps)
        decay_steps = max(total_steps - warmup, 1)
        peak = self.learning_rate
        after = {
            "linear": optax.linear_schedule(peak, 0.0, decay_steps),
            "cosine": optax.cosine_decay_schedule(peak, decay_steps),
            "constant": optax.constant_schedule(peak),
        }[self.schedule]
        if warmup == 0:  # no warm-up: the first step already uses the peak rate
            return after
        return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), after], [warmup])

    def build(
        self, params: Any, total_steps: int, num_layers: int, groups: tuple[int, ...] | None = None
    ) -> optax.GradientTransformation:
        """The optimizer for `params`; `groups` (`BertArch.groups`) when layers share parameters."""
        lr = self.schedule_fn(total_steps)
        decay_mask = _decay_mask(params)
        if self.name == "adamw":
            opt = optax.adamw(lr, self.b1, self.b2, self.eps, weight_decay=self.weight_decay, mask=decay_mask)
        else:
            opt = optax.lamb(lr, self.b1, self.b2, self.eps, weight_decay=self.weight_decay, mask=decay_mask)
        parts = [clip_by_global_norm(self.max_grad_norm)] if self.max_grad_norm > 0 else []
        parts.append(opt)
        if self.layer_lr_decay < 1.0:
            parts.append(scale_by_tree(layer_lr_scales(params, num_layers, self.layer_lr_decay, groups)))
        tx = optax.chain(*parts)
        if self.freeze_embeddings:
            labels = traverse_util.path_aware_map(
                lambda path, _: "frozen" if path[0] == "embeddings" else "train", params
            )
            tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
        if self.ema:
            tx = optax.chain(tx, average_weights(self.ema))
        return tx


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
    """`optax.clip_by_global_norm` (the same empty state, so checkpoints of either restore into the other)
    that scales every gradient by one scalar, `min(1, max_norm / norm)`. optax selects between each
    gradient and its quotient by the norm, a division XLA does not copy into the optimizer's several
    consumers of the clipped gradient, so it writes the clipped gradients out in full and reads them
    back: on the teacher (22.7M parameters, 2 CPU cores) that pass took 21 of the 63 ms of an AdamW
    update. A product by a scalar fuses into its consumers (42 ms)."""

    def update(updates, state, params=None):
        del params
        scale = jnp.minimum(1.0, max_norm / optax.tree.norm(updates))
        return jax.tree.map(lambda t: t * scale.astype(t.dtype), updates), state

    return optax.GradientTransformation(optax.init_empty_state, update)


class AverageState(NamedTuple):
    """`average_weights`' state: the updates applied so far and the average of the weights after each."""

    count: jax.Array
    average: Any


def average_weights(decay: float) -> optax.GradientTransformation:
    """A last link of an optimizer chain that passes its updates through unchanged and keeps an exponential
    moving average of the weights they lead to (`params + updates`, what `optax.apply_updates` gives), in
    float32, at decay min(`decay`, (1 + t) / (10 + t)) for the t-th update (t from 0; TensorFlow's
    `ExponentialMovingAverage` with `num_updates`). Polyak averaging as BERT fine-tuning uses it against
    the spread between seeds; `averaged` reads it."""

    def init(params):
        # A copy, never the weights' own buffer: a step donates both.
        return AverageState(jnp.zeros((), jnp.int32), jax.tree.map(lambda p: jnp.array(p, jnp.float32, copy=True),
                                                                   params))

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("average_weights needs the parameters")
        t = state.count.astype(jnp.float32)
        d = jnp.minimum(decay, (1.0 + t) / (10.0 + t))
        average = jax.tree.map(lambda a, p, u: d * a + (1.0 - d) * (p + u).astype(jnp.float32),
                               state.average, params, updates)
        return updates, AverageState(state.count + 1, average)

    return optax.GradientTransformation(init, update)


def _average_state(opt_state: Any) -> AverageState | None:
    found = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, AverageState))
             if isinstance(s, AverageState)]
    return found[0] if found else None


def keeps_average(opt_state: Any) -> bool:
    """Whether the optimizer state holds a moving average of the weights (`average_weights`)."""
    return _average_state(opt_state) is not None


def averaged(params: Any, opt_state: Any) -> Any:
    """The weights to evaluate and export: the moving average in `opt_state` (`average_weights`), cast to
    `params`' dtypes, where the optimizer keeps one; else `params` themselves."""
    state = _average_state(opt_state)
    if state is None:
        return params
    return jax.tree.map(lambda a, p: a.astype(p.dtype), state.average, params)


def _decay_mask(params: Any) -> Any:
    """Weight decay on matrices only: not on biases, LayerNorm scales, or LayerNorm biases."""
    return traverse_util.path_aware_map(lambda path, _: path[-1] not in ("bias", "scale"), params)


def layer_lr_scales(params: Any, num_layers: int, decay: float, groups: tuple[int, ...] | None = None) -> Any:
    """Per-parameter LR multipliers for layer-wise decay (the head and pooler get 1).

    With cross-layer sharing (`groups`: each layer's parameter group), `encoder/layer_{g}` is a group,
    which takes the rate of its deepest layer.
    """
    deepest = {g: i for i, g in enumerate(groups)} if groups is not None else None

    def scale(path, _):
        if path[0] == "embeddings":
            return decay ** (num_layers + 1)
        if path[0] == "encoder":
            layer = int(path[1].split("_")[1])
            if deepest is not None:
                layer = deepest[layer]
            return decay ** (num_layers - layer)
        return 1.0

    return traverse_util.path_aware_map(scale, params)


def scale_by_tree(scales: Any) -> optax.GradientTransformation:
    """Multiply each update by a fixed per-parameter factor."""

    def update(updates, state, params=None):
        del params
        return jax.tree.map(lambda u, s: u * s, updates, scales), state

    return optax.GradientTransformation(lambda _: optax.EmptyState(), update)
