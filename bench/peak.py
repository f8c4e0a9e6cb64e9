"""Suite part `peak`: this CPU's measured matmul peak, and the share of it our steps reach.

Peak: a jitted float32 N x N by N x N `jnp.dot` (N = 4096; 512 with
`--quick`), 2 N^3 FLOPs, timed with `bench.common.time_steps` (median):
GFLOP/s. Utilisation: every step the `inference` and `train_step` parts
timed in this run, at its analytic FLOPs (`BertArch.flops`: matmuls only, 2
per multiply-add; a train step counts 3 forwards) over its median time, as a
fraction of that peak; the same FLOPs for PyTorch's step, so both sides'
fractions compare directly. Runs in the suite's process, after those parts.
"""

from __future__ import annotations

from bench.common import time_steps


def measure_peak(n: int, timing: dict) -> dict:
    import jax
    import jax.numpy as jnp

    cpu = jax.devices("cpu")[0]
    with jax.default_device(cpu):
        a, b = (jax.random.normal(jax.random.key(i), (n, n), jnp.float32) for i in (1, 2))
        mm = jax.jit(jnp.dot)
        timed = time_steps(lambda c: (c, mm(a, b)), None, jax.block_until_ready, **timing)
    return {"n": n, "dtype": "float32", "device": cpu.device_kind, **timed, "gflops": 2 * n**3 / timed["step_s"] / 1e9}


def utilisation(rows: list[dict], peak_gflops: float) -> list[dict]:
    """One entry per timed case: both sides' GFLOP/s and their fraction of the peak."""
    by_key: dict[str, dict] = {}
    for r in rows:
        if "gflops" in r:
            by_key.setdefault(r["key"], {"key": r["key"], "model_flops_per_step": r["model_flops_per_step"]})
            by_key[r["key"]][f"{r['side']}_gflops"] = r["gflops"]
            by_key[r["key"]][f"{r['side']}_of_peak"] = r["gflops"] / peak_gflops
    return list(by_key.values())


def ratio_rows(peak: dict, entries: list[dict]) -> list[dict]:
    out = [{"name": f"matmul {peak['n']}^3 {peak['dtype']}", "ours": peak["gflops"], "reference": None,
            "unit": "GFLOP/s", "ratio": None, "ratio_is": "", "note": "the peak below"}]
    for e in entries:
        if "ours_gflops" not in e:
            continue
        torch_share = f"torch {100 * e['torch_of_peak']:.1f}% of peak" if "torch_of_peak" in e else ""
        out.append({"name": e["key"], "ours": e["ours_gflops"], "reference": peak["gflops"], "unit": "GFLOP/s",
                    "ratio": e["ours_of_peak"], "ratio_is": "ours / peak", "note": torch_share})
    return out


def part(ctx) -> dict:
    timing = ({"warmup": 1, "repeats": 3, "min_repeat_s": 0.05, "max_steps_per_repeat": 5} if ctx.quick
              else {"warmup": 2, "repeats": 5, "min_repeat_s": 0.5, "max_steps_per_repeat": 20})
    peak = measure_peak(512 if ctx.quick else 4096, timing)
    rows = [r for name in ("inference", "train_step") for r in ctx.results.get(name, {}).get("rows", [])]
    entries = utilisation(rows, peak["gflops"])
    note = [] if entries else ["no inference/train_step results in this run: only the peak was measured"]
    return {"peak": peak, "utilisation": entries, "messages": note, "ratios": ratio_rows(peak, entries)}
