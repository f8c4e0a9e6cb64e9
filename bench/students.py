"""Suite part `students`: a search's exported students against its teacher, on real dev sentences.

Each model (loaded with `distill.export.load.load_export`) reads the task's dev
split (`--quick`: the first 64 examples), every example padded only to its
length bucket (`tasks.batching.default_buckets`), on CPU, after each bucket
shape is compiled and warmed up:
- latency: batch 1, each example once; median and 95th percentile in ms;
- throughput: batch 32, bucketed batches (`tasks.batching.batches`):
  examples per second over whole passes (median of 3; 1 with --quick);
- cost model: `nas.cost.CostModel` as the search uses it (batch 1 at the
  task's typical length, random ids, median of 20; 5 with --quick), with a
  fresh private cache so it is measured now, under the same load.
All of it runs on the CPU threads the search measured latency on (its
`latency_threads`, 1 by default: a child process pinned to one CPU, see
`nas.latency_child`; searches from before that setting measured in-process
on all threads, 0) or `--latency-threads N`.
Per student: speedup = teacher latency / student latency, at real lengths
and by the cost model, and their disagreement (cost model / real - 1; within
10% they agree); the speedup the search recorded; throughput and parameter
ratios (student / teacher).

Inputs: `--search DIR` (teacher path, task and typical length from its
results.json; students in DIR/export/) or `--teacher DIR --student DIR ...`
(typical length then from dev: the search takes it from training data).
Data: `--data-dir`, else the search's own setting, else $GLUE_DIR & co.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import Skip, child_main, run_child

AGREEMENT = 0.10
THROUGHPUT_BATCH = 32
INPUTS = ("input_ids", "token_type_ids", "attention_mask")


def _json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def inputs(ctx) -> dict:
    """Teacher, students, task, data directory candidates, typical length and recorded speedups."""
    search = Path(ctx.search) if ctx.search else None
    results = _json(search / "results.json") if search else {}
    if search and not results:
        raise Skip(f"{search}: no results.json (not a finished search)")
    teacher = ctx.teacher or results.get("teacher", {}).get("path")
    if not teacher:
        raise Skip("no --search DIR or --teacher DIR given")
    students = list(ctx.students or [])
    if not students and search:
        # The float32 Flax students only: the int8 copies of `--quantize int8` are part `quantize`'s
        # (the test of `distill.export.hf.is_quantized`, without importing JAX here).
        students = sorted(d for d in (search / "export").glob("*") if (d / "config.json").is_file()
                          and "quantization_config" not in _json(d / "config.json")
                          and not (d / "model.onnx").is_file())  # `--export-onnx` copies: part `onnx`'s
    if not students:
        raise Skip("no students: pass --student DIR or a search with exported students")
    for path in [teacher, *students]:
        if not Path(path, "config.json").is_file():
            raise Skip(f"{path}: model directory not found (moved or deleted?)")
    data_dirs = [ctx.data_dir]
    if search:
        data_dirs += [_json(search / "search_config.json").get("data_dir"),
                      _json(search / "final" / "run" / "config.json").get("distill", {}).get("data_dir")]
    recorded = {Path(r["export"]).name: r.get("speedup") for r in results.get("trials", []) if r.get("export")}
    threads = _json(search / "search_config.json").get("latency_threads", 0) if search else 1
    task = results.get("task") or _json(Path(teacher, "config.json")).get("bertnas", {}).get("task")
    if not task:
        raise Skip(f"{teacher}: no task recorded in config.json; pass --search DIR")
    return {"teacher": Path(teacher), "students": [Path(s) for s in students], "task": task,
            "data_dirs": [d for d in data_dirs if d], "seq_len": results.get("seq_len"), "recorded": recorded,
            "latency_threads": threads}


def dev_examples(task, data_dirs: list[str], limit: int | None):
    from tasks.errors import UserError
    from tasks.readers import read_split

    errors = []
    for data_dir in data_dirs + [None]:  # None: the task's environment variable
        try:
            return read_split(task, "dev", data_dir, limit=limit), str(data_dir or "$" + task.env_var)
        except UserError as e:
            errors.append(str(e))
    raise Skip(f"no {task.name} dev data: " + "; ".join(errors))


def measure_model(path: Path, task, examples, *, seq_len: int | None, quick: bool, cache: Path) -> dict:
    """Real-length latency and throughput of one exported model, and the cost model's view of it."""
    import jax

    from distill.export.load import load_export
    from nas.cost import CostModel, typical_length
    from tasks.batching import batches, buckets_for, collate
    from tasks.features import encode

    model = load_export(path)
    features = encode(task, examples, model.tokenizer)
    net = model.model
    forward = jax.jit(lambda p, ids, types, mask: net.apply({"params": p}, ids, types, mask, deterministic=True).logits)
    params = jax.device_put(model.params)
    buckets = np.asarray(buckets_for(features))
    bucket = buckets[np.searchsorted(buckets, features.lengths)]

    def put(batch):
        return jax.device_put(tuple(batch[k] for k in INPUTS))

    singles = [put(collate(features, np.array([i]), int(bucket[i]))) for i in range(len(features))]
    for length in sorted(set(bucket.tolist())):  # compile and warm up every bucket shape
        first = singles[int(np.flatnonzero(bucket == length)[0])]
        for _ in range(2):
            jax.block_until_ready(forward(params, *first))
    latencies = []
    for x in singles:
        t0 = time.perf_counter()
        jax.block_until_ready(forward(params, *x))
        latencies.append((time.perf_counter() - t0) * 1e3)

    full = [put(b) for b in batches(features, THROUGHPUT_BATCH, buckets=buckets)]
    jax.block_until_ready([forward(params, *b) for b in full])  # compile each bucket
    passes = []
    for _ in range(1 if quick else 3):
        t0 = time.perf_counter()
        jax.block_until_ready([forward(params, *b) for b in full])
        passes.append(time.perf_counter() - t0)

    seq_len = seq_len or typical_length(features)
    cost = CostModel(task.kind, task.num_labels, seq_len, cache_path=cache, repeats=5 if quick else 20).cost(model.arch)
    return {
        "path": str(path),
        "arch": model.arch.name,
        "params": model.arch.num_params(task.kind, task.num_labels),
        "examples": len(features),
        "buckets": sorted(set(bucket.tolist())),
        "latency_ms_p50": float(np.median(latencies)),
        "latency_ms_p95": float(np.percentile(latencies, 95)),
        "throughput": len(features) / statistics.median(passes),
        "cost_model": cost.to_dict(),
    }


