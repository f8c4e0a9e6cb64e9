"""The search's last stage: train the chosen candidate properly (AutoTinyBERT's "further training").

Trials train each candidate for a few hundred steps: enough to rank
architectures, not to reach their accuracy. `train_final` takes the most
accurate candidate that is at least `target_speedup` times faster than the
teacher (by the trials' validation scores and measured latencies) and distils
it again with the knobs its trial used, augmented data (labelled once, through
the cache) and as many steps as the time left allows at its own training
speed, measured on its own batches before it starts (`distill.run.training_speed`:
a trial's speed is a lower bound when the trial stopped at its first report).

The plan (candidate, knobs, steps) is written to `OUTPUT/final/plan.json`
before training, so a resumed search continues the same run from its
checkpoints instead of planning another.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from distill.arch import resolve_student
from distill.export.int8 import quantize_export
from distill.export.scheme import scheme
from distill.files import export_path, write_json
from distill.run import (
    AugmentConfig,
    Stage,
    distill,
    evaluate_dir,
    evaluate_model,
    fine_tuned_teacher,
    load_for_task,
    loss_layer_map,
    read_data,
    teacher_labels,
    training_features,
    training_speed,
)
from nas.cost import CostModel
from nas.report import finite
from nas.trial import TrialSetup, trial_distill_config
from tasks.readers import load_task

log = logging.getLogger(__name__)

PLAN = "plan.json"
EVALS = 10
"""Validation evaluations of the final run (the best one is exported)."""
MIN_STEPS = 50
MIN_SECONDS = 60.0
"""A final with less time than this left is skipped before its speed is measured (15-30 s on 2 cores)."""


def choose(rows: list[dict], target_speedup: float) -> dict | None:
    """The most accurate trained candidate with speedup >= `target_speedup` (ties: the faster); when none
    is that fast, the fastest trained candidate. None when nothing was trained."""
    trained = [r for r in rows if r["status"] in ("completed", "stopped") and finite(r.get("val_metric"))]
    if not trained:
        return None
    fast = [r for r in trained if finite(r.get("speedup")) and r["speedup"] >= target_speedup]
    if fast:
        return max(fast, key=lambda r: (r["val_metric"], r["speedup"]))
    log.warning("no trained candidate is %.3gx faster than the teacher: training the fastest one", target_speedup)
    return max(trained, key=lambda r: (r.get("speedup") or 0.0, r["val_metric"]))


def steps_per_second(row: dict) -> float | None:
    """The candidate's training speed in its trial (evaluations included); else a lower bound from its wall time."""
    if finite(row.get("steps_per_second")) and row["steps_per_second"] > 0:
        return row["steps_per_second"]
    if row.get("steps") and finite(row.get("seconds")) and row["seconds"] > 0:
        return row["steps"] / row["seconds"]
    return None


def plan_steps(max_steps: int, seconds_left: float, speed: float | None, margin: float = 0.9) -> int:
    """Steps that fit in `seconds_left` at `speed` steps/s (with a margin), at most `max_steps`."""
    if speed is None:
        return max_steps
    return max(0, min(max_steps, int(seconds_left * speed * margin)))


def plan_copies(steps: int, batch_size: int, originals: int, most: int) -> int:
    """Augmented copies per example that `steps` steps can use: none when they see no more examples than
    the originals (copies never reached would be labelled for nothing), else enough for every step to see
    an example it has not seen, at most `most`."""
    if originals < 1 or most < 1:
        return 0
    return max(0, min(most, math.ceil(steps * batch_size / originals) - 1))


def plan_run(cfg, setup: TrialSetup, seconds: float, speed: float | None) -> tuple[int, int]:
    """(steps, augmented copies per example) of a final run in `seconds`, its copies' labelling included
    (`setup.label_rate` forwards/s); steps at `speed` steps/s (None: `cfg.final_steps`)."""
    originals = setup.train_features
    if originals is None:  # unknown: every copy, as before copies were planned
        return plan_steps(cfg.final_steps, seconds, speed), cfg.final_augment
    for copies in range(cfg.final_augment, 0, -1):  # the most copies whose labelling leaves steps that use them
        labelling = copies * originals / setup.label_rate if setup.label_rate else 0.0
        steps = plan_steps(cfg.final_steps, seconds - labelling, speed)
        if plan_copies(steps, cfg.batch_size, originals, cfg.final_augment) >= copies:
            return steps, copies
    return plan_steps(cfg.final_steps, seconds, speed), 0


