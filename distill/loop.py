"""The training loop shared by teacher fine-tuning and distillation.

`fit` runs epochs of length-bucketed, shuffled batches through a jitted step,
shows a progress bar with the loss and examples/s, logs every `log_every`
steps, evaluates on dev at each epoch end and every `eval_every` steps, keeps
the best model (through `on_best`), stops early after `patience` evaluations
without improvement, and saves resumable checkpoints. A resumed run restores
the last complete checkpoint and continues with the same batch order and
learning rate (batch i of epoch e is the same batch; the schedule is a
function of the restored step).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from distill.checkpoint import CheckpointConfig, Checkpointer
from distill.runlog import RunLog
from distill.train import TrainState
from tasks.batching import batches, default_buckets, num_batches
from tasks.errors import UserError
from tasks.features import Features

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    epochs: int = 3
    max_steps: int = 0
    """Stop after this many steps (0: run all epochs)."""
    batch_size: int = 32
    eval_every: int = 0
    """Evaluate on dev every this many steps, besides each epoch's end (0: epochs only)."""
    patience: int = 0
    """Stop after this many evaluations without improvement (0: never)."""
    checkpoint_every: int = 500
    """Save a resumable checkpoint every this many steps (and at each evaluation)."""
    log_every: int = 50
    seed: int = 0

    def __post_init__(self):
        if self.epochs < 1 and self.max_steps < 1:
            raise UserError("epochs: need epochs >= 1 or max_steps >= 1")
        if self.batch_size < 1:
            raise UserError("batch_size: must be >= 1")
        for name in ("eval_every", "patience", "max_steps"):
            if getattr(self, name) < 0:
                raise UserError(f"{name}: must be >= 0, got {getattr(self, name)}")
        if self.checkpoint_every < 1 or self.log_every < 1:
            raise UserError("checkpoint_every and log_every: must be >= 1")

    def total_steps(self, train: Features) -> tuple[int, int]:
        """(total steps, batches per epoch)."""
        per_epoch = num_batches(train, self.batch_size, default_buckets(train.max_length))
        if per_epoch == 0:
            raise UserError("no training examples")
        return self.max_steps or per_epoch * self.epochs, per_epoch


@dataclasses.dataclass
class Progress:
    """Where a run is; saved as the checkpoint's JSON item, so resuming restores it."""

    step: int = 0
    best: dict | None = None
    best_score: float = -math.inf
    evals_since_best: int = 0
    history: list = dataclasses.field(default_factory=list)
    examples_seen: int = 0
    train_seconds: float = 0.0
    run_key: str = ""
    """A hash of the settings that define the run; a resume with other settings is refused."""


def refuse_overwrite(out: Path, resume: bool) -> None:
    ckpts = out / "checkpoints"
    if not resume and ckpts.is_dir() and any(ckpts.iterdir()):
        raise UserError(f"{out}: holds checkpoints of an earlier run; pass --resume to continue it or pick another --output")


