"""The supernet strategy of the search (`--strategy supernet`): one weight-sharing supernet trained for the
task, hundreds of candidates scored with its weights, the best at each target speedup trained further.

After the preparation `nas.tune` shares with the trials strategy (the fine-tuned teacher, the validation
slice, the teacher's labels and cost), `nas.tune` runs these stages:

  1. `train_stage`: the supernet (`distill.run.train_supernet`), trained by the sandwich rule on the
     search's training features and validated on its validation slice, in OUTPUT/supernet (cached: a
     second search on the same task and space starts from it);
  2. `fit_latency`: a design set of sub-networks (the largest, the smallest and random ones) measured
     by the cost model (cached per device) and a `LatencyPredictor` fitted on them, with its
     leave-one-out error; the teacher is measured again before and after them, and every speedup of the
     search divides by the median of its latencies (`record_teacher_latency`);
  3. Ray Tune + Optuna over the space (multi-objective: validation metric up, latency down): a trial
     (`score_trial`) takes its candidate's weights from the supernet and runs it stage by stage
     (`distill.model.infer.staged_logits`: each layer compiled once per width), scores it on the
     validation slice and predicts its latency; a candidate that breaks a constraint is rejected unscored
     (`score_rows` turns the results into rows);
  4. `measure_front`: every candidate on the front is measured for real and the front taken again,
     until all its members' latencies are measured; then `nas.local` searches around each target (single
     mutations of the best candidates near it, scored as in 3) and the front is measured again;
  5. `train_targets`: for each target speedup, the most accurate measured candidate at or above it is
     distilled further from its supernet weights (`InitConfig.source`), on augmented data, in a share of
     the time left that grows with its distance from the teacher (`final_weights`).

Rows have `kind` 'supernet' (a supernet estimate: the candidate with the supernet's weights, untrained)
or 'final' (a trained student), and `latency_source` 'measured' or 'predicted'.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from distill.arch import BertArch
from distill.files import enable_compilation_cache, read_record, write_json
from distill.model.store import load_bert
from distill.run import (
    DistillConfig,
    LossConfig,
    OptimizerConfig,
    Subnet,
    SubnetChoices,
    SupernetConfig,
    distill,
    export_subnet,
    score_subnets,
    scoring_batches,
    train_supernet,
)
from nas import report
from nas.config import Constraints, SearchConfig
from nas.cost import Cost, CostModel, LatencyPredictor, device_name
from nas.final import budget_final, final_config
from nas.space import KNOBS, SearchSpace
from nas.trial import (
    OBJECTIVE_LATENCY,
    REJECTED,
    WORST_LATENCY,
    TrialSetup,
    result_trial_id,
    sampled_arch,
    trial_status,
)
from tasks.features import encode
from tasks.registry import saved_task

log = logging.getLogger(__name__)

SUPERNET = "supernet"


# ------------------------------------------------------------------ 1. the supernet
SUPERNET_SHARE = 0.35
"""The supernet's share of the time left after the preparation (the finals keep `final_share`; scoring,
the latency design set and the front's measurements get the rest)."""
COMPILE_SECONDS = 2.0
"""One compilation of a sandwich gradient (a sub-network shape at a length bucket) on 2 CPU cores: 100 of
them took 182 s in a 200-step SST-2 supernet run (session 8)."""
SANDWICH_OVERHEAD = 1.5
"""A sandwich step's seconds over its sub-networks' FLOPs at the teacher's training speed (four gradient
calls, their sum and the host sync of the step index cost more than one fused step of the same FLOPs)."""
LENGTH_BUCKETS = 8
"""At most this many bucket lengths per feature set (`tasks.batching.fit_buckets`)."""
NUM_SAMPLED = 2
"""Random sub-networks per sandwich step besides the largest and the smallest (`SupernetConfig.num_sampled`)."""
MIN_SECONDS = 120.0
"""The supernet's time when the budget has (almost) none left for it: a warning, and a short supernet."""
SUPERNET_PLAN = "supernet_plan.json"
TEACHER_LATENCY = "teacher_latency.json"
"""OUTPUT/teacher_latency.json: the teacher's latencies, their median and the device (a resumed search on
the same device divides by the same)."""


