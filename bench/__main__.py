"""The CPU benchmark suite: `python -m bench [--quick] [--out DIR] [--only PART,...] [--search DIR]`.

Run from the repository root. Parts (each writes <out>/<part>.json; a table of
ratios is printed at the end and saved with everything else in suite.json):

  inference    our Flax BERT vs transformers' PyTorch BERT, forward (bench/inference.py)
  train_step   the same, one training step (bench/train_step.py)
  peak         measured matmul GFLOP/s and the share our steps reach (bench/peak.py)
  students     a search's students vs its teacher on real dev sentences (bench/students.py)
  search_time  where a search's wall time went; teacher forwards per example (bench/search_time.py)
  compile_cache  a trial's compilation with and without the persistent cache (bench/compile_cache.py)
  size         export vs checkpoint bytes per parameter (bench/size.py)
  quantize     int8 students vs their float32 exports: accuracy, size, latency (bench/quantize.py)
  onnx         the same students served by JAX and by ONNX Runtime, float32 and int8, on 1 and 2 threads
               (bench/onnx.py)
  accelerator  GPU/TPU MFU (bench/accelerator.py); skipped on a CPU-only machine
  realdata     fine-tuning and labelling on real sentences, ours vs a dynamic-padding PyTorch loop (bench/realdata.py)
  strategies   the supernet and trials search strategies on SST-2 at equal budget (bench/strategies.py; two
               60-minute searches: only with --only strategies, never in --quick)

With `--search`, the suite also draws the student speedup against accuracy
(bench/plot.py) into <out>/speedup_vs_accuracy.png.

A part that cannot run here (no torch, no search directory, no GPU) records
{"skipped": why} and the suite goes on; a part that fails records its error
and the exit status is 1. `--quick` (tiny shapes, few repeats: a smoke test
for CI) takes 1-3 minutes on 2 cores; the full suite stops starting new
cases after `--budget-min` (18) minutes, so it ends within about 20.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

from bench import (
    compile_cache,
    inference,
    onnx,
    peak,
    quantize,
    realdata,
    search_time,
    size,
    strategies,
    students,
    train_step,
)
from bench.common import Skip, cpu_info, cpu_threads

ROOT = Path(__file__).resolve().parent.parent


def _accelerator(ctx) -> dict:
    from bench import accelerator

    out = ctx.out / "accelerator.json"
    quick = ["--quick", "--label-limit", "512"] if ctx.quick else []
    accelerator.main(["--out", str(out), "--data-root", str(ctx.data_root), *quick])
    result = json.loads(out.read_text())
    if "skipped" in result:
        raise Skip(result["skipped"].removeprefix("accelerator bench skipped: "))
    ratios = [{"name": c["key"], "ours": c["ours_examples_per_s"], "reference": c["torch_examples_per_s"],
               "unit": "ex/s", "ratio": c["ratio"], "ratio_is": "ours / torch"} for c in result["comparison"]]
    label = result.get("label") or {}
    if label.get("ratio"):
        ratios.append({"name": f"label {label['task']} train", "ours": label["ours"]["examples_per_s"],
                       "reference": label["torch"]["examples_per_s"], "unit": "ex/s", "ratio": label["ratio"],
                       "ratio_is": "ours / torch"})
    return {**result, "ratios": ratios}


def _plot(search: Path, out: Path) -> None:
    """Student speedup vs accuracy (bench/plot.py) next to the JSON; a search without scores is only reported."""
    from bench import plot

    try:
        path = plot.plot(plot.load(search, out / "students.json"), out / "speedup_vs_accuracy.png")
        print(f"plot: {path}", flush=True)
    except ValueError as e:
        print(f"plot: skipped: {e}", flush=True)


# name -> (function, stops at the time budget); in the order they run: the cheap parts first,
# `peak` after the two parts whose steps it rates.
PARTS = {
    "search_time": (search_time.part, False),
    "size": (size.part, False),
    "students": (students.part, True),
    "inference": (inference.part, True),
    "train_step": (train_step.part, True),
    "peak": (peak.part, False),
    "quantize": (quantize.part, True),
    "onnx": (onnx.part, True),
    "compile_cache": (compile_cache.part, True),
    "accelerator": (_accelerator, True),
    "realdata": (realdata.part, True),
    "strategies": (strategies.part, False),
}
DEFAULT_PARTS = [p for p in PARTS if p != "strategies"]
"""What runs without --only: every part but the two-search comparison."""
TABLE_ORDER = (
    "realdata", "inference", "train_step", "peak", "students", "quantize", "onnx", "search_time", "compile_cache",
    "size", "accelerator", "strategies",
)


@dataclasses.dataclass
class Context:
    """What every part gets: the command line, the budget, and the results of the parts run before it."""

    quick: bool
    out: Path
    deadline: float | None
    weights_dir: str
    search: str | None = None
    run: str | None = None
    teacher: str | None = None
    students: list[str] = dataclasses.field(default_factory=list)
    data_dir: str | None = None
    latency_threads: int | None = None
    data_root: Path = ROOT.parent / "shared" / "data"
    results: dict = dataclasses.field(default_factory=dict)


def machine() -> dict:
    versions = {}
    for name in ("jax", "jaxlib", "flax", "torch", "transformers"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu": cpu_info(), "cpu_threads": cpu_threads(), "python": platform.python_version(), **versions,
            "xla_flags": os.environ.get("XLA_FLAGS", "")}


def run_part(name: str, ctx: Context) -> dict:
    fn, budgeted = PARTS[name]
    t0, load = time.time(), os.getloadavg()
    try:
        if budgeted and ctx.deadline and t0 > ctx.deadline:
            raise Skip("suite time budget (--budget-min) spent")
        result = fn(ctx)
    except Skip as e:
        result = {"skipped": str(e)}
    except Exception as e:  # noqa: BLE001 - one broken part must not lose the others
        result = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}
    record = {"part": name, "quick": ctx.quick, "elapsed_s": time.time() - t0, "loadavg_start": load,
              "loadavg_end": os.getloadavg(), **result}
    ctx.out.mkdir(parents=True, exist_ok=True)
    (ctx.out / f"{name}.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    return record


def _num(v, unit: str) -> str:
    if v is None:
        return "-"
    text = f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.1f}" if abs(v) >= 100 else f"{v:.3g}"
    return f"{text} {unit}".strip()


def _ratio(r: dict) -> str:
    if r.get("ratio") is None:
        return "-"
    if "share" in r["ratio_is"] or "peak" in r["ratio_is"]:
        return f"{100 * r['ratio']:.1f}%"
    return f"{r['ratio']:.2f}x"


def table(records: dict) -> str:
    lines = [f"{'part':<12} {'case':<46} {'ours':>14} {'reference':>14} {'ratio':>8}  ratio is / note"]
    for name in TABLE_ORDER:
        rec = records.get(name)
        if rec is None:
            continue
        if "skipped" in rec or "error" in rec:
            lines.append(f"{name:<12} {'skipped: ' + rec['skipped'] if 'skipped' in rec else 'ERROR: ' + rec['error']}")
            continue
        for r in rec.get("ratios", []):
            note = "; ".join(filter(None, [r.get("ratio_is"), r.get("note")]))
            lines.append(f"{name:<12} {r['name'][:46]:<46} {_num(r['ours'], r['unit']):>14} "
                         f"{_num(r['reference'], r['unit']):>14} {_ratio(r):>8}  {note}")
        for m in rec.get("messages", []):
            lines.append(f"{name:<12} note: {m[:200]}")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny shapes, few repeats (a smoke test, CI)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="results folder (%(default)s)")
    p.add_argument("--only", type=_parts, default=DEFAULT_PARTS,
                   help=f"comma list of parts: {','.join(PARTS)} (default: all but strategies)")
    p.add_argument("--search",
                   help="a finished search's output directory (parts students, quantize, onnx, search_time, size)")
    p.add_argument("--run", help="a distillation run directory for `size` (default: the search's final run)")
    p.add_argument("--teacher", help="fine-tuned teacher directory for `students` (default: the search's)")
    p.add_argument("--student", dest="students", nargs="+", default=[], help="exported student directories")
    p.add_argument("--data-dir", help="the task's data folder for `students` (default: the search's)")
    p.add_argument("--data-root", type=Path, default=ROOT.parent / "shared" / "data",
                   help="folder with glue/SST-2, glue/STS-B (part realdata; default %(default)s)")
    p.add_argument("--latency-threads", type=int, help="CPU threads for `students` (default: what the search's "
                   "cost model used, 1 without a search; 0: all, in-process)")
    p.add_argument("--threads", type=int, help="run the suite on this many of the CPUs (sched_setaffinity, "
                   "inherited by the children; both frameworks size their thread pools by it)")
    p.add_argument("--budget-min", type=float, help="start no new case after this many minutes (default 18; "
                   "none with --quick)")
    return p


def _parts(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in PARTS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown part(s) {unknown}; valid: {', '.join(PARTS)}")
    return names


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # Before JAX starts here: on a GPU machine the accelerator part's children need the memory.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    if args.threads:
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: args.threads])
    t0 = time.time()
    budget = args.budget_min if args.budget_min is not None else (None if args.quick else 18.0)
    info = machine()
    info["loadavg_at_start"] = load = os.getloadavg()[0]
    print(f"bench suite{' (quick)' if args.quick else ''}: {info['processor']}, {info['cpu_threads']} threads, "
          f"load average {load:.2f}; results in {args.out}", flush=True)
    if load > 0.5 * info["cpu_threads"]:
        print(f"warning: load average {load:.2f} on {info['cpu_threads']} CPUs: other work is running, so timings "
              "are not representative (PyTorch's least: its OpenMP threads wait for descheduled peers)", flush=True)
    records = {}
    with tempfile.TemporaryDirectory(prefix="bench-suite-") as weights:
        ctx = Context(quick=args.quick, out=args.out, deadline=t0 + 60 * budget if budget else None,
                      weights_dir=weights, search=args.search, run=args.run, teacher=args.teacher,
                      students=args.students, data_dir=args.data_dir, latency_threads=args.latency_threads,
                      data_root=args.data_root,
                      results=records)
        for name in (n for n in PARTS if n in args.only):
            rec = records[name] = run_part(name, ctx)
            status = ("skipped: " + rec["skipped"] if "skipped" in rec
                      else "ERROR: " + rec["error"][:300] if "error" in rec else "done")
            print(f"[{time.time() - t0:6.0f} s] {name}: {status} ({rec['elapsed_s']:.0f} s)", flush=True)
    if args.search is not None and records.get("students", {}).get("students"):
        _plot(Path(args.search), Path(args.out))
    text = table(records)
    print(text)
    elapsed = time.time() - t0
    summary = {"quick": args.quick, "elapsed_s": elapsed, "budget_min": budget, "machine": info,
               "busy": info["loadavg_at_start"] > 0.5 * info["cpu_threads"],
               "parts": {n: ("skipped" if "skipped" in r else "error" if "error" in r else "ok")
                         for n, r in records.items()},
               "table": [{"part": n, **r} for n in TABLE_ORDER for r in records.get(n, {}).get("ratios", [])]}
    (args.out / "suite.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"suite done in {elapsed:.0f} s; wrote {args.out}/<part>.json and suite.json")
    return 1 if any(s == "error" for s in summary["parts"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
