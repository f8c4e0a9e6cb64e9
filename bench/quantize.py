"""Suite part `quantize`: int8 students (`distill.export.int8`, qwix) against their float32 exports.

For each float32 student (`--search DIR`: its exported students, DIR/export/*, int8 copies left out;
or `--student DIR ...`), the student is quantized (into a temporary directory) and compared with its
float32 export:
- accuracy: the task's metric of both on the dev split (`--quick`: the first 64 examples), the drop in
  points (float32 - int8) and how often their predictions agree;
- size: model.safetensors of the int8 export against the float32 one (the float32 export of a
  heterogeneous student is padded, the int8 one is not), and the whole directories;
- latency: batch 1 at the task's typical length (the search's `seq_len`, else dev's 95th percentile), by
  the cost model (`nas.cost.CostModel`, random ids, median of 20 calls and 0.25 s; 5 calls with
  --quick), float32 and int8 measured one after the other, now; and batch 32 (throughput).
All of it runs on the CPU threads the search measured latency on (its `latency_threads`, 1 by default: a
child process pinned to one CPU, see `nas.latency_child`) or `--latency-threads N`. Ratios are int8 /
float32: below 1 means smaller or faster (for the metric, below 1 means less accurate).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from bench.common import Skip, child_main, float_students, read_json, run_child

THROUGHPUT_BATCH = 32


def inputs(ctx) -> dict:
    """The float32 students, their task, data directory candidates, typical length and latency threads."""
    search = Path(ctx.search) if ctx.search else None
    results, students = float_students(ctx)
    for path in students:
        if not (path / "config.json").is_file():
            raise Skip(f"{path}: model directory not found (moved or deleted?)")
    task = results.get("task") or read_json(students[0] / "config.json").get("bertnas", {}).get("task")
    if not task:
        raise Skip(f"{students[0]}: no task recorded in config.json; pass --search DIR")
    config = read_json(search / "search_config.json") if search else {}
    return {"task": task, "students": [str(s) for s in students], "seq_len": results.get("seq_len"),
            "data_dirs": [d for d in (ctx.data_dir, config.get("data_dir")) if d],
            "latency_threads": config.get("latency_threads", 0) if search else 1}


def measure_student(path: Path, examples, *, seq_len: int | None, quick: bool, tmp: Path) -> dict:
    """One float32 export against its int8 quantization: metric, size and latency."""
    from distill.export.int8 import export_quantized, quantize
    from distill.run.evaluation import load_for_task
    from distill.run.quantization import compare_models
    from nas.cost import CostModel, typical_length
    from tasks.features import encode

    fp32, task = load_for_task(path)
    int8 = quantize(fp32)
    size = export_quantized(tmp / f"{path.name}-int8", int8)
    features = encode(task, examples, fp32.tokenizer)
    scores = compare_models(fp32, int8, task, features, examples)
    seq_len = seq_len or typical_length(features)
    costs = {}
    for name, scheme in (("float32", None), ("int8", "int8")):
        model = CostModel(task.kind, task.num_labels, seq_len, batch_size=THROUGHPUT_BATCH, cache_path=tmp / "lat.json",
                          repeats=5 if quick else 20, min_seconds=0.05 if quick else 0.25, quantize=scheme)
        costs[name] = model.cost(fp32.arch).to_dict()
    return {
        "path": str(path), "arch": fp32.arch.name, "params": size["num_params"], "metric": task.metric,
        "float32": scores["float32"][task.metric], "int8": scores["int8"][task.metric], "drop": scores["drop"],
        "agreement": scores.get("agreement"), "examples": len(examples), "seq_len": seq_len,
        "weight_bytes": {"float32": size["source_weight_bytes"], "int8": size["weight_bytes"]},
        "weight_ratio": size["weight_ratio"], "total_ratio": size["total_ratio"],
        "latency_ms": {k: c["latency_ms"] for k, c in costs.items()},
        "latency_ratio": costs["int8"]["latency_ms"] / costs["float32"]["latency_ms"],
        "batch_latency_ms": {k: c["batch_latency_ms"] for k, c in costs.items()},
        "batch_latency_ratio": costs["int8"]["batch_latency_ms"] / costs["float32"]["batch_latency_ms"],
        "cost_model": costs,
    }


def measure_all(request: dict) -> dict:
    """Every student, in this process (pinned already when `threads` > 0)."""
    import jax

    from bench.students import dev_examples
    from tasks.registry import get_task

    task = get_task(request["task"])
    examples, data_dir = dev_examples(task, request["data_dirs"], 64 if request["quick"] else None)
    result = {"task": task.name, "data_dir": data_dir, "threads": request["threads"], "students": []}
    with tempfile.TemporaryDirectory(prefix="bench-quantize-") as tmp, jax.default_device(jax.devices("cpu")[0]):
        for path in request["students"]:
            if request["deadline"] and time.time() > request["deadline"]:
                result.setdefault("skipped_students", []).append(path)
                continue
            result["students"].append(measure_student(Path(path), examples, seq_len=request["seq_len"],
                                                      quick=request["quick"], tmp=Path(tmp)))
    done = result["students"]
    if done:
        result["max_drop"] = max(s["drop"] for s in done)
        result["weight_ratio_max"] = max(s["weight_ratio"] for s in done)
        result["latency_ratio_median"] = sorted(s["latency_ratio"] for s in done)[len(done) // 2]
    return result


def ratio_rows(result: dict) -> list[dict]:
    rows = []
    for s in result["students"]:
        note = f"{s['metric']} drop {100 * s['drop']:+.2f} points"
        if s.get("agreement") is not None:
            note += f", agreement {s['agreement']:.1%}"
        rows += [
            {"name": f"{s['arch']} {s['metric']}", "ours": s["int8"], "reference": s["float32"], "unit": "",
             "ratio": s["int8"] / s["float32"] if s["float32"] else None, "ratio_is": "int8 / float32",
             "note": note},
            {"name": f"{s['arch']} weights", "ours": s["weight_bytes"]["int8"] / 1e6,
             "reference": s["weight_bytes"]["float32"] / 1e6, "unit": "MB", "ratio": s["weight_ratio"],
             "ratio_is": "int8 / float32", "note": f"whole directory {s['total_ratio']:.3f}"},
            {"name": f"{s['arch']} latency b1", "ours": s["latency_ms"]["int8"],
             "reference": s["latency_ms"]["float32"], "unit": "ms", "ratio": s["latency_ratio"],
             "ratio_is": "int8 / float32",
             "note": f"cost model, length {s['seq_len']}, {result['threads'] or 'all'} thread(s)"},
            {"name": f"{s['arch']} latency b{THROUGHPUT_BATCH}", "ours": s["batch_latency_ms"]["int8"],
             "reference": s["batch_latency_ms"]["float32"], "unit": "ms", "ratio": s["batch_latency_ratio"],
             "ratio_is": "int8 / float32"},
        ]
    return rows


def part(ctx) -> dict:
    spec = inputs(ctx)
    threads = ctx.latency_threads if ctx.latency_threads is not None else spec["latency_threads"]
    request = {**spec, "quick": ctx.quick, "deadline": ctx.deadline, "threads": threads}
    result = run_child("bench.quantize", request) if threads else measure_all(request)
    return {**result, "ratios": ratio_rows(result)}


if __name__ == "__main__":  # the pinned child of `part`: python -m bench.quantize REQUEST_JSON OUT_FILE
    child_main(measure_all, sys.argv[1:])
