"""Suite part `compile_cache`: a trial's compilation with and without the persistent compilation cache.

A search trial jits one distillation train step per length bucket (16, 32,
48, 64 for SST-2). `distill.files.enable_compilation_cache` persists those
compilations under `$BERTNAS_CACHE/jax`, so a repeated architecture, a
resumed trial or a second search on the task loads them instead. This part
measures exactly that: two child processes, one after the other, on the
same fresh cache directory, each building the trial's train step
(`distill.train.steps.make_train_step` with cached teacher logits, AdamW, batch 32)
for the search's final architecture (else the student shape) and timing the
first call on each bucket (trace + compile or cache load + one step) and a
second call (one step). The first child starts with an empty cache (what a
new architecture costs), the second finds it filled. Compilation seconds =
first call - second call, summed over the buckets. Each child also reports the
files in the cache and the compilations it loaded from the cache (`cache_hits`)
and wrote to it (`cache_writes`), counted with `jax.monitoring`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import shape_arch

ROOT = Path(__file__).resolve().parent.parent
BUCKETS = (16, 32, 48, 64)


def _arch_name(ctx) -> str:
    if ctx.search and (Path(ctx.search) / "results.json").is_file():
        res = json.loads((Path(ctx.search) / "results.json").read_text())
        finals = [res.get("final") or {}] + [t for t in res.get("trials", []) if t.get("trial_id") == "final"]
        for final in finals:
            if final.get("arch"):
                return final["arch"]
    return shape_arch("student", ctx.quick).name


def part(ctx) -> dict:
    arch = _arch_name(ctx)
    buckets = (8, 16) if ctx.quick else BUCKETS
    batch = 4 if ctx.quick else 32
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-jax-cache-") as cache:
        for label in ("empty cache", "warm cache"):
            runs.append({"cache": label, **_in_child(arch, buckets, batch, cache)})
    cold, warm = (r["compile_s"] for r in runs)
    ratios = [{"name": f"trial compilation, {arch}, {len(buckets)} buckets", "ours": warm, "reference": cold,
               "unit": "s", "ratio": warm / cold if cold > 0 else None,
               "ratio_is": "warm / empty cache",
               "note": f"{cold - warm:.1f} s saved per repeated architecture or resumed trial"}]
    return {"arch": arch, "buckets": list(buckets), "batch": batch, "runs": runs, "ratios": ratios}


def _in_child(arch: str, buckets, batch: int, cache: str) -> dict:
    env = {**os.environ, "BERTNAS_CACHE": cache, "PYTHONPATH": os.pathsep.join(
        [str(ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))}
    cmd = [sys.executable, "-m", "bench.compile_cache", "--arch", arch, "--batch", str(batch),
           "--buckets", ",".join(map(str, buckets))]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"compile_cache child failed ({done.returncode}): {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def child(arch_name: str, buckets: list[int], batch_size: int) -> dict:
    """In this process: build the trial's train step and time the first and second call per bucket."""
    t_import = time.perf_counter()
    import jax
    import numpy as np

    from bench.common import make_batch
    from distill.arch import parse_arch_name
    from distill.files import enable_compilation_cache
    from distill.kd.objective import LossConfig, TeacherOutputs
    from distill.model.bert import build_model, init_params
    from distill.train.optim import OptimizerConfig
    from distill.train.steps import TrainState, make_train_step

    cache = enable_compilation_cache()
    events = {"/jax/compilation_cache/cache_hits": 0, "/jax/compilation_cache/cache_misses": 0}

    def count(event: str, **_) -> None:  # hits: loaded from the cache; misses: compiled and written to it
        if event in events:
            events[event] += 1

    jax.monitoring.register_event_listener(count)
    arch = parse_arch_name(arch_name)
    model = build_model(arch, "classification", 2)
    params = init_params(model, jax.random.key(0))
    tx = OptimizerConfig().build(params, 1000, arch.num_layers)
    cfg = LossConfig(temperature=2.0, hard_weight=0.5)
    step = make_train_step(model, None, tx, "classification", cfg, tuple(range(arch.num_layers)), "all")
    state = TrainState.create(params, tx)
    import_s = time.perf_counter() - t_import
    rows = []
    for t in buckets:
        batch = make_batch(batch_size, t, arch.vocab_size)
        teacher = TeacherOutputs(np.random.default_rng(t).normal(size=(batch_size, 2)).astype(np.float32))
        times = []
        for _ in range(2):
            t0 = time.perf_counter()
            state, metrics = step(state, batch, jax.random.key(1), teacher)
            jax.block_until_ready(metrics)
            times.append(time.perf_counter() - t0)
        rows.append({"seq": t, "first_call_s": times[0], "step_s": times[1], "compile_s": max(times[0] - times[1], 0.0)})
    entries = sum(1 for p in Path(cache).rglob("*") if p.is_file())
    return {"arch": arch.name, "setup_s": import_s, "buckets": rows,
            "compile_s": sum(r["compile_s"] for r in rows), "cache_entries": entries,
            "cache_hits": events["/jax/compilation_cache/cache_hits"],
            "cache_writes": events["/jax/compilation_cache/cache_misses"]}


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m bench.compile_cache", description=__doc__.splitlines()[0])
    p.add_argument("--arch", default=shape_arch("student").name)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--buckets", default=",".join(map(str, BUCKETS)))
    args = p.parse_args(argv)
    print(json.dumps(child(args.arch, [int(b) for b in args.buckets.split(",")], args.batch)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