def train_final(cfg, setup: TrialSetup, rows: list[dict], configs: Mapping[str, dict], out: Path, *,
                deadline: float, resume: bool) -> dict | None:
    """Plan (or, on resume, re-read the plan of) the final run and train it; returns its row for the results,
    or None when there is nothing to train or no time left. `configs` holds each trial's sampled candidate
    by trial id (rows hold only plain values)."""
    root = out / "final"
    plan_file = root / PLAN
    if resume and plan_file.is_file():
        plan = json.loads(plan_file.read_text())
        log.info("final training: resuming the planned run of %s (%d steps)", plan["arch"], plan["steps"])
    else:
        plan = _plan(cfg, setup, rows, configs, root, deadline=deadline)
        if plan is None:
            return None
    return _train_planned(cfg, setup, plan, root, resume=resume)


def _plan(cfg, setup: TrialSetup, rows: list[dict], configs: Mapping[str, dict], root: Path, *,
          deadline: float) -> dict | None:
    """Choose the candidate, label its augmented data, fit its steps in the time left and write the plan
    (`final/plan.json`, with the sampled config, so a resumed search trains the same run); None when
    nothing was trained or no time is left."""
    chosen = choose(rows, cfg.target_speedup)
    if chosen is None:
        log.warning("final training skipped: no candidate was trained")
        return None
    sample = configs[chosen["trial_id"]]
    if deadline - time.time() - 30 < MIN_SECONDS:  # not even time to measure its speed
        log.warning("final training skipped: %.0f s left in the budget", deadline - time.time() - 30)
        return None
    root.mkdir(parents=True, exist_ok=True)
    student_file = str(root / "student.json")
    write_json(student_file, setup.space.arch(sample, setup.teacher_arch).to_dict())
    # Its own speed, measured: a trial's is a lower bound when the trial stopped at its first report (its
    # seconds include compiling and starting), which planned session 17's 15-minute final at half its speed.
    t0 = time.perf_counter()
    budget = budget_final(cfg, setup, lambda copies: final_config(
        cfg, setup, sample, max_steps=cfg.final_steps, student_file=student_file, copies=copies),
        root, deadline - time.time() - 30)  # the front's export and dev evaluation follow
    if budget["steps"] < min(MIN_STEPS, cfg.final_steps):
        log.warning("final training skipped: %.0f s left in the budget", deadline - time.time() - 30)
        return None
    plan = {"trial_id": chosen["trial_id"], "arch": chosen["arch"], "config": sample, **budget,
            "trial_steps_per_second": steps_per_second(chosen), "prepare_seconds": time.perf_counter() - t0}
    write_json(root / PLAN, plan)
    log.info("final training: %s (trial %s, val %.4f, %.2fx) for %d steps, augment %d", chosen["arch"],
             chosen["trial_id"], chosen["val_metric"], chosen["speedup"], plan["steps"], plan["augment"])
    return plan


def _train_planned(cfg, setup: TrialSetup, plan: dict, root: Path, *, resume: bool) -> dict:
    """Train the planned run (from its checkpoints, or not at all when it had finished); its row."""
    dcfg = final_config(cfg, setup, plan["config"], max_steps=plan["steps"], student_file=str(root / "student.json"),
                        copies=plan.get("augment", cfg.final_augment))  # plans from before the field: all copies
    run = root / "run"
    t0 = time.perf_counter()
    done = run / "results.json"
    if resume and done.is_file() and json.loads(done.read_text()).get("steps", 0) >= plan["steps"]:
        result = json.loads(done.read_text())  # finished before the interruption: nothing to redo
    else:
        result = distill(dcfg, run, resume=run.is_dir(), teacher_eval=setup.teacher_eval)  # its own earlier start
    best = result["best"] or {}
    return {
        "trial_id": "final",
        "status": "final",
        "from_trial": plan["trial_id"],
        "arch": result["student"],
        "config": plan["config"],
        "val_metric": best.get(setup.task_metric),
        "steps": result["steps"],
        "seconds": time.perf_counter() - t0,
        "train_examples_per_second": result["train_examples_per_second"],
        "augmented_examples": result["augmented_examples"],
        "labelling_seconds": plan.get("labelling_seconds"),
        "labelled_features": plan.get("labelled_features"),
        "train_features": result.get("train_features"),
        "export_dir": str(run / "export"),
        "pareto": False,
        "error": None,
    }


def budget_final(cfg, setup: TrialSetup, config_with: Callable[[int], Any], root: Path, seconds: float) -> dict:
    """What a final run can do in `seconds` from now: its speed measured on its own batches
    (`training_speed` of `config_with(0)`), its augmented copies chosen (`plan_run`) and labelled
    (`label_copies` of `config_with(copies)`, before the steps are fitted: it may take minutes), and its
    steps fitted in what is left after its evaluations. The plan's fields: steps, augment (copies),
    steps_per_second, eval_seconds, calibration_seconds, labelling_seconds, labelled_features."""
    t0 = time.perf_counter()
    measured = training_speed(config_with(0), root)
    calibration = time.perf_counter() - t0
    speed, evals = measured.steps_per_second, EVALS * measured.eval_seconds
    _, copies = plan_run(cfg, setup, seconds - calibration - evals, speed)
    label_seconds, labelled = label_copies(config_with(copies), root)
    steps = plan_steps(cfg.final_steps, seconds - evals - (time.perf_counter() - t0), speed)
    return {"steps": steps, "augment": copies, "steps_per_second": speed, "eval_seconds": measured.eval_seconds,
            "calibration_seconds": calibration, "labelling_seconds": label_seconds, "labelled_features": labelled}


