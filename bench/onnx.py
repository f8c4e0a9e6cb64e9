"""Suite part `onnx`: the same students served by our JAX model and by ONNX Runtime (float32 and int8).

For each float32 student (`--search DIR`: its exported front, DIR/export/*, int8 copies left out; or
`--student DIR ...`) and the teacher (`--teacher DIR`, else the search's results.json `teacher.path`), the
model is converted once (`distill.export.onnx`: jax2onnx, float32, and ONNX Runtime's dynamic int8
quantization) into a temporary directory. Then, in a child process pinned to 1 CPU and in one pinned to
2 (`nas.latency_child.pin`; ONNX Runtime's intra-op threads set to match), each model runs at batch 1
and batch 32 on random token ids at the task's typical length (the search's `seq_len`, else 128; 16
with --quick): our jitted Flax forward (`distill.model.infer.logits_step`, float32), an onnxruntime
session on the float32 graph and one on the int8 graph. Each figure is the median of repeats of
back-to-back calls (`bench.common.time_steps`).

Printed ratios: ONNX Runtime / JAX latency (below 1: ONNX Runtime is faster), int8 / float32 in ONNX
Runtime, and each student's speedup over the teacher within ONNX Runtime at batch 1 (the speedup a user
gets in that serving stack), next to the same speedup in JAX.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from bench.common import Skip, child_main, float_students, run_child, time_steps
from tasks.errors import UserError

BATCHES = (1, 32)
THREADS = (1, 2)
ENGINES = ("jax", "ort_float32", "ort_int8")


def models(ctx) -> dict:
    """{"students": [dirs], "teacher": dir or None, "seq_len": int or None} from --search / --student."""
    results, students = float_students(ctx)
    teacher = ctx.teacher or (results.get("teacher") or {}).get("path")
    return {"students": [str(s) for s in students], "seq_len": results.get("seq_len"),
            "teacher": teacher if teacher and Path(teacher, "config.json").is_file() else None}


def convert(paths: list[str], tmp: Path) -> dict[str, dict]:
    """Each model's float32 and int8 ONNX graphs in `tmp`: {path: {"arch", "float32": file, "int8": file}}."""
    from distill.export.hf import load_float_export
    from distill.export.onnx import ONNX_FILE, export_onnx, require

    require("jax2onnx", "onnx", "onnxruntime")  # Skip-worthy: the optional extra
    out = {}
    for i, path in enumerate(paths):
        loaded = load_float_export(path)
        entry = {"arch": loaded.arch.name, "head": loaded.head, "num_labels": loaded.num_labels,
                 "vocab": loaded.arch.vocab_size}
        for scheme in ("float32", "int8"):
            dest = tmp / f"{i:02d}-{scheme}"
            export_onnx(dest, loaded, quantize=None if scheme == "float32" else "int8")
            entry[scheme] = str(dest / ONNX_FILE)
        out[path] = entry
    return out


def _timing(quick: bool) -> dict:
    return {"warmup": 1 if quick else 3, "repeats": 3 if quick else 7, "min_repeat_s": 0.02 if quick else 0.25}


def measure_all(request: dict) -> dict:
    """In the pinned child: every model, engine and batch on `threads` CPUs; milliseconds per call."""
    import jax
    import numpy as np
    import onnxruntime as ort

    from bench.common import make_batch
    from distill.export.hf import load_float_export
    from distill.model.infer import _jitted_logits

    threads, seq, timing = request["threads"], request["seq_len"], _timing(request["quick"])
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    rows = []
    for path, entry in request["models"].items():
        if request["deadline"] and time.time() > request["deadline"]:
            rows.append({"path": path, "skipped": "suite time budget spent"})
            continue
        loaded = load_float_export(path)
        forward = _jitted_logits(loaded.model)
        params = jax.device_put(loaded.params)  # once: host arrays would be copied in with every call
        sessions = {s: ort.InferenceSession(entry[s], options, providers=["CPUExecutionProvider"])
                    for s in ("float32", "int8")}
        for batch in BATCHES:
            data = make_batch(batch, seq, entry["vocab"])
            feeds = {k: data[k].astype(np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")}
            jax_batch = jax.device_put({k: data[k] for k in ("input_ids", "token_type_ids", "attention_mask")})
            calls = {"jax": lambda c: (c, forward(params, jax_batch)),
                     **{f"ort_{s}": (lambda c, s=s: (c, sessions[s].run(None, feeds))) for s in sessions}}
            for engine, call in calls.items():
                sync = jax.block_until_ready if engine == "jax" else (lambda _: None)
                timed = time_steps(call, None, sync, **timing)
                rows.append({"path": path, "arch": entry["arch"], "engine": engine, "batch": batch,
                             "threads": threads, "seq_len": seq, "ms": 1e3 * timed["step_s"]})
    return {"threads": threads, "rows": rows}


def summarise(result: dict, teacher: str | None) -> list[dict]:
    """Ratio rows: ONNX Runtime / JAX, int8 / float32, and speedups over the teacher at batch 1."""
    ms = {(r["path"], r["engine"], r["batch"], r["threads"]): r["ms"] for r in result["rows"] if "ms" in r}
    arch = {r["path"]: r["arch"] for r in result["rows"] if "arch" in r}
    rows = []
    for (path, engine, batch, threads), value in sorted(ms.items()):
        if engine == "jax":
            continue
        base, what = ((path, "jax", batch, threads), "ort / jax") if engine == "ort_float32" else \
            ((path, "ort_float32", batch, threads), "ort int8 / ort float32")
        rows.append({"name": f"{arch[path]} {engine} b{batch} t{threads}", "ours": value, "reference": ms.get(base),
                     "unit": "ms", "ratio": value / ms[base] if ms.get(base) else None, "ratio_is": what})
    for path in arch:
        if teacher is None or path == teacher:
            continue
        for engine in ENGINES:
            t, s = ms.get((teacher, engine, 1, 1)), ms.get((path, engine, 1, 1))
            if t and s:
                rows.append({"name": f"{arch[path]} speedup over the teacher, {engine} b1 t1", "ours": s,
                             "reference": t, "unit": "ms", "ratio": t / s, "ratio_is": "teacher / student"})
    return rows


def part(ctx) -> dict:
    spec = models(ctx)
    paths = spec["students"] + ([spec["teacher"]] if spec["teacher"] else [])
    seq = 16 if ctx.quick else spec["seq_len"] or 128
    with tempfile.TemporaryDirectory(prefix="bench-onnx-") as tmp:
        try:
            converted = convert(paths, Path(tmp))
        except UserError as e:  # the optional packages are missing (`distill.export.onnx.require`)
            raise Skip(str(e)) from None
        results = [run_child("bench.onnx", {"models": converted, "threads": t, "seq_len": seq, "quick": ctx.quick,
                                            "deadline": ctx.deadline}) for t in THREADS]
    merged = {"rows": [r for res in results for r in res["rows"]]}
    return {"seq_len": seq, "teacher": spec["teacher"], "models": {p: {k: v for k, v in e.items()
            if k in ("arch", "head", "num_labels")} for p, e in converted.items()},
            **merged, "ratios": summarise(merged, spec["teacher"])}


if __name__ == "__main__":  # the pinned child of `part`: python -m bench.onnx REQUEST_JSON OUT_FILE
    child_main(measure_all, sys.argv[1:])
