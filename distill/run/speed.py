"""What a distillation run's steps and evaluations cost, measured on its own batches before it starts.

A time-bound run (the search's finals) must fix its step count before it trains: the learning-rate schedule
decays to zero at the last step. An estimate from FLOPs misses the per-step costs that do not shrink with
the student (the embedding table's gradient and update, the host's batch assembly), so a small student's
planned steps ran out at half its time (session 14: 3L-192 estimated at 14 steps/s, 30 measured) while a
larger one overran. `training_speed` runs the step the run will run, on the run's own first batches
(packing, teacher outputs cached or online, precision as the run has them), and one evaluation, and times them. The
evaluation's compilation is then served to the run by the persistent cache; the step's is not (its schedule's
step count, which this measurement decides, is compiled into it): a few seconds more per run.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import time
from pathlib import Path

import jax

from distill.model.bert import build_model
from distill.run.config import DistillConfig
from distill.run.distillation import batch_extras, prepare, step_schedule, student_init, student_params
from distill.run.evaluation import evaluate_model
from distill.train.loop import TrainData, place_extra
from distill.train.steps import TrainState

MOST_BATCHES = 200
"""At most this many batches are drawn to find `steps` timed ones (the others compiled a new shape)."""
UNTIMED_PER_SHAPE = 2
"""The first steps of each batch shape that are not timed: the first compiles; the second may too (the
state it gets is the first step's output, placed as the device placed it, not as initialised)."""


@dataclasses.dataclass(frozen=True)
class Speed:
    """Measured costs of a run: training steps per second (compilations excluded) and one evaluation."""

    steps_per_second: float
    eval_seconds: float
    timed_steps: int

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def training_speed(cfg: DistillConfig, out: str | Path, *, steps: int = 30, use_cache: bool = True) -> Speed:
    """Time `steps` training steps of `cfg`'s run, each with its batch's assembly (the first
    `UNTIMED_PER_SHAPE` steps of each batch shape compile, untimed), and its evaluation (the second call:
    the first compiles). Reads
    the teacher, its cached outputs and the student's initialisation as the run will; `out` is the run's
    directory, written only when the teacher still has to be fine-tuned (as `distill` would)."""
    prep = prepare(cfg, Path(out), resume=False, use_cache=use_cache)
    cfg = dataclasses.replace(cfg, loop=cfg.loop.resolved(prep.train))
    teacher_params = jax.device_put(prep.teacher.params)
    extras = batch_extras(cfg, prep, teacher_params, use_cache)
    model = build_model(prep.student, prep.task.kind, prep.task.num_labels, crf=prep.crf)
    params = student_init(cfg, prep.task, prep.teacher, prep.student, prep.train)
    total = cfg.loop.total_steps(prep.train)
    tx = cfg.optimizer.build(params, total, prep.student.num_layers, prep.student.groups)
    step = step_schedule(cfg, prep, model, tx, total).at(total - 1)  # the step most of the run takes
    state, seconds, timed = _timed_steps(cfg, step, TrainState.create(params, tx), TrainData(prep.train, extras),
                                         steps)

    def evaluate():
        t0 = time.perf_counter()
        evaluate_model(model, student_params(state.params), prep.task, prep.dev, prep.dev_ex, cfg.eval_batch_size)
        return time.perf_counter() - t0

    evaluate()  # compiles
    return Speed(steps_per_second=timed / max(seconds, 1e-9), eval_seconds=evaluate(), timed_steps=timed)


def _timed_steps(cfg: DistillConfig, step, state: TrainState, data: TrainData, steps: int):
    """Run the step on the run's first batches: (state, seconds of the timed steps, how many were timed)."""
    dp = cfg.loop.mesh()
    state = dp.place_state(state)
    rng = dp.replicate(jax.random.key(cfg.loop.seed))
    placed, seen, seconds, timed = {}, collections.Counter(), 0.0, 0
    batches = itertools.islice(itertools.chain.from_iterable(data.epoch(cfg.loop, e, 0) for e in itertools.count()),
                               MOST_BATCHES)
    t0 = time.perf_counter()  # each step's time includes fetching its batch and its teacher outputs
    for batch, extra in batches:
        shape = tuple(sorted((k, v.shape) for k, v in batch.items()))
        state, metrics = step(state, dp.shard(batch), rng, *(place_extra(dp, e, placed) for e in extra))
        jax.block_until_ready(metrics)
        now = time.perf_counter()
        if seen[shape] >= UNTIMED_PER_SHAPE:
            seconds += now - t0
            timed += 1
        seen[shape] += 1
        t0 = now
        if timed >= steps:
            break
    if not timed:
        raise RuntimeError(f"training_speed: no batch shape came {UNTIMED_PER_SHAPE + 1} times in {MOST_BATCHES} "
                           "batches")
    return state, seconds, timed
