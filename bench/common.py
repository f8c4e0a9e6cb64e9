"""Shared by the bench scripts: the named shapes, a random batch, the matching HF config, a timer,
and the `Skip` a suite part raises when it cannot run here.

Nothing here imports jax or torch, so a script can set the environment
(XLA memory flags) before either is loaded, and a PyTorch-only child
process never loads JAX.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from distill.arch import BertArch
from distill.cli.host import cpu_info, cpu_threads  # noqa: F401 - the benchmarks' record of the host

HEAD, NUM_LABELS = "classification", 2
"""Every compared model is a sequence classifier with two labels."""
INPUTS = ("input_ids", "token_type_ids", "attention_mask")


class Skip(Exception):
    """A suite part cannot run here (no torch, no search directory, no GPU); the message says why."""


# (layers, hidden, heads, FFN) of the shapes we benchmark.
SHAPES = {
    "teacher": (6, 384, 12, 1536),
    "base": (12, 768, 12, 3072),
    "student": (4, 312, 12, 1200),
}

# Tiny stand-ins for --quick (odd sizes, so shape bugs surface).
QUICK_SHAPES = {
    "base": (2, 36, 3, 72),
    "teacher": (2, 24, 3, 40),
    "student": (1, 18, 3, 30),
}


def shape_arch(shape: str, quick: bool = False) -> BertArch:
    """The named shape (a key of SHAPES) as a uniform BertArch; its tiny stand-in with `quick`."""
    return BertArch.uniform(*(QUICK_SHAPES if quick else SHAPES)[shape])


def run_child(module: str, request: dict) -> dict:
    """`python -m <module> REQUEST_JSON OUT_FILE` (a part's pinned child) and the JSON it wrote;
    a result {"skipped": why} raises Skip, a failed child RuntimeError with its stderr's tail."""
    with tempfile.TemporaryDirectory(prefix="bench-child-") as tmp:
        out = Path(tmp) / "result.json"
        root = str(Path(__file__).resolve().parent.parent)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
        proc = subprocess.run([sys.executable, "-m", module, json.dumps(request), str(out)], env=env,
                              capture_output=True, text=True, timeout=1800)
        if proc.returncode or not out.is_file():
            raise RuntimeError(f"{module} child failed (exit {proc.returncode}): {proc.stderr.strip()[-1500:]}")
        result = json.loads(out.read_text())
    if "skipped" in result:
        raise Skip(result["skipped"])
    return result


def child_main(measure: Callable[[dict], dict], argv: list[str]) -> None:
    """The other end of `run_child`: read the request, pin to its `threads` CPUs (and JAX to the CPU unless
    the request says `"accelerator": true`), write what `measure` returns (or {"skipped": why}) to the out
    file."""
    from nas.latency_child import pin

    request = json.loads(argv[0])
    pin(int(request["threads"]), cpu_only=not request.get("accelerator", False))
    try:
        result = measure(request)
    except Skip as e:
        result = {"skipped": str(e)}
    Path(argv[1]).write_text(json.dumps(result, default=str))


def read_json(path: Path) -> dict:
    """`path`'s JSON object, {} when there is no such file."""
    return json.loads(path.read_text()) if path.is_file() else {}


def float_students(ctx) -> tuple[dict, list[Path]]:
    """(the search's results.json or {}, the float32 students to measure): `--student DIR ...`, else the
    search's exported students (DIR/export/*), int8 and ONNX exports left out. Skip when there are none."""
    search = Path(ctx.search) if ctx.search else None
    results = read_json(search / "results.json") if search else {}
    if search and not results:
        raise Skip(f"{search}: no results.json (not a finished search)")
    students = [Path(s) for s in ctx.students or []]
    if not students and search:
        students = sorted(d for d in (search / "export").glob("*") if (d / "config.json").is_file()
                          and not (d / "model.onnx").is_file())  # not the `--export-onnx` copies
    students = [s for s in students if "quantization_config" not in read_json(s / "config.json")]
    if not students:
        raise Skip("no float32 students: pass --student DIR or a search with exported students")
    return results, students


def make_batch(batch: int, seq: int, vocab: int) -> dict:
    """Random token ids (no padding) and binary labels, as numpy arrays."""
    rng = np.random.default_rng(0)
    low = 1000 if vocab > 1000 else 0
    return {
        "input_ids": rng.integers(low, vocab, (batch, seq)).astype(np.int32),
        "token_type_ids": np.zeros((batch, seq), np.int32),
        "attention_mask": np.ones((batch, seq), np.int32),
        "labels": rng.integers(0, 2, batch).astype(np.int32),
        "weights": np.ones(batch, np.float32),
    }


def torch_autocast(torch, bf16: bool, device: str = "cpu"):
    """PyTorch's autocast to bfloat16 on `device` where `bf16` (its matmuls through oneDNN's bfloat16
    kernels on a CPU, AMX where it has it), else a context that does nothing: the PyTorch side of a bf16
    comparison with float32 weights and optimizer, as PyTorch users train in mixed precision."""
    return torch.autocast(device, dtype=torch.bfloat16, enabled=bf16)


def hf_bert_kwargs(arch: BertArch) -> dict:
    """Keyword arguments of the transformers `BertConfig` with the same shape as `arch`."""
    return {k: v for k, v in arch.to_hf_config().items() if k not in ("model_type", "architectures")}


def time_steps(
    step: Callable[[Any], tuple[Any, Any]],
    carry: Any,
    sync: Callable[[Any], None],
    *,
    warmup: int = 3,
    repeats: int = 5,
    min_repeat_s: float = 0.2,
    max_steps_per_repeat: int = 50,
    max_timed_s: float | None = None,
) -> dict:
    """Time `carry, out = step(carry)` after compilation and warm-up.

    `sync(out)` waits for the device (`jax.block_until_ready`,
    `torch.cuda.synchronize`). The first call (compilation for jitted code)
    is timed on its own; then `warmup` calls; then `repeats` repeats of k
    back-to-back calls, k chosen so one repeat lasts about `min_repeat_s`.
    With `max_timed_s`, slow steps get fewer repeats (at least 3) so the timed
    part lasts about that long. Returns seconds per step: median (the figure
    to report), mean, std, min, max over the repeats, plus the first call's
    time, k and the number of repeats.
    """
    t0 = time.perf_counter()
    carry, out = step(carry)
    sync(out)
    first_s = time.perf_counter() - t0
    for _ in range(warmup):
        carry, out = step(carry)
    sync(out)
    t0 = time.perf_counter()
    carry, out = step(carry)
    sync(out)
    one = max(time.perf_counter() - t0, 1e-6)
    k = max(1, min(max_steps_per_repeat, math.ceil(min_repeat_s / one)))
    if max_timed_s is not None:
        repeats = max(min(3, repeats), min(repeats, int(max_timed_s / (k * one))))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(k):
            carry, out = step(carry)
        sync(out)
        times.append((time.perf_counter() - t0) / k)
    return {
        "step_s": statistics.median(times),
        "step_s_mean": statistics.fmean(times),
        "step_s_std": statistics.pstdev(times),
        "step_s_min": min(times),
        "step_s_max": max(times),
        "first_call_s": first_s,
        "steps_per_repeat": k,
        "repeats": repeats,
    }


def speed_model_dir(spec: str, tmp: Path) -> tuple[Path, str]:
    """`spec`'s model directory and "trained"; where it holds no weights (its config and tokenizer copied to
    a machine without the model's weights), a copy in `tmp` with random weights and "random": the teacher of
    a speed benchmark, whose speed does not depend on its weights."""
    import jax

    from distill.model.bert import build_model, init_params
    from distill.model.modeldir import weight_files
    from distill.model.store import load_tokenizer, read_arch, resolve_model_dir, save_bert

    path = resolve_model_dir(spec)
    if weight_files(path):
        return path, "trained"
    arch = read_arch(path)
    params = jax.device_get(init_params(build_model(arch, "none", 0), jax.random.key(0)))
    return save_bert(tmp / "random-weights", arch, params, load_tokenizer(path), head="none"), "random"