def plan_supernet(cfg: SearchConfig, choices: SubnetChoices, teacher: BertArch, seq_len: int, seconds: float,
                  teacher_step_seconds: float, *, packed: bool = False) -> dict:
    """The supernet's steps in `seconds`: each sandwich step costs its sub-networks' (padded) FLOPs at the
    teacher's training speed, after one compilation per sub-network shape and length bucket (one batch
    shape when `packed`: `SearchConfig.packing` on a sentence-level task); at most
    `cfg.supernet_steps`, rounded down to two significant digits (so that plans of nearly equal time give
    equal runs, which the supernet cache serves), and at least 50 (or the cap)."""
    if seconds < MIN_SECONDS:
        log.warning("supernet: %.0f s left in the budget; training it for %.0f s anyway", seconds, MIN_SECONDS)
        seconds = MIN_SECONDS
    sandwiches = [choices.sandwich(teacher, i, cfg.seed, NUM_SAMPLED) for i in range(16)]
    sampled = np.mean([sum(_padded_flops(s, teacher, seq_len) for s in subs) for subs in sandwiches])
    step_seconds = max(1e-6, teacher_step_seconds) * SANDWICH_OVERHEAD * sampled / teacher.flops(seq_len)
    compilations = len(choices.layers) * len(choices.hidden) * (1 if packed else LENGTH_BUCKETS)
    fit = max(0, int((seconds - compilations * COMPILE_SECONDS) / step_seconds))
    steps = min(cfg.supernet_steps, max(50, _two_digits(fit)))
    return {"steps": steps, "seconds": seconds, "step_seconds": step_seconds, "compilations": compilations,
            "teacher_step_seconds": teacher_step_seconds}


def _two_digits(n: int) -> int:
    scale = 10 ** max(0, len(str(n)) - 2)
    return n // scale * scale


def teacher_step_seconds(out: Path, cost: Cost, batch_size: int) -> float:
    """A teacher train step's seconds at `batch_size`: from this search's teacher fine-tuning (or the cached
    run it copied), else three forwards at the teacher's measured batch latency (one latency thread)."""
    results = out / "teacher_finetune" / "results.json"
    if results.is_file():
        ex_s = json.loads(results.read_text()).get("train_examples_per_second")
        if isinstance(ex_s, (int, float)) and ex_s > 0:
            return batch_size / ex_s
    return 3 * max(cost.batch_latency_ms, 1e-3) / 1000 * batch_size / cost.batch_size


def supernet_plan(cfg: SearchConfig, choices: SubnetChoices, teacher: BertArch, seq_len: int, cost: Cost, out: Path,
                  *, seconds: float, resume: bool, packed: bool = False) -> dict:
    """The planned supernet run (OUTPUT/supernet_plan.json; a resumed search keeps it, so its supernet
    resumes under the same key). A search from before the plan resumes its supernet as it was started:
    `cfg.supernet_steps` steps, no time bound."""
    path = out / SUPERNET_PLAN
    if resume and path.is_file():
        return json.loads(path.read_text())
    if resume and (out / SUPERNET).is_dir():
        return {"steps": cfg.supernet_steps, "seconds": 0.0, "unplanned": True}
    plan = plan_supernet(cfg, choices, teacher, seq_len, seconds, teacher_step_seconds(out, cost, cfg.batch_size),
                         packed=packed)
    write_json(path, plan)
    log.info("supernet: %d sandwich steps planned in %.0f s (%.2f s a step, %d compilations at most)",
             plan["steps"], seconds, plan["step_seconds"], plan["compilations"])
    return plan


