"""Suite part `search_time`: where a finished search's wall time went, read from its output directory.

Reads `results.json` (stage seconds, every trial's row), `search_config.json`,
`final/plan.json` and `final/run/results.json`, plus, where they are still
there, each run's `metrics.jsonl` (a trial's is next to its checkpoint,
`ray/search/trial_<id>/run/`). Nothing is measured; no JAX.

- stages: teacher fine-tune (or cache load), teacher labelling, data and
  importance scores, teacher cost and evaluation, trials, final training,
  export; each as a share of the total;
- trials: seconds per trial (Tune's `time_total_s`), their sum over the
  trials stage's wall time (how many ran at once), and start-up: a trial's
  seconds minus steps / steps_per_second (its measured training speed after
  its first report): compilation, latency measurement, loading;
- compilation: per run with a metrics.jsonl, the first logged interval's
  time beyond what its steps take at the run's median per-step time
  (compiling the train steps of the first buckets; an estimate);
- final training: planning and labelling of the augmented copies
  (plan.json), the training loop (run results);
- teacher forwards: as counted by the search (results.json
  `teacher_forwards`: the features labelled for the trials and for the final
  run, against the distinct features trained on, originals and augmented
  copies: 1.0 when none was labelled twice); for older searches, estimated
  from the runs' feature counts. Also per example the students trained on.
  Teacher evaluations on validation/dev are not counted.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from bench.common import Skip

STAGES = (  # results.json "seconds" key -> name in the breakdown
    ("teacher", "teacher fine-tune"),
    ("labelling", "teacher labelling"),
    ("data_and_importance", "data + importance"),
    ("teacher_cost_and_eval", "teacher cost + eval"),
    ("trials", "trials"),
    ("final", "final training"),
    ("export", "export front"),
)
TRAINED = ("completed", "stopped")


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def stats(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    return {"n": len(values), "sum": sum(values), "mean": statistics.fmean(values),
            "median": statistics.median(values), "min": min(values), "max": max(values)}


def compile_estimate(metrics_path: Path) -> float | None:
    """Seconds of the run's first logged train interval beyond its steps at the median per-step time.

    Only the first segment of the file counts (a resumed run appends a new one, its clock restarted)."""
    if not metrics_path.is_file():
        return None
    logs = []
    for line in metrics_path.read_text().splitlines():
        rec = json.loads(line) if line.strip() else {}
        if "train_loss" not in rec:
            continue
        if logs and rec["time"] < logs[-1][1]:
            break
        logs.append((rec["step"], rec["time"]))
    per_step = [(t1 - t0) / (s1 - s0) for (s0, t0), (s1, t1) in zip(logs, logs[1:]) if s1 > s0]
    if not per_step:
        return None
    step, t = logs[0]
    return max(0.0, t - step * statistics.median(per_step))


def _trial_metrics(search: Path, row: dict) -> Path:
    if row.get("checkpoint"):
        return Path(row["checkpoint"]).parent / "run" / "metrics.jsonl"
    return search / "ray" / "search" / f"trial_{row['trial_id']}" / "run" / "metrics.jsonl"


def _trial_run_results(search: Path, rows: list[dict]) -> dict | None:
    for r in rows:
        found = _read(_trial_metrics(search, r).with_name("results.json"))
        if found:
            return found
    return None


def breakdown(search_dir: str | Path) -> dict:
    """The wall-time breakdown of the search in `search_dir` (see the module docstring)."""
    search = Path(search_dir)
    results = _read(search / "results.json")
    if results is None:
        raise Skip(f"{search}: no results.json (not a finished search)")
    cfg = _read(search / "search_config.json") or {}
    plan = _read(search / "final" / "plan.json")
    final_run = _read(search / "final" / "run" / "results.json")
    seconds = results.get("seconds", {})
    total = seconds.get("total")
    stages = {name: seconds[key] for key, name in STAGES if key in seconds}
    if total:
        stages["other"] = max(0.0, total - sum(stages.values()))
    # Trials only: not the final run, nor the int8 copies of the front (--quantize).
    rows = [r for r in results.get("trials", []) if r.get("trial_id") != "final" and not r.get("quantized")]
    trained = [r for r in rows if r.get("status") in TRAINED]

    timed = [r for r in trained if r.get("seconds") and r.get("steps") and r.get("steps_per_second")]
    startup = [r["seconds"] - r["steps"] / r["steps_per_second"] for r in timed]
    compiles = [c for c in (compile_estimate(_trial_metrics(search, r)) for r in trained) if c is not None]
    trial_seconds = [r["seconds"] for r in rows if r.get("seconds")]
    trials = {
        "counts": {s: sum(r.get("status") == s for r in rows) for s in sorted({r.get("status") for r in rows})},
        "seconds": stats(trial_seconds),
        "concurrency": sum(trial_seconds) / seconds["trials"] if seconds.get("trials") else None,
        "startup_seconds": stats(startup),
        "startup_share": sum(startup) / sum(r["seconds"] for r in timed) if timed else None,
        "compile_seconds": stats(compiles),
        "compile_share": sum(compiles) / sum(trial_seconds) if compiles and trial_seconds else None,
    }
    final = None
    if plan or final_run:
        run_seconds = (final_run or {}).get("seconds", {})
        final = {
            "arch": (plan or {}).get("arch") or (final_run or {}).get("student"),
            "planned_steps": (plan or {}).get("steps"),
            "steps": (final_run or {}).get("steps"),
            "prepare_seconds": (plan or {}).get("prepare_seconds"),
            "labelling_seconds": (plan or {}).get("labelling_seconds"),
            "train_loop_seconds": run_seconds.get("distill"),
            "run_seconds": run_seconds,
            "compile_seconds": compile_estimate(search / "final" / "run" / "metrics.jsonl"),
            "train_examples_per_second": (final_run or {}).get("train_examples_per_second"),
        }
    return {
        "search": str(search.resolve()),
        "task": results.get("task"),
        "total_seconds": total,
        "stages": stages,
        "shares": {k: v / total for k, v in stages.items()} if total else {},
        "trials": trials,
        "final": final,
        "teacher_forwards": recorded_forwards(results.get("teacher_forwards"), rows, cfg)
        or teacher_forwards(cfg, rows, final_run, _trial_run_results(search, trained)),
    }


def recorded_forwards(recorded: dict | None, rows: list[dict], cfg: dict) -> dict | None:
    """What the search counted (results.json `teacher_forwards`, since it counts them): features that went
    through the teacher, for the trials and for the final run, against the distinct features trained on."""
    if not recorded or not recorded.get("distinct_features"):
        return None
    batch = cfg.get("batch_size", 32)
    student_examples = batch * sum(r.get("steps") or 0 for r in rows)
    return {
        "source": "counted by the search",
        "training_examples": recorded["distinct_features"],
        "labelled_by_search": recorded["trials"],
        "labelled_by_final": recorded["final"],
        "forwards": recorded["total"],
        "student_examples": student_examples,
        "per_training_example": recorded["total"] / recorded["distinct_features"],
        "per_student_example": recorded["total"] / student_examples if student_examples else None,
    }


def teacher_forwards(cfg: dict, rows: list[dict], final_run: dict | None, trial_run: dict | None) -> dict:
    """Estimated teacher forwards of a search from before it counted them: the trials' training features
    once, then every feature of the final run (originals again, and their copies), per distinct feature."""
    final_features = (final_run or {}).get("train_features") or 0
    augmented = (final_run or {}).get("augmented_examples", 0) or 0
    search_labelled = (trial_run or {}).get("train_features")
    if search_labelled is None and final_features:
        search_labelled = final_features - augmented
    batch = cfg.get("batch_size", 32)
    student_examples = batch * (sum(r.get("steps") or 0 for r in rows) + ((final_run or {}).get("steps") or 0))
    forwards = None if search_labelled is None else search_labelled + final_features
    distinct = max(final_features, search_labelled or 0)
    return {
        "source": "estimated (before searches counted them)",
        "training_examples": distinct,
        "labelled_by_search": search_labelled,
        "labelled_by_final": final_features,
        "forwards": forwards,
        "student_examples": student_examples,
        "per_training_example": forwards / distinct if forwards and distinct else None,
        "per_student_example": forwards / student_examples if forwards and student_examples else None,
    }


def ratio_rows(b: dict) -> list[dict]:
    total = b["total_seconds"]
    out = [{"name": f"stage: {name}", "ours": s, "reference": total, "unit": "s",
            "ratio": s / total if total else None, "ratio_is": "share of total"} for name, s in b["stages"].items()]
    t = b["trials"]
    if t["seconds"]["n"]:
        out.append({"name": f"per trial ({t['seconds']['n']} trials)", "ours": t["seconds"]["median"],
                    "reference": t["seconds"]["sum"], "unit": "s", "ratio": t["concurrency"],
                    "ratio_is": "trial seconds / trials wall", "note": "median s per trial; sum"})
    for key, label in (("startup", "trial start-up"), ("compile", "trial compilation (est.)")):
        if t[f"{key}_share"] is not None:
            out.append({"name": label, "ours": t[f"{key}_seconds"]["sum"], "reference": None,
                        "unit": "s", "ratio": t[f"{key}_share"], "ratio_is": "share of trial seconds",
                        "note": f"{t[f'{key}_seconds']['n']} trials"})
    f = b["final"]
    if f and f.get("compile_seconds") is not None and f.get("train_loop_seconds"):
        out.append({"name": "final compilation (est.)", "ours": f["compile_seconds"],
                    "reference": f["train_loop_seconds"], "unit": "s",
                    "ratio": f["compile_seconds"] / f["train_loop_seconds"], "ratio_is": "share of final loop"})
    fw = b["teacher_forwards"]
    if fw["per_training_example"] is not None:
        out.append({"name": "teacher forwards / training feature", "ours": fw["forwards"],
                    "reference": fw["training_examples"], "unit": "ex", "ratio": fw["per_training_example"],
                    "ratio_is": "forwards / distinct features",
                    "note": f"{fw['per_student_example']:.3f} per example the students trained on"
                    if fw["per_student_example"] else ""})
    return out


def part(ctx) -> dict:
    if not ctx.search:
        raise Skip("no --search DIR given")
    result = breakdown(ctx.search)
    return {**result, "ratios": ratio_rows(result)}
