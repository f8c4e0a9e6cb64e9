"""The training loop shared by teacher fine-tuning and distillation.

`fit(state, steps, data, cfg, evaluation, runlog)` is handed what to run and on
what, as flax's `examples/sst2/train.py` hands `train_epoch` its `train_step`:

  steps       a `StepSchedule`: the jitted step from each step index on (one
              entry; two for TinyBERT's intermediate-then-prediction stages);
  data        `TrainData`: the training features, batched per epoch
              (length-bucketed or packed, shuffled, resumable mid-epoch), each batch with
              the step's extra arguments (e.g. the teacher's cached outputs);
  evaluation  `Evaluation`: how to score the params, which metric decides the
              best, what to do with a new best (export it) and whom to tell
              after each evaluation (a search trial's report). The params it
              gets are the optimizer's moving average of the weights where it
              keeps one (`optim.averaged`), else the weights.

It shows a progress bar with the loss and examples/s, logs every `log_every`
steps, evaluates at each epoch end and every `eval_every` steps, stops early
after `patience` evaluations without improvement, and saves resumable
checkpoints. A resumed run restores the last complete checkpoint and continues
with the same batch order and learning rate (batch i of epoch e is the same
batch; the schedule is a function of the restored step).
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import logging
import math
import time
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from distill.arch import PRECISIONS
from distill.files import write_json
from distill.kd.objective import TeacherOutputs
from distill.model.sharding import DataParallel, data_parallel
from distill.train.checkpoint import CheckpointConfig, Checkpointer
from distill.train.optim import averaged
from distill.train.profile import summarize
from distill.train.runlog import RunLog
from distill.train.steps import TrainState
from tasks.batching import batches, buckets_for, num_batches
from tasks.errors import UserError
from tasks.features import Features
from tasks.packing import epoch_size, pack_shape, packable, packed_batches, packing_pays, packing_setting, packs_on

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
    profile_steps: int = 0
    """Write a JAX profiler trace of this many steps, from step `PROFILE_FROM` on (compiled by then), to
    OUTPUT/profile (TensorBoard's profile plugin or Perfetto read it); 0: none."""
    max_seconds: float = 0.0
    """Stop, after an evaluation, once this call of `fit` has run this long (0: no bound): a time budget's
    safety net (the schedule is still planned for `max_steps`); not part of a run's key."""
    devices: int = 0
    """Split each batch over this many local devices (0: all of them; `distill.model.sharding`); the
    batch size must be a multiple of it. Not part of a run's key: N devices compute what one does."""
    fsdp: bool = False
    """Split the parameters and optimizer state over the devices too, not only the batch (`--fsdp`;
    `distill.model.sharding`): less memory per device in the train step. The state is still built (and
    restored) on one device before it is split, and evaluation and labelling copy the whole parameters to
    each device, so a model must still fit one device once. Not part of a run's key."""
    grad_accum: int = 1
    """Compute each step's gradient over this many micro-batches in turn (`distill.train.steps`): the memory
    of a batch that many times smaller, one update of the whole batch; `batch_size` must be a multiple.
    Not part of a run's key. Fine-tuning and distillation take it; the supernet's sandwich step does not."""
    attention_dropout: bool = True
    """Dropout on the attention probabilities (at the model's `attention_dropout` rate) in the train step; the
    tools turn it off on GPUs and TPUs by default (`--attention-dropout auto`), where the fused attention
    kernels take none (`distill.model.bert.in_precision`)."""
    precision: str = "fp32"
    """The train step's compute: 'fp32', or 'bf16' (bfloat16 matmul operands with float32 accumulation,
    float32 master weights, optimizer state, softmax, LayerNorm and losses; see
    `distill.model.bert.mixed_matmul`). Evaluation and exports stay float32."""
    packing: str = "off"
    """Pack several examples into each row of a training batch (`tasks.packing`; sentence-level tasks, one
    device, no `grad_accum`): about `batch_size` examples per step on average, one compiled shape, and far
    less padding than length buckets on short sentences. 'on' packs wherever the task and batch size allow
    (`pack_shape`); 'auto' only where packing saves compute over length buckets (`tasks.packing.packing_pays`:
    SST-2 packs, STS-B's long pairs do not); 'off' keeps buckets, as other tasks always do. True and False
    (configs saved before 'auto') read as 'on' and 'off'."""

    def __post_init__(self):
        if self.epochs < 1 and self.max_steps < 1:
            raise UserError("epochs: need epochs >= 1 or max_steps >= 1")
        if self.batch_size < 1:
            raise UserError("batch_size: must be >= 1")
        if self.grad_accum < 1 or self.batch_size % self.grad_accum:
            raise UserError(f"--grad-accum: {self.grad_accum} must be >= 1 and divide --batch-size {self.batch_size}")
        for name in ("eval_every", "patience", "max_steps", "profile_steps", "max_seconds", "devices"):
            if getattr(self, name) < 0:
                raise UserError(f"{name}: must be >= 0, got {getattr(self, name)}")
        if self.checkpoint_every < 1 or self.log_every < 1:
            raise UserError("checkpoint_every and log_every: must be >= 1")
        if self.precision not in PRECISIONS:
            raise UserError(f"precision: {self.precision!r} is not one of {list(PRECISIONS)}")
        object.__setattr__(self, "packing", packing_setting(self.packing))
        if self.packing == "on" and self.grad_accum > 1:
            raise UserError("--packing on: packed batches take no --grad-accum (micro-batches split rows and "
                            "examples apart); turn one of them off")

    def stage(self, **changes) -> LoopConfig:
        """A default loop for a stage this run starts (its teacher's fine-tuning, its data stage) that keeps
        this run's seed, precision, attention dropout, devices and packing; `changes` on top."""
        keep = ("seed", "precision", "attention_dropout", "devices", "fsdp", "packing")
        return LoopConfig(**{k: getattr(self, k) for k in keep}, **changes)

    def mesh(self) -> DataParallel:
        """The devices this loop trains on (`distill.model.sharding.data_parallel`); a batch size they do not
        divide is the user's error."""
        return data_parallel(self.batch_size, self.devices, fsdp=self.fsdp, grad_accum=self.grad_accum)

    def resolved(self, train: Features) -> LoopConfig:
        """This loop with 'auto' packing decided for `train` ('on' where `packs`, else 'off'): what a run
        records, keys and resumes with once its training features are known."""
        if self.packing != "auto":
            return self
        return dataclasses.replace(self, packing="on" if self.packs(train) else "off")

    def packing_key(self) -> dict:
        """`packing` in the cache and run keys: nothing when off and True when on (the keys of runs from before
        'auto' stay valid), 'auto' when auto."""
        return {} if self.packing == "off" else {"packing": True if self.packing == "on" else "auto"}

    def packs(self, train: Features) -> bool:
        """Whether this loop's batches of `train` are packed: `packing` 'on', a sentence-level task and a batch
        larger than what one row holds (`tasks.packing.pack_shape`); 'auto', where that also saves compute
        (`packing_pays`), on one CPU device (`packs_on`) and without `grad_accum`."""
        if self.packing == "auto":
            return (self.grad_accum == 1 and packs_on(jax.default_backend(), self.mesh().size)
                    and packing_pays(train, self.batch_size))
        return self.packing == "on" and packable(train) and pack_shape(train, self.batch_size) is not None

    def epochs_of(self, train: Features) -> Epochs:
        """How many batches each epoch of `train` has and where the run stops: packed epochs have as many
        batches as their packing makes (it depends on the seed and the epoch), bucketed ones all the same."""
        if not len(train):
            raise UserError("no training examples")
        if self.packs(train):
            shape = pack_shape(train, self.batch_size)
            size = lambda e: epoch_size(train, shape, self.seed, e)  # noqa: E731
        else:
            per_epoch = num_batches(train, self.batch_size, buckets_for(train))
            size = lambda e: per_epoch  # noqa: E731
        sizes = [size(e) for e in range(self.epochs)] if not self.max_steps else []
        while sum(sizes) < self.max_steps:  # as many epochs as the steps reach
            sizes.append(size(len(sizes)))
        return Epochs(tuple(sizes), self.max_steps or sum(sizes))

    def total_steps(self, train: Features) -> int:
        """The steps the run makes (`max_steps`, else all epochs' batches)."""
        return self.epochs_of(train).total


@dataclasses.dataclass(frozen=True)
class Epochs:
    """The batches of each epoch of a run (`LoopConfig.epochs_of`) and its total steps."""

    sizes: tuple[int, ...]
    total: int

    @property
    def starts(self) -> tuple[int, ...]:
        """The first step of each epoch, then the step after the last one."""
        out = [0]
        for n in self.sizes:
            out.append(out[-1] + n)
        return tuple(out)

    def of(self, step: int) -> int:
        """The epoch step `step` (0-based) falls in (the last one past the end)."""
        return min(bisect.bisect_right(self.starts, step) - 1, len(self.sizes) - 1)

    def fraction(self, step: int) -> float:
        """Epochs done after `step` steps (1.5: half of the second)."""
        e = self.of(max(step - 1, 0))
        return e + (step - self.starts[e]) / self.sizes[e]


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


def devices_record(cfg: LoopConfig, train: Features | None = None) -> dict:
    """What a run's results.json says it ran on: the device count and kind, the mesh, the precision and
    whether its batches of `train` were packed (without `train`: whether `packing` was asked for)."""
    packed = cfg.packing != "off" if train is None else cfg.packs(train)
    return {**cfg.mesh().describe(), "precision": cfg.precision, "packing": packed}


class DivergedError(UserError, FloatingPointError):
    """The loss became NaN or infinite: the settings' fault (learning rate), not a bug; one line, exit 2."""


PROFILE_FROM = 5
"""The first profiled step (`LoopConfig.profile_steps`): after the first steps' compilation."""

StepFn = Callable[..., tuple[TrainState, dict]]
"""`step(state, batch, rng, *extra) -> (state, metrics)`: metrics `loss_sum`, `loss_count`, `grad_norm` and
optional `<term>_sum` / `<term>_count` pairs, each logged as a mean."""


@dataclasses.dataclass(frozen=True)
class StepSchedule:
    """The jitted step to run from each step index on: `((0, step),)`, or `((0, a), (k, b))` to switch at k."""

    entries: tuple[tuple[int, StepFn], ...]

    def __post_init__(self):
        starts = [start for start, _ in self.entries]
        if not starts or starts[0] != 0 or starts != sorted(starts):
            raise ValueError(f"StepSchedule: entries must start at step 0, in order; got starts {starts}")

    @classmethod
    def single(cls, step: StepFn) -> StepSchedule:
        return cls(((0, step),))

    def at(self, i: int) -> StepFn:
        return next(step for start, step in reversed(self.entries) if start <= i)


@dataclasses.dataclass(frozen=True)
class TrainData:
    """Training features and, per batch, the step's extra arguments (`extras(batch) -> (batch, args)`)."""

    features: Features
    extras: Callable[[dict], tuple[dict, tuple]] | None = None

    def epoch(self, cfg: LoopConfig, epoch: int, start: int) -> Iterator[tuple[dict, tuple]]:
        """Epoch `epoch`'s batches from batch `start` on: the same order for the same seed and epoch."""
        if cfg.packs(self.features):
            shape = pack_shape(self.features, cfg.batch_size)
            made = packed_batches(self.features, shape, shuffle=True, seed=cfg.seed, epoch=epoch, start=start)
        else:
            made = batches(self.features, cfg.batch_size, buckets=buckets_for(self.features), shuffle=True,
                           seed=cfg.seed, epoch=epoch, start=start)
        for batch in made:
            yield self.extras(batch) if self.extras is not None else (batch, ())


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """How a run is scored and what follows a score.

    `evaluate(params) -> metrics` on the evaluation split; `metric` names the one to maximise;
    `keep_best(params, best)` gets `best = {"step", metrics...}` on each improvement (an export);
    `report(step, result, best)`, when given, runs after each evaluation's checkpoint (a search trial
    tells Tune there, which may end the process). Evaluations and early stopping start at step `start`.
    """

    evaluate: Callable[[Any], dict]
    metric: str
    keep_best: Callable[[Any, dict], None]
    report: Callable[[int, dict, dict | None], None] | None = None
    start: int = 0


def fit(
    state: TrainState,
    steps: StepSchedule,
    data: TrainData,
    cfg: LoopConfig,
    evaluation: Evaluation,
    runlog: RunLog,
    *,
    lr_at: Callable[[int], Any],
    run_key: str = "",
    resume: bool = False,
    desc: str = "train",
) -> tuple[TrainState, Progress]:
    """Train `state` on `data`; returns the final state and the run's progress (best result, history).

    Checkpoints go to `runlog.dir / "checkpoints"`. `run_key` identifies the run's settings: resuming
    a checkpoint saved under another key fails. `lr_at(step)` is the logged learning rate.
    """
    run = _Run(runlog, cfg, evaluation, Checkpointer(runlog.dir / "checkpoints",
                                                    CheckpointConfig(every_steps=cfg.checkpoint_every)),
               cfg.mesh())
    try:
        if cfg.packs(data.features) and run.dp.size > 1:
            raise UserError("--packing on: packed batches run on one device of one process; pass --devices 1 "
                            "(without --workers) or --packing off")
        state = run.dp.place_state(run.restore(state, run_key, resume))
        epochs = cfg.epochs_of(data.features)
        stop = run.progress.step >= epochs.total or run.patience_spent()
        for epoch in range(epochs.of(run.progress.step), len(epochs.sizes)):
            if stop:
                break
            state, stop = _epoch(run, state, steps, data, epochs, epoch, lr_at, desc)
    except BaseException:
        with contextlib.suppress(Exception):  # the error that ends the run is the one to report
            run.end_profile(None, failed=True)
            run.ckpt.close()
        raise
    run.end_profile(state)
    run.ckpt.close()
    return state, run.progress


def _epoch(run: _Run, state: TrainState, steps: StepSchedule, data: TrainData, epochs: Epochs, epoch: int, lr_at,
           desc: str):
    """One epoch (or its rest, after a resume); returns the state and whether the run is over."""
    cfg, progress = run.cfg, run.progress
    total, start = epochs.total, epochs.starts[epoch]
    first = progress.step - start
    bar = tqdm(data.epoch(cfg, epoch, first), initial=first, total=min(epochs.sizes[epoch], total - start),
               desc=f"{desc} epoch {epoch + 1}/{len(epochs.sizes)}", unit="batch", mininterval=2.0)
    dp = run.dp
    rng = dp.replicate(jax.random.key(cfg.seed))
    stop, t_last = False, time.perf_counter()
    for batch, extra in bar:
        run.profile(progress.step, state)
        state, m = steps.at(progress.step)(state, dp.shard(batch), rng, *(run.place(e) for e in extra))
        progress.step += 1
        progress.examples_seen += int(batch["weights"].sum())
        if progress.step % cfg.log_every == 0 or progress.step == total:
            now = time.perf_counter()
            progress.train_seconds += now - t_last
            t_last = now
            _log_train(run.runlog, bar, progress, jax.device_get(dp.local(m)), float(lr_at(progress.step)))
        end_of_epoch = progress.step == epochs.starts[epoch + 1] or progress.step >= total
        late = bool(cfg.max_seconds) and time.perf_counter() - run.started > cfg.max_seconds
        due = end_of_epoch or late or (cfg.eval_every and progress.step % cfg.eval_every == 0)
        if due and (progress.step >= run.evaluation.start or progress.step >= total or late):
            progress.train_seconds += time.perf_counter() - t_last
            run.end_profile(state)
            stop = run.evaluate(state, epochs) or progress.step >= total or late
            if late:
                log.warning("%s: stopped at step %d of %d, its %.0f s are spent", desc, progress.step, total,
                            cfg.max_seconds)
            t_last = time.perf_counter()
        elif progress.step % cfg.checkpoint_every == 0:
            run.end_profile(state)
            run.checkpoint(state)
        if stop:
            break
    bar.close()
    return state, stop


def place_extra(dp: DataParallel, extra: Any, placed: dict) -> Any:
    """A step's extra argument on the devices: the teacher's outputs for the batch split with it (their
    stacked hidden states (K, B, T, H) on axis 1); anything else (the teacher's parameters, the same object
    every step) placed as the state is, once (`placed` keeps each object with its placement, by id)."""
    if isinstance(extra, TeacherOutputs):
        return TeacherOutputs(dp.shard(extra.logits), dp.shard(extra.hidden, axis=1), dp.shard(extra.attention))
    if id(extra) not in placed:  # the object is kept with its placement, so its id stays its own
        placed[id(extra)] = (extra, dp.place_state(extra))
    return placed[id(extra)][1]


@dataclasses.dataclass
class _Run:
    """What one `fit` call shares between its stages: the log, settings, checkpointer and progress."""

    runlog: RunLog
    cfg: LoopConfig
    evaluation: Evaluation
    ckpt: Checkpointer
    dp: DataParallel
    progress: Progress = dataclasses.field(default_factory=Progress)
    tracing: bool = False
    started: float = dataclasses.field(default_factory=time.perf_counter)
    placed: dict = dataclasses.field(default_factory=dict)

    def place(self, extra: Any) -> Any:
        return place_extra(self.dp, extra, self.placed)

    def profile(self, step: int, state: TrainState) -> None:
        """Before step `step`: start the profiler trace at `PROFILE_FROM`, stop it `profile_steps` later."""
        n = self.cfg.profile_steps
        if n and not self.tracing and step == PROFILE_FROM:
            jax.profiler.start_trace(str(self.runlog.dir / "profile"))
            self.tracing = True
        elif self.tracing and step >= PROFILE_FROM + n:
            self.end_profile(state)

    def end_profile(self, state: TrainState | None, failed: bool = False) -> None:
        """Stop the profiler trace, if one runs, once the steps so far have finished: after its steps, or
        earlier, before an evaluation or checkpoint (which would count as training time), or at the end of
        the run. The traced steps' ops go to `profile/ops.json`; not after an error (`failed`: the state may
        be gone, donated by the step that failed), where the trace is kept as it is."""
        if not self.tracing:
            return
        if not failed:
            jax.block_until_ready(state)
        jax.profiler.stop_trace()
        self.tracing = False
        traced = self.progress.step - PROFILE_FROM
        log.info("profiler trace of steps %d-%d in %s", PROFILE_FROM, PROFILE_FROM + traced - 1,
                 self.runlog.dir / "profile")
        if not failed and traced > 0:
            self.summarize_profile(traced)

    def summarize_profile(self, steps: int) -> None:
        """`profile/ops.json`: the traced steps' XLA ops summed (`distill.train.profile`); the biggest kinds
        logged. A trace it cannot read is logged, not raised: the run goes on."""
        out = self.runlog.dir / "profile"
        try:
            summary = summarize(out, steps)
            write_json(out / "ops.json", summary)
        except Exception as e:  # a diagnostic: never the reason a training run fails
            log.warning("could not summarize the profiler trace in %s: %s: %s", out, type(e).__name__, e)
            return
        kinds = ", ".join(f"{k['kind']} {100 * k['share']:.0f}%" for k in summary.get("kinds", [])[:6])
        log.info("traced ops: %.1f ms busy per step (%s); %s; all in %s", summary.get("busy_ms_per_step", 0.0),
                 summary.get("source") or summary.get("error"), kinds, out / "ops.json")

    def restore(self, state: TrainState, run_key: str, resume: bool) -> TrainState:
        """The state to start from: the last complete checkpoint when resuming (same `run_key` only)."""
        self.progress = Progress(run_key=run_key)
        if resume and self.ckpt.latest_step() is not None:
            if self.ckpt.restore_meta(None).get("run_key", "") != run_key:
                raise UserError(
                    f"{self.runlog.dir}: its checkpoints come from a run with other settings (config, teacher or "
                    "data); resume with the same command, or pick another --output"
                )
            params, opt_state, meta = self.ckpt.restore(None, state.params, state.opt_state)
            self.progress = Progress(**meta)
            log.info("resumed from %s at step %d", self.ckpt.directory, self.progress.step)
            return TrainState(jnp.asarray(meta["step"], jnp.int32), params, opt_state)
        if resume:
            log.warning("%s: no checkpoint to resume from; starting from the beginning", self.ckpt.directory)
        return state

    def patience_spent(self) -> bool:
        return bool(self.cfg.patience and self.progress.evals_since_best >= self.cfg.patience)

    def checkpoint(self, state: TrainState, score: float | None = None) -> None:
        # One process of several saves host copies (orbax takes no process-local arrays there).
        local = (lambda t: jax.device_get(self.dp.local(t))) if self.dp.multiprocess else self.dp.local
        self.ckpt.save(self.progress.step, local(state.params), local(state.opt_state),
                       dataclasses.asdict(self.progress), score=score)

    def evaluate(self, state: TrainState, epochs: Epochs) -> bool:
        """Evaluate, keep the best, checkpoint, report; True when early stopping says stop."""
        ev, progress = self.evaluation, self.progress
        params = averaged(self.dp.local(state.params), self.dp.local(state.opt_state))  # each process its own copy
        result = ev.evaluate(params)
        result["epoch"] = round(epochs.fraction(progress.step), 3)
        progress.history.append({"step": progress.step, **result})
        self.runlog.log(progress.step, result, prefix="dev_")
        log.info("step %d dev %s", progress.step, fmt(result))
        improved = result[ev.metric] > progress.best_score
        if improved:
            progress.best_score, progress.evals_since_best = result[ev.metric], 0
            progress.best = {"step": progress.step, **result}
            ev.keep_best(params, progress.best)
        else:
            progress.evals_since_best += 1
        # Only a new best carries a score, so the checkpoint kept as best is `progress.best` (ties go to the
        # earlier step, as in the export).
        self.checkpoint(state, result[ev.metric] if improved else None)
        if ev.report is not None:
            self.ckpt.wait()  # the caller may end the process (a stopped search trial): no half-written save
            ev.report(progress.step, result, progress.best)
        return self.patience_spent()


def _log_train(runlog: RunLog, bar, progress: Progress, m: dict, lr: float) -> None:
    if not np.isfinite(m["loss_sum"]):
        raise DivergedError(f"non-finite loss at step {progress.step}; lower the learning rate")
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