def compare(teacher: dict, student: dict, recorded: float | None) -> dict:
    real = teacher["latency_ms_p50"] / student["latency_ms_p50"]
    predicted = teacher["cost_model"]["latency_ms"] / student["cost_model"]["latency_ms"]
    return {
        "speedup": real,
        "speedup_p95": teacher["latency_ms_p95"] / student["latency_ms_p95"],
        "speedup_cost_model": predicted,
        "disagreement": predicted / real - 1,
        "agree": abs(predicted / real - 1) <= AGREEMENT,
        "speedup_search": recorded,
        "throughput_ratio": student["throughput"] / teacher["throughput"],
        "param_ratio": student["params"] / teacher["params"],
    }


def ratio_rows(result: dict) -> list[dict]:
    t = result["teacher"]
    out = []
    for s in result["students"]:
        c = s["vs_teacher"]
        search = f", search {c['speedup_search']:.2f}x" if c["speedup_search"] else ""
        verdict = "agree" if c["agree"] else "DISAGREE"
        out += [
            {"name": f"{s['arch']} latency b1 p50", "ours": s["latency_ms_p50"], "reference": t["latency_ms_p50"],
             "unit": "ms", "ratio": c["speedup"], "ratio_is": "teacher / student",
             "note": f"cost model {c['speedup_cost_model']:.2f}x ({c['disagreement']:+.1%}, {verdict}){search}"},
            {"name": f"{s['arch']} latency b1 p95", "ours": s["latency_ms_p95"], "reference": t["latency_ms_p95"],
             "unit": "ms", "ratio": c["speedup_p95"], "ratio_is": "teacher / student"},
            {"name": f"{s['arch']} throughput b{THROUGHPUT_BATCH}", "ours": s["throughput"],
             "reference": t["throughput"], "unit": "ex/s", "ratio": c["throughput_ratio"],
             "ratio_is": "student / teacher"},
            {"name": f"{s['arch']} params", "ours": s["params"], "reference": t["params"], "unit": "",
             "ratio": c["param_ratio"], "ratio_is": "student / teacher"},
        ]
    return out


def part(ctx) -> dict:
    spec = inputs(ctx)
    threads = ctx.latency_threads if ctx.latency_threads is not None else spec["latency_threads"]
    request = {"task": spec["task"], "teacher": str(spec["teacher"]), "students": [str(p) for p in spec["students"]],
               "data_dirs": spec["data_dirs"], "seq_len": spec["seq_len"], "recorded": spec["recorded"],
               "quick": ctx.quick, "deadline": ctx.deadline, "threads": threads}
    if threads:  # like the search's cost model: a child process pinned to `threads` CPUs
        result = run_child("bench.students", request)
    else:
        result = measure_all(request)
    return {**result, "ratios": ratio_rows(result)}


def measure_all(request: dict) -> dict:
    """The teacher and each student measured in this process (pinned already when `threads` > 0)."""
    import jax

    from tasks.registry import get_task

    task = get_task(request["task"])
    examples, data_dir = dev_examples(task, request["data_dirs"], 64 if request["quick"] else None)
    result = {"task": task.name, "data_dir": data_dir, "seq_len": request["seq_len"], "threads": request["threads"],
              "seq_len_from": "search results.json" if request["seq_len"] else "dev (95th percentile)",
              "agreement_tolerance": AGREEMENT, "students": []}
    deadline = request["deadline"]
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp, jax.default_device(jax.devices("cpu")[0]):
        cache = Path(tmp) / "latency.json"

        def measure(path):
            return measure_model(Path(path), task, examples, seq_len=request["seq_len"], quick=request["quick"],
                                 cache=cache)

        teacher = result["teacher"] = measure(request["teacher"])
        for path in request["students"]:
            if deadline and time.time() > deadline:
                result.setdefault("skipped_students", []).append(str(path))
                continue
            student = measure(path)
            student["vs_teacher"] = compare(teacher, student, request["recorded"].get(Path(path).name))
            result["students"].append(student)
    if "skipped_students" in result:
        result["skipped_reason"] = "suite time budget spent"
    result["seq_len"] = teacher["cost_model"]["seq_len"]
    result["all_agree"] = all(s["vs_teacher"]["agree"] for s in result["students"])
    return result


if __name__ == "__main__":  # the pinned child of `part`: python -m bench.students REQUEST_JSON OUT_FILE
    child_main(measure_all, sys.argv[1:])