def supernet_config(cfg: SearchConfig, base: DistillConfig, choices: SubnetChoices, plan: dict) -> SupernetConfig:
    """The supernet training of a search: its data, validation slice and seed, the plan's steps, and its
    seconds as the loop's bound (the estimate's safety net)."""
    steps = plan["steps"]
    every = max(1, steps // 4)
    return SupernetConfig(
        task=cfg.task, teacher=base.teacher, data_dir=base.data_dir, data=base.data, choices=choices,
        num_sampled=NUM_SAMPLED,
        loss=LossConfig(hard_weight=0.5), augment=base.augment, optimizer=OptimizerConfig(learning_rate=1e-4),
        loop=base.loop.stage(epochs=1, max_steps=steps, batch_size=cfg.batch_size, eval_every=every,
                             checkpoint_every=every, log_every=min(50, every), max_seconds=plan["seconds"]),
        eval_batch_size=base.eval_batch_size, train_limit=cfg.train_limit, dev_limit=cfg.dev_limit,
        validation=cfg.validation, teacher_epochs=cfg.teacher_epochs,
    )


def train_stage(cfg: SearchConfig, base: DistillConfig, choices: SubnetChoices, plan: dict, out: Path, *,
                resume: bool) -> dict:
    """Stage 1: the supernet in OUTPUT/supernet (its results; `supernet_dir` is the model)."""
    run = out / SUPERNET
    return train_supernet(supernet_config(cfg, base, choices, plan), run, resume=resume and run.is_dir())


# ------------------------------------------------------------------ 2. latency
def design_set(choices: SubnetChoices, space: SearchSpace, teacher: BertArch, n: int, seed: int) -> list[BertArch]:
    """`n` distinct students of the space to measure: the largest, the smallest, then random ones."""
    rng = np.random.default_rng(seed)
    subs = [choices.largest(teacher), choices.smallest(teacher)]
    archs: dict[BertArch, None] = {}
    for attempt in range(20 * n):
        sub = subs[attempt] if attempt < len(subs) else choices.sample(teacher, rng)
        archs[sub.arch(teacher).replace(head_size=space.resolved_head_size(teacher))] = None
        if len(archs) >= n:
            break
    return list(archs)


def fit_latency(cfg: SearchConfig, setup: TrialSetup, space: SearchSpace, choices: SubnetChoices,
                teacher_ms: list[float], *, again: bool) -> tuple[LatencyPredictor, list[float]]:
    """Stage 2: measure the design set (cached per device), with the teacher measured `again` before and
    after it in the same child process, and fit the predictor that screens candidates; returns it and the
    teacher's latencies (`teacher_ms` and these), whose median every speedup of the search divides by."""
    model = CostModel(setup.head, setup.num_labels, setup.seq_len, threads=setup.latency_threads)
    archs = design_set(choices, space, setup.teacher_arch, cfg.latency_design, cfg.seed)
    costs, more = model.costs_beside(archs, setup.teacher_arch) if again else (model.costs(archs), [])
    predictor = LatencyPredictor.fit(archs, [c.latency_ms for c in costs], setup.seq_len)
    teacher_ms = [*teacher_ms, *more]
    log.info("latency predictor: fitted on %d measured candidates, leave-one-out error %.1f%%; teacher %.2f ms "
             "(median of %s)", len(archs), 100 * predictor.error, np.median(teacher_ms),
             ", ".join(f"{t:.2f}" for t in teacher_ms))
    return predictor, teacher_ms


def teacher_samples(out: Path, first_ms: float, *, resume: bool, scored: bool = False) -> tuple[list[float], bool]:
    """The teacher latencies the search starts from, and whether to measure the teacher again: a resumed
    search's recorded ones (`TEACHER_LATENCY`, on this device), as they were; a resumed search that scored
    candidates (`scored`: its Tune experiment restores) or planned finals (the trials strategy's one too)
    without a record of this device (one from before the record, or moved to another machine), the one
    latency (`first_ms`) its speedups were divided by; else `first_ms`, and measured again."""
    record = _teacher_record(out / TEACHER_LATENCY) if resume else None
    if record is not None and record.get("device") == device_name():
        return [float(t) for t in record["samples_ms"]], False
    if resume and (scored or any((out / "final").glob("*/plan.json")) or (out / "final" / "plan.json").is_file()):
        return [first_ms], False
    return [first_ms], True


def _teacher_record(path: Path) -> dict | None:
    """`TEACHER_LATENCY` as recorded, or None where there is none or it cannot be read (warned: a damaged
    record is treated as a missing one, and the search's own next record replaces it)."""
    return read_record(path, _check_teacher_record, "teacher latency record",
                       "ignored, the teacher is measured again where the search has divided by none yet")


def _check_teacher_record(record: Any) -> None:
    samples = record["samples_ms"]
    if not (isinstance(samples, list) and samples
            and all(isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) and t > 0
                    for t in samples)):
        raise ValueError(f"samples_ms must be a non-empty list of positive latencies, got {samples!r}")


def record_teacher_latency(out: Path, samples_ms: list[float]) -> dict:
    """Write `TEACHER_LATENCY` (the samples, their median, this device) before any speedup is taken; the
    record's latency and samples."""
    latency = {"latency_ms": float(np.median(samples_ms)), "samples_ms": [float(t) for t in samples_ms]}
    write_json(out / TEACHER_LATENCY, {**latency, "device": device_name()})
    return latency


