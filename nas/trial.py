"""One search trial, run by Ray Tune in a worker process: cost check, then distillation.

`run_trial(config, setup)` turns the sampled config into a student, measures
its cost on the worker's device (cached per architecture and device), and
either rejects it (a constraint is broken: nothing is trained) or distils it
with `distill.run.distill` on the held-out-validation setup the driver prepared.
The teacher's outputs come from the driver's cache: no teacher forward here.
After every evaluation the trial reports to Tune (so the scheduler can stop
it) with the best exported student so far as the trial's checkpoint when it
improved; the final report always carries the best export.

An exception or a non-finite loss fails the trial (Tune records the error)
and the search goes on.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from pathlib import Path

from distill.arch import BertArch
from distill.files import enable_compilation_cache, wait_unlocked, write_json
from distill.run import DistillConfig, distill
from nas.config import Constraints
from nas.cost import CostModel
from nas.space import SearchSpace

REJECTED = -1.0
"""The metric value reported for a rejected candidate (worse than any trained one)."""
OBJECTIVE_LATENCY = "objective_latency_ms"
"""The latency Optuna minimises: the measured one, or a huge value for a rejected or failed candidate,
so that it never looks non-dominated (its real latency stays in `latency_ms`)."""
WORST_LATENCY = 1e9


@dataclasses.dataclass(frozen=True)
class TrialSetup:
    """Everything a trial needs besides its sampled config (pickled to the workers)."""

    base: DistillConfig
    """Teacher already fine-tuned, data and validation slice fixed, loop = one trial's budget."""
    space: SearchSpace
    teacher_arch: BertArch
    head: str
    num_labels: int
    seq_len: int
    constraints: Constraints
    metric: str
    """The name reported to Tune, e.g. `val_accuracy`."""
    task_metric: str
    cache_root: str
    teacher_eval: dict
    """The teacher's metrics on the validation slice (measured once by the driver)."""
    latency_threads: int = 1
    """CPU threads latency is measured on (`nas.cost.CostModel`)."""
    train_features: int | None = None
    """Training features the trials train on (the originals); None: unknown (finals take every copy)."""
    label_rate: float | None = None
    """Teacher forwards per second when labelling (measured, or estimated from the teacher's cost): the
    final runs plan their augmented copies' labelling with it."""
    teacher_latency_ms: float | None = None
    """The teacher's batch-1 latency every speedup divides by (the median of its measurements,
    `nas.oneshot.teacher_samples`); None: the cost model's cached one."""


def sampled_arch(space: SearchSpace, config: dict, teacher: BertArch) -> BertArch | None:
    """The student a trial's config samples; None when Tune kept no (whole) config for it."""
    try:
        return space.arch(config, teacher)
    except (KeyError, TypeError, ValueError):
        return None


def result_trial_id(result) -> str:
    return (result.metrics or {}).get("trial_id") or Path(result.path).name.removeprefix("trial_")


TUNE_KEYS = frozenset({
    "training_iteration", "time_total_s", "time_this_iter_s", "time_since_restore", "iterations_since_restore",
    "timesteps_total", "timesteps_since_restore", "episodes_total", "timestamp", "date", "pid", "hostname",
    "node_ip", "config", "checkpoint_dir_name", "trial_id", "done", "experiment_tag", "experiment_id",
    "should_checkpoint",
})
"""What Tune writes into a trial's metrics by itself (`ray.tune.result.AUTO_RESULT_KEYS` and the trial's
identity): metrics with nothing else hold no report of the trial's."""


def trial_status(result, metric: str, *, has_config: bool, done: str) -> tuple[str, str | None]:
    """(status, error line) of a finished Tune trial; `done` is the status of one with a finite score.

    A trial the time budget stopped before its first report comes back with at most Tune's own bookkeeping
    (its config, if Tune had written it, but none of the trial's metrics, which every report carries): it is
    listed as not started, never as failed nor as a crash of the search.
    """
    m = result.metrics or {}
    score = m.get(metric)
    if result.error is not None:
        return "failed", error_line(result.error)
    if not set(m) - TUNE_KEYS:  # no report of the trial's own
        return "not_started", "the search ended (budget or interruption) before its first report"
    if not has_config:  # metrics without the sampled config: nothing to measure, train or export from it
        return "failed", "Tune kept no configuration for this trial"
    if m.get("status") == "rejected":
        return "rejected", m.get("reason")
    if score is None or score == REJECTED or not math.isfinite(score):
        return "failed", "no finite validation score"
    return done, None


def error_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    cause = [t for t in text if "Error" in t or "error" in t]
    return (cause[-1] if cause else (text[-1] if text else type(error).__name__))[:300]