def final_config(cfg, setup: TrialSetup, sample: dict, *, max_steps: int, student_file: str, copies: int):
    """The candidate's trial settings (`sample`: its sampled config) with `copies` augmented copies per
    example (`plan_run`) and a longer schedule."""
    dcfg = trial_distill_config(setup, sample, student_file)
    every = max(1, max_steps // EVALS)
    return dataclasses.replace(
        dcfg,
        augment=AugmentConfig(copies=copies, seed=cfg.seed),
        loop=dataclasses.replace(dcfg.loop, max_steps=max_steps, eval_every=every, checkpoint_every=every),
    )


def label_copies(dcfg, root: Path) -> tuple[float, int]:
    """Augment and label the final run's training data into the cache (distill() then reads it); seconds and
    features labelled. The originals were labelled for the trials: only their copies go through the teacher."""
    task, _ = load_task(dcfg.task, dcfg.data_dir, dcfg.data)
    teacher, _ = fine_tuned_teacher(dcfg, task, root)  # the search's teacher, fine-tuned already: loaded
    student = resolve_student(dcfg.student, teacher.arch)
    train_ex, _, _ = read_data(dcfg, task, dcfg.data_dir)
    train, original, _ = training_features(dcfg, task, teacher, train_ex, Stage())
    cache = teacher_labels(
        dcfg, task, teacher, train, original=original,  # the trials' labels, and fewer copies' of other finals
        hidden_layers=dcfg.loss.teacher_hidden_layers(loss_layer_map(dcfg, teacher.arch, student)),
    )
    return cache.seconds, cache.labelled


QUANTIZED_FROM_SOURCE = (  # what an int8 copy shares with its float32 row
    "arch", "params", "flops", "learning_rate", "temperature", "hard_weight", "hidden_weight", "init_layers",
)


def quantized_rows(name: str, setup: TrialSetup, front: list[dict], teacher_latency_ms: float, val_features,
                   val_examples, *, dev_limit: int | None = None) -> list[dict]:
    """`--quantize NAME`: an int8 copy of each exported front member (`<its export>-NAME`, see
    `distill.export.int8`), as a row of its own, measured as every candidate is: the validation metric on the
    search's validation slice, the dev metric, the batch-1 latency by the cost model (the quantized model,
    on the search's latency threads), plus its size against the float32 export. The caller takes the front
    again over all rows, so an int8 copy as accurate and faster than its float32 model replaces it there."""
    cost_model = CostModel(setup.head, setup.num_labels, setup.seq_len, threads=setup.latency_threads, quantize=name)
    rows = []
    for r in front:
        if not r.get("export") or r.get("quantized"):
            continue
        t0 = time.perf_counter()
        src = Path(r["export"])
        size = quantize_export(src, export_path(src.parent, f"{src.name}-{name}"), scheme(name))  # beside src
        model, task = load_for_task(size["path"])
        val = evaluate_model(model.model, model.params, task, val_features, val_examples, setup.base.eval_batch_size)
        dev = evaluate_dir(size["path"], task.name, data_dir=setup.base.data_dir, limit=dev_limit,
                           spec=setup.base.data)
        cost = cost_model.cost(model.arch)
        rows.append({
            **{k: r.get(k) for k in QUANTIZED_FROM_SOURCE},
            "trial_id": f"{r['trial_id']}-{name}", "status": "quantized", "quantized": name,
            "from_trial": r["trial_id"], "latency_ms": cost.latency_ms, "batch_latency_ms": cost.batch_latency_ms,
            "speedup": teacher_latency_ms / cost.latency_ms, "val_metric": val[task.metric],
            "dev_metric": dev[task.metric], "val_drop": _diff(r.get("val_metric"), val[task.metric]),
            "dev_drop": _diff(r.get("dev_metric"), dev[task.metric]), "weight_bytes": size["weight_bytes"],
            "weight_ratio": size["weight_ratio"], "export": size["path"], "seconds": time.perf_counter() - t0,
            "pareto": False, "error": None,
        })
        log.info("%s %s: val %s %.4f (float32 %s), %.3f ms (float32 %s), weights %.3f of float32", r["arch"], name,
                 task.metric, val[task.metric], r.get("val_metric"), cost.latency_ms, r.get("latency_ms"),
                 size["weight_ratio"] or float("nan"))
    return rows


def _diff(a, b):
    return a - b if finite(a) and finite(b) else None