# ------------------------------------------------------------------ 3. scoring trials
@dataclasses.dataclass(frozen=True)
class ScoreSetup:
    """Everything a scoring trial needs besides its sampled config (pickled to the workers)."""

    space: SearchSpace
    choices: SubnetChoices
    teacher_arch: BertArch
    supernet_dir: str
    task: str
    val_examples: tuple
    constraints: Constraints
    metric: str
    task_metric: str
    predictor: LatencyPredictor
    teacher_latency_ms: float
    head: str
    num_labels: int
    seq_len: int
    eval_batch_size: int
    cache_root: str
    precision: str = "fp32"
    """Compute of the scoring forwards (`SearchConfig.precision`)."""


_LOADED: dict[str, tuple[Any, BertArch, Any, Any, list[dict]]] = {}
"""A worker's supernet (host parameters, architecture), task, encoded validation slice and its scoring
batches, by supernet directory, batch size and slice size (Tune reuses workers)."""


def _supernet(setup: ScoreSetup):
    key = f"{setup.supernet_dir}|{setup.eval_batch_size}|{len(setup.val_examples)}"
    if key not in _LOADED:
        supernet = load_bert(setup.supernet_dir)
        task = saved_task(supernet.meta, setup.task)  # a generic task's labels and columns: the supernet's
        features = encode(task, list(setup.val_examples), supernet.tokenizer)
        _LOADED.clear()
        _LOADED[key] = (jax.device_get(supernet.params), supernet.arch, task, features,
                        scoring_batches(features, setup.eval_batch_size))
    return _LOADED[key]


def predicted_cost(setup: ScoreSetup, arch: BertArch) -> Cost:
    latency = setup.predictor.predict(arch)
    return Cost(arch.name, arch.num_params(setup.head, setup.num_labels),
                arch.flops(setup.seq_len, setup.head, setup.num_labels), setup.seq_len, latency_ms=latency,
                latency_ms_p95=latency, batch_latency_ms=math.nan, throughput=math.nan,
                speedup=setup.teacher_latency_ms / latency)


def score_candidate(config: dict, setup: ScoreSetup) -> dict:
    """A candidate's report: its validation score with the supernet's weights and its predicted cost, or
    a rejection (nothing scored) when the predicted cost breaks a constraint."""
    arch = setup.space.arch(config, setup.teacher_arch)
    cost = predicted_cost(setup, arch)
    info = {"arch": arch.name, "params": cost.params, "flops": cost.flops, "latency_ms": cost.latency_ms,
            "speedup": cost.speedup}
    violations = setup.constraints.violations(cost)
    if violations:
        return {setup.metric: REJECTED, OBJECTIVE_LATENCY: WORST_LATENCY, "status": "rejected",
                "reason": "; ".join(violations), **info}
    t0 = time.perf_counter()
    params, supernet, task, features, rows = _supernet(setup)
    sub = setup.choices.subnet(supernet, arch.hidden_size, arch.num_heads, arch.ffn_sizes)
    (m,) = score_subnets(params, supernet, [sub], task, features, list(setup.val_examples),
                         setup.eval_batch_size, precision=setup.precision, rows=rows)
    return {setup.metric: m[setup.task_metric], OBJECTIVE_LATENCY: cost.latency_ms, "status": "scored",
            "score_seconds": time.perf_counter() - t0, **info}


def score_trial(config: dict, setup: ScoreSetup) -> None:
    """The Tune trainable of the supernet strategy: one report per candidate."""
    from ray import tune

    os.environ.setdefault("BERTNAS_CACHE", setup.cache_root)
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    enable_compilation_cache()
    tune.report(score_candidate(config, setup))


def score_rows(results, setup: ScoreSetup) -> tuple[list[dict], dict[str, dict]]:
    """The scored candidates' rows, in Tune's order, and each one's sampled config by trial id."""
    rows, configs = [], {}
    for result in results:
        config, m = result.config or {}, result.metrics or {}
        tid = result_trial_id(result)
        has_config = sampled_arch(setup.space, config, setup.teacher_arch) is not None
        status, error = trial_status(result, setup.metric, has_config=has_config, done="scored")
        rows.append(estimate_row(tid, m, config, status=status, error=error, metric=setup.metric,
                                 seconds=m.get("time_total_s")))
        if has_config:
            configs[tid] = config
    return rows, configs