def trial_distill_config(setup: TrialSetup, sample: dict, student_file: str) -> DistillConfig:
    """The distillation settings of one candidate: the base config with the sampled knobs."""
    base = setup.base
    return dataclasses.replace(
        base,
        student=student_file,
        optimizer=dataclasses.replace(base.optimizer, learning_rate=float(sample["learning_rate"])),
        loss=dataclasses.replace(
            base.loss,
            temperature=float(sample["temperature"]),
            hard_weight=float(sample["hard_weight"]),
            hidden_weight=float(sample["hidden_weight"]),
        ),
        init=dataclasses.replace(base.init, layers=sample["init_layers"]),
    )


def candidate_cost(setup: TrialSetup, arch: BertArch):
    """Analytic size and measured latency of `arch` and its speedup over the teacher (this device)."""
    model = CostModel(setup.head, setup.num_labels, setup.seq_len, threads=setup.latency_threads)
    cost = model.cost(arch)
    if setup.teacher_latency_ms is not None:
        return dataclasses.replace(cost, speedup=setup.teacher_latency_ms / cost.latency_ms)
    return cost.with_speedup(model.cost(setup.teacher_arch))


def _trial_dir(ctx) -> Path:
    """The trial's directory in the search's storage when that is a local (or shared) file system, so a
    resumed search finds the trial's own checkpoints; else the worker's local trial directory."""
    try:
        storage = ctx.get_storage()
        if storage.storage_filesystem.type_name == "local":
            return Path(storage.trial_fs_path)
    except Exception:  # noqa: BLE001 (an older or newer Ray without this internal API)
        pass
    return Path(ctx.get_trial_dir())


def _export_checkpoint(tune, out: Path):
    """A Tune checkpoint of the trial's export (`out/export`: the best step's model so far)."""
    return tune.Checkpoint.from_directory(str(out / "export"))


def _costed(setup: TrialSetup, arch: BertArch):
    """`arch`'s cost, and what every report of its trial carries about it."""
    t0 = time.perf_counter()
    cost = candidate_cost(setup, arch)
    return cost, {
        "cost_seconds": time.perf_counter() - t0, "arch": arch.name, "params": cost.params, "flops": cost.flops,
        "latency_ms": cost.latency_ms, "batch_latency_ms": cost.batch_latency_ms, "speedup": cost.speedup,
    }


def run_trial(config: dict, setup: TrialSetup) -> None:
    from ray import tune

    os.environ.setdefault("BERTNAS_CACHE", setup.cache_root)
    # Trials may share a GPU with each other and the driver: allocate on demand (read at JAX's first use).
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    enable_compilation_cache()
    trial_dir = _trial_dir(tune.get_context())
    arch = setup.space.arch(config, setup.teacher_arch)
    cost, info = _costed(setup, arch)
    violations = setup.constraints.violations(cost)
    if violations:
        tune.report({
            setup.metric: REJECTED, OBJECTIVE_LATENCY: WORST_LATENCY, "status": "rejected",
            "reason": "; ".join(violations), "step": 0, **info,
        })
        return

    out = trial_dir / "run"  # the distillation's own run directory (owned by it: nothing else goes in)
    student_file = trial_dir / "student.json"
    trial_dir.mkdir(parents=True, exist_ok=True)  # Ray creates it only at its next sync or checkpoint
    write_json(student_file, arch.to_dict())
    cfg = trial_distill_config(setup, config, str(student_file))
    resume = out.is_dir()  # a restarted trial: the run continues from its last checkpoint, if it has one
    wait_unlocked(out, seconds=60)  # a resumed search: the killed search's worker may still be ending

    last: dict = {}
    first: list = []  # (step, time) of the first report: training speed is measured from there (compiled)

    def report(step: int, result: dict, best: dict | None) -> None:
        improved = best is not None and best["step"] == step
        now = time.perf_counter()
        first[:] = first or [(step, now)]
        speed = {}
        if step > first[0][0]:  # steps per second, evaluations included (what the final training will see)
            speed["steps_per_second"] = (step - first[0][0]) / (now - first[0][1])
        metrics = {
            setup.metric: best[setup.task_metric] if best is not None else REJECTED,
            OBJECTIVE_LATENCY: cost.latency_ms if best is not None else WORST_LATENCY,
            "current": result[setup.task_metric],
            "step": step,
            "status": "running",
            **info,
            **speed,
        }
        if step >= cfg.loop.max_steps:
            # The final report waits until distill() has written its results and export: the
            # scheduler may stop the trial at any report, which would cut them short.
            last.update(metrics=metrics)
            return
        tune.report(metrics, checkpoint=_export_checkpoint(tune, out) if improved else None)

    results = distill(cfg, out, resume=resume, report=report, teacher_eval=setup.teacher_eval)
    if last:
        # The export holds the best step's model (distill re-exports it after a resume) and goes with the final
        # report whichever step was best: a trial resumed after a SIGKILL may have lost the checkpoint it
        # reported for its best step (the kill came before Tune saved it), and its best step does not recur.
        checkpoint = _export_checkpoint(tune, out) if results.get("export") else None
        tune.report({**last["metrics"], "status": "completed"}, checkpoint=checkpoint)