def fit(
    state: TrainState,
    step_for: Callable[[int], Callable],
    train: Features,
    cfg: LoopConfig,
    *,
    out: Path,
    runlog: RunLog,
    lr_at: Callable[[int], Any],
    evaluate: Callable[[Any], dict],
    metric: str,
    on_best: Callable[[Any, dict], None],
    prepare: Callable[[dict], tuple[dict, tuple]] = lambda batch: (batch, ()),
    on_eval: Callable[[int, dict, dict | None], None] | None = None,
    evaluate_from: int = 0,
    run_key: str = "",
    resume: bool = False,
    desc: str = "train",
) -> tuple[TrainState, Progress]:
    """Train `state` on `train`; returns the final state and the run's progress (best result, history).

    `step_for(step)` gives the jitted step to run at a step (a run may switch
    steps, e.g. TinyBERT's two stages); it is called as
    `step(state, batch, rng, *args)` with `batch, args = prepare(batch)`
    (e.g. the teacher's outputs for the batch) and returns (state, metrics)
    with metrics `loss_sum`, `loss_count`, `grad_norm` and optional
    `<term>_sum` / `<term>_count` pairs, each logged as a mean.
    `on_best(params, best)` gets `best` = {"step", metrics...}; after each
    evaluation's checkpoint, `on_eval(step, result, best)` with `best` as for `on_best` (e.g. a
    search trial's report, which may stop the run there). Evaluations
    (and early stopping) start at step `evaluate_from`. `run_key` identifies
    the run's settings: resuming a checkpoint saved under another key fails.
    """
    buckets = default_buckets(train.max_length)
    total, per_epoch = cfg.total_steps(train)
    epochs = math.ceil(total / per_epoch)
    rng = jax.random.key(cfg.seed)
    ckpt = Checkpointer(out / "checkpoints", CheckpointConfig(every_steps=cfg.checkpoint_every))
    progress = Progress(run_key=run_key)
    if resume and ckpt.latest_step() is not None:
        meta = ckpt.restore_meta(None)
        if meta.get("run_key", "") != run_key:
            ckpt.close()
            raise UserError(
                f"{out}: its checkpoints come from a run with other settings (config, teacher or data); "
                "resume with the same command, or pick another --output"
            )
        params, opt_state, meta = ckpt.restore(None, state.params, state.opt_state)
        state = TrainState(jnp.asarray(meta["step"], jnp.int32), params, opt_state)
        progress = Progress(**meta)
        log.info("resumed from %s at step %d", ckpt.directory, progress.step)
    elif resume:
        log.warning("%s: no checkpoint to resume from; starting from the beginning", ckpt.directory)

    def checkpoint(score=None):
        ckpt.save(progress.step, state.params, state.opt_state, dataclasses.asdict(progress), score=score)

    def run_eval() -> bool:
        """Evaluate on dev, keep the best; True when early stopping says stop."""
        result = evaluate(state.params)
        result["epoch"] = round(progress.step / per_epoch, 3)
        progress.history.append({"step": progress.step, **result})
        runlog.log(progress.step, result, prefix="dev_")
        log.info("step %d dev %s", progress.step, fmt(result))
        score = result[metric]
        improved = score > progress.best_score
        if improved:
            progress.best_score, progress.evals_since_best = score, 0
            progress.best = {"step": progress.step, **result}
            on_best(state.params, progress.best)
        else:
            progress.evals_since_best += 1
        # Only a new best carries a score, so the checkpoint kept as best is
        # `progress.best` (ties go to the earlier step, as in the export).
        checkpoint(score if improved else None)
        if on_eval is not None:
            ckpt.wait()  # the caller may end the process (a stopped search trial): no half-written save
            on_eval(progress.step, result, progress.best)
        return bool(cfg.patience and progress.evals_since_best >= cfg.patience)

    stop = progress.step >= total or bool(cfg.patience and progress.evals_since_best >= cfg.patience)
    try:
        for epoch in range(progress.step // per_epoch, epochs):
            if stop:
                break
            first = progress.step - epoch * per_epoch
            bar = tqdm(
                batches(train, cfg.batch_size, buckets=buckets, shuffle=True, seed=cfg.seed, epoch=epoch, start=first),
                initial=first,
                total=min(per_epoch, total - epoch * per_epoch),
                desc=f"{desc} epoch {epoch + 1}/{epochs}",
                unit="batch",
                mininterval=2.0,
            )
            t_last = time.perf_counter()
            for batch in bar:
                batch, args = prepare(batch)
                state, m = step_for(progress.step)(state, batch, rng, *args)
                progress.step += 1
                progress.examples_seen += int(batch["weights"].sum())
                if progress.step % cfg.log_every == 0 or progress.step == total:
                    now = time.perf_counter()
                    progress.train_seconds += now - t_last
                    t_last = now
                    _log_train(runlog, bar, progress, jax.device_get(m), float(lr_at(progress.step)))
                end_of_epoch = progress.step % per_epoch == 0 or progress.step >= total
                due = end_of_epoch or (cfg.eval_every and progress.step % cfg.eval_every == 0)
                if due and (progress.step >= evaluate_from or progress.step >= total):
                    progress.train_seconds += time.perf_counter() - t_last
                    stop = run_eval() or progress.step >= total
                    t_last = time.perf_counter()
                elif progress.step % cfg.checkpoint_every == 0:
                    checkpoint()
                if stop:
                    break
            bar.close()
    finally:
        ckpt.close()
    return state, progress


def _log_train(runlog: RunLog, bar, progress: Progress, m: dict, lr: float) -> None:
    if not np.isfinite(m["loss_sum"]):
        raise FloatingPointError(f"non-finite loss at step {progress.step}; lower the learning rate")
    speed = progress.examples_seen / max(progress.train_seconds, 1e-9)
    loss = float(m["loss_sum"] / max(m["loss_count"], 1))
    bar.set_postfix(loss=f"{loss:.4f}", ex_s=f"{speed:.0f}")
    terms = {
        k[: -len("_sum")]: float(m[k] / max(m[k[: -len("_sum")] + "_count"], 1))
        for k in m
        if k.endswith("_sum") and k != "loss_sum"
    }
    runlog.log(
        progress.step,
        {"loss": loss, "grad_norm": float(m["grad_norm"]), "learning_rate": lr, "examples_per_second": speed, **terms},
        prefix="train_",
    )


def fmt(result: dict) -> str:
    return ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items())