def estimate_row(trial_id: str, report: dict, config: dict, *, status: str, error: str | None, metric: str,
                 seconds: float | None) -> dict:
    """A candidate's row with the supernet's weights (`kind` 'supernet', its latency predicted until
    measured), from its report (`score_candidate`'s) and sampled config; a score only where `status` is
    'scored'. Scoring trials' rows (`score_rows`) and the local search's (`nas.local`) alike."""
    return {"trial_id": trial_id, "kind": "supernet", "latency_source": "predicted", "steps": 0,
            "seconds": seconds, "pareto": False,
            **{k: report.get(k) for k in ("arch", "params", "flops", "latency_ms", "speedup")},
            **{k: config.get(k) for k in KNOBS},
            "status": status, "error": error, "val_metric": report.get(metric) if status == "scored" else None}


# ------------------------------------------------------------------ 4. the front, measured
def measure_front(rows: list[dict], configs: dict[str, dict], setup: TrialSetup, space: SearchSpace,
                  constraints: Constraints, teacher_latency_ms: float) -> dict:
    """Measure the front's predicted latencies until the front holds measured ones only; the predictor's
    error against those measurements."""
    model = CostModel(setup.head, setup.num_labels, setup.seq_len, threads=setup.latency_threads)
    errors = []
    while todo := [r for r in report.pareto_front(rows) if r.get("latency_source") == "predicted"]:
        costs = model.costs([space.arch(configs[r["trial_id"]], setup.teacher_arch) for r in todo])  # one child
        for r, cost in zip(todo, costs):
            cost = dataclasses.replace(cost, speedup=teacher_latency_ms / cost.latency_ms)
            errors.append(abs(r["latency_ms"] - cost.latency_ms) / cost.latency_ms)
            r.update(predicted_latency_ms=r["latency_ms"], latency_ms=cost.latency_ms,
                     batch_latency_ms=cost.batch_latency_ms, speedup=cost.speedup, latency_source="measured")
            if violations := constraints.violations(cost):
                r.update(status="rejected", error="measured: " + "; ".join(violations), val_metric=None)
    return {"measured": len(errors), "error": float(np.mean(errors)) if errors else None}


FRONT_PER_SQRT = 2.5
"""The front grows to about this times the square root of the candidates scored, measured round by round
(sessions 14-16: 30 and 40 members for 240 candidates, 21 for 85)."""
MEASURE_SECONDS = 4.0
"""One student's measurement in the shared child process (batch 1 and the throughput batch, one thread):
three SST-2 students took 11.9 s on 2 cores, JAX's start included (session 17)."""


def front_reserve(num_samples: int) -> float:
    """Seconds the scoring stage leaves for measuring the front of `num_samples` scored candidates."""
    return MEASURE_SECONDS * math.ceil(FRONT_PER_SQRT * math.sqrt(max(1, num_samples)))


# ------------------------------------------------------------------ 5. the targets, trained
def pick_targets(rows: list[dict], targets: tuple[float, ...]) -> dict[str, list[float]]:
    """For each target speedup, the most accurate measured candidate at or above it (ties: the faster, then
    the larger trial id: TPE samples some architectures twice, and a resumed search, whose rows come back in
    another order, must pick the candidate whose final it planned), by trial id with the targets it serves;
    a target no measured candidate reaches is skipped (logged)."""
    measured = [r for r in rows if r["status"] == "scored" and r.get("latency_source") == "measured"]
    picks: dict[str, list[float]] = {}
    for t in sorted(targets):
        fast = [r for r in measured if r["speedup"] >= t]
        if not fast:
            log.warning("no measured candidate is %.3gx faster than the teacher: target %.3gx skipped", t, t)
            continue
        best = max(fast, key=lambda r: (r["val_metric"], r["speedup"], r["trial_id"]))
        picks.setdefault(best["trial_id"], []).append(t)
    return picks


def student_speed(supernet: dict, choices: SubnetChoices, teacher: BertArch, student: BertArch,
                  cfg: SearchConfig, seq_len: int) -> float | None:
    """A student's training steps/s, estimated from the supernet's: a sandwich step trains the (padded)
    largest, smallest and sampled sub-networks, so it costs their FLOPs together; at most 8x as fast."""
    ex_s = supernet.get("train_examples_per_second")
    if not ex_s:
        return None
    steps_s = ex_s / cfg.batch_size
    sampled = supernet.get("supernet", {}).get("num_sampled", 2)
    sandwich = np.mean([sum(_padded_flops(s, teacher, seq_len) for s in choices.sandwich(teacher, i, cfg.seed, sampled))
                        for i in range(16)])
    return steps_s * min(8.0, sandwich / student.flops(seq_len))


def _padded_flops(sub: Subnet, teacher: BertArch, seq_len: int) -> int:
    """FLOPs of what training `sub` computes: its shape with every head that fits and every FFN neuron."""
    n = len(sub.layers)
    heads = min(teacher.num_heads[0], sub.hidden_size // teacher.head_size)
    wide = teacher.replace(num_layers=n, hidden_size=sub.hidden_size, num_heads=(heads,) * n,
                           ffn_sizes=(teacher.ffn_sizes[0],) * n, layer_groups=None)
    return wide.flops(seq_len)


def final_weights(rows: list[dict], picks: dict[str, list[float]], teacher_metric: float | None) -> list[float]:
    """Each pick's weight in sharing the finals' time: how far its supernet estimate is below the teacher's
    validation score (the distillation left to do), at least half the mean; equal without a teacher score.
    Session 17's SST-2 finals, trained for twice their steps: the 10x final (estimate 13.2 points under the
    teacher) gained 1.4 dev points, the 5x final (8.0 under) none."""
    scores = {r["trial_id"]: r.get("val_metric") for r in rows}
    known = teacher_metric is not None
    gaps = [teacher_metric - scores[t] if known and report.finite(scores.get(t)) else None for t in picks]
    if not gaps or any(g is None for g in gaps):
        return [1.0] * len(gaps)
    gaps = [max(0.0, g) for g in gaps]
    floor = 0.5 * sum(gaps) / len(gaps)
    return [max(g, floor) if floor > 0 else 1.0 for g in gaps]


def train_targets(cfg: SearchConfig, setup: TrialSetup, rows: list[dict], configs: dict[str, dict], out: Path, *,
                  supernet: dict, choices: SubnetChoices, deadline: float, resume: bool) -> list[dict]:
    """Stage 5: each picked candidate distilled further from its supernet weights, in its share of the time
    left (`final_weights`); their rows (status 'final'). A plan per candidate (OUTPUT/final/<trial>/plan.json)
    lets a resumed search continue the same runs."""
    picks = pick_targets(rows, cfg.targets)
    weights = final_weights(rows, picks, (setup.teacher_eval or {}).get(setup.task_metric))
    finals = []
    for i, (trial_id, targets) in enumerate(picks.items()):
        root = out / "final" / trial_id
        share = weights[i] / sum(weights[i:])
        plan = _plan(cfg, setup, rows, configs, root, trial_id, targets, supernet=supernet, choices=choices,
                     seconds=(deadline - time.time() - 30) * share, resume=resume)
        if plan is None:
            continue
        finals.append(_train_final(setup, plan, root, rows, supernet_dir=supernet["supernet_dir"], resume=resume,
                                   cfg=cfg))
    return finals


MIN_FINAL_SECONDS = 60.0
"""A final with less time than this in its share is skipped before its speed is measured (which takes
15-25 s on 2 cores)."""


def _final_config(cfg: SearchConfig, setup: TrialSetup, sample: dict, root: Path, steps: int, supernet_dir: str,
                  copies: int):
    """A final's run: its candidate's settings from its supernet weights, at `cfg.final_lr` where set."""
    dcfg = final_config(cfg, setup, sample, max_steps=steps, student_file=str(root / "student.json"), copies=copies)
    optimizer = dcfg.optimizer if cfg.final_lr is None else dataclasses.replace(dcfg.optimizer,
                                                                                 learning_rate=cfg.final_lr)
    return dataclasses.replace(dcfg, init=dataclasses.replace(dcfg.init, source=supernet_dir), optimizer=optimizer)


def _plan(cfg: SearchConfig, setup: TrialSetup, rows: list[dict], configs: dict[str, dict], root: Path,
          trial_id: str, targets: list[float], *, supernet: dict, choices: SubnetChoices, seconds: float,
          resume: bool) -> dict | None:
    """The final run of one candidate: its steps in `seconds` (after labelling the augmented copies)."""
    if resume and (root / "plan.json").is_file():
        return json.loads((root / "plan.json").read_text())
    sample = configs[trial_id]
    arch = setup.space.arch(sample, setup.teacher_arch)
    if seconds < MIN_FINAL_SECONDS:  # not even time to measure its speed
        log.warning("final training of %s skipped: %.0f s left in the budget", arch.name, seconds)
        return None
    root.mkdir(parents=True, exist_ok=True)
    write_json(root / "student.json", arch.to_dict())
    t0 = time.perf_counter()
    estimate = student_speed(supernet, choices, setup.teacher_arch, arch, cfg, setup.seq_len)
    budget = budget_final(cfg, setup, lambda copies: _final_config(cfg, setup, sample, root, cfg.final_steps,
                                                                   supernet["supernet_dir"], copies), root, seconds)
    log.info("final training of %s: %.2f steps/s measured (estimate %s), %.1f s an evaluation", arch.name,
             budget["steps_per_second"], f"{estimate:.2f}" if estimate else "none", budget["eval_seconds"])
    if budget["steps"] < min(50, cfg.final_steps):
        log.warning("final training of %s skipped: %.0f s left in the budget", arch.name,
                    seconds - (time.perf_counter() - t0))
        return None
    plan = {"trial_id": trial_id, "arch": arch.name, "targets": targets, "config": sample, **budget,
            "estimated_steps_per_second": estimate}
    write_json(root / "plan.json", plan)
    source = next(r for r in rows if r["trial_id"] == trial_id)
    log.info("final training for %s: %s (val %.4f with supernet weights, %.2fx) for %d steps",
             "/".join(f"{t:g}x" for t in targets), arch.name, source["val_metric"], source["speedup"], plan["steps"])
    return plan


def _train_final(setup: TrialSetup, plan: dict, root: Path, rows: list[dict], *, supernet_dir: str, resume: bool,
                 cfg: SearchConfig) -> dict:
    run, t0 = root / "run", time.perf_counter()
    dcfg = _final_config(cfg, setup, plan["config"], root, plan["steps"], supernet_dir,
                         plan.get("augment", cfg.final_augment))  # plans from before the field: all copies
    done = run / "results.json"
    if resume and done.is_file() and json.loads(done.read_text()).get("steps", 0) >= plan["steps"]:
        result = json.loads(done.read_text())
    else:
        result = distill(dcfg, run, resume=run.is_dir(), teacher_eval=setup.teacher_eval)  # its own earlier start
    source = next(r for r in rows if r["trial_id"] == plan["trial_id"])
    return {
        **{k: source.get(k) for k in ("params", "flops", "latency_ms", "batch_latency_ms", "speedup",
                                      "latency_source", *KNOBS)},
        "learning_rate": dcfg.optimizer.learning_rate,
        "trial_id": f"final-{plan['trial_id']}", "status": "final", "kind": "final", "from_trial": plan["trial_id"],
        "targets": plan["targets"], "arch": result["student"], "supernet_metric": source["val_metric"],
        "val_metric": (result["best"] or {}).get(setup.task_metric), "steps": result["steps"],
        "seconds": time.perf_counter() - t0, "train_examples_per_second": result["train_examples_per_second"],
        "augmented_examples": result["augmented_examples"], "labelled_features": plan.get("labelled_features"),
        "train_features": result.get("train_features"), "export_dir": str(run / "export"), "pareto": False,
        "error": None,
    }


def export_candidate(supernet_dir: str, choices: SubnetChoices, arch: BertArch, task, dest: Path, *,
                     hf_layout: bool = False) -> None:
    """A supernet estimate's export: the candidate with its supernet weights, as an ordinary student
    (`hf_layout`: shared layers stored once per layer)."""
    supernet = load_bert(supernet_dir)
    sub: Subnet = choices.subnet(supernet.arch, arch.hidden_size, arch.num_heads, arch.ffn_sizes)
    # `from_supernet`, never `supernet`: that key marks a supernet directory itself (its space and hidden order)
    export_subnet(supernet, sub, dest, task, extra={"kind": "supernet_estimate", "from_supernet": supernet_dir},
                  hf_layout=hf_layout)

