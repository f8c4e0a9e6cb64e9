"""Our Flax BERT against transformers' PyTorch BERT: the same cases, timed in two child processes.

A `Case` is a mode (`infer`: a deterministic forward; `train`: forward,
backward, global-norm clipping and AdamW with dropout on), a named shape of
`bench.common.SHAPES`, a batch size and a sequence length, always on a
sequence-classification head (2 labels) with random token ids and no padding.

`run(cases, ...)` times the cases first in a JAX child, then in a PyTorch
child (PyTorch's OpenMP threads keep spinning after its work and would slow
JAX in the same process), each with `bench.common.time_steps`, on CPU, with
as many threads as this process may use (XLA's default; `torch.set_num_threads`).

Same weights: the JAX child initialises each shape (seed 0) and writes it in
the Hugging Face layout (`distill.model.hf.to_hf`, safetensors); the PyTorch child
loads that file into `BertForSequenceClassification` (strict) for each case
and, for inference, reports the largest difference from our logits. Without
torch only our side runs and the comparison says so.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import steps
from bench.common import HEAD, NUM_LABELS, cpu_threads, hf_bert_kwargs, make_batch, shape_arch, time_steps
from distill.cli.host import retain_freed_memory


@dataclasses.dataclass(frozen=True)
class Case:
    mode: str  # "infer" or "train"
    shape: str  # a key of bench.common.SHAPES
    batch: int
    seq: int
    precision: str = "fp32"
    """"bf16": ours in bfloat16 compute (`distill.model.bert.in_precision`), PyTorch under CPU autocast to
    bfloat16; "fp32": both in float32."""

    @property
    def key(self) -> str:
        suffix = "" if self.precision == "fp32" else f"/{self.precision}"
        return f"{self.mode}/{self.shape}/b{self.batch}/s{self.seq}{suffix}"

    def fields(self) -> dict:
        return dataclasses.asdict(self) | {"key": self.key}


def timing(quick: bool) -> dict:
    """`time_steps` settings: a smoke test with `quick`; else at least 3 repeats, about 20 s timed per slow case."""
    if quick:
        return {"warmup": 1, "repeats": 3, "min_repeat_s": 0.01, "max_steps_per_repeat": 5}
    return {"warmup": 1, "repeats": 5, "min_repeat_s": 0.3, "max_steps_per_repeat": 50, "max_timed_s": 20.0}


def model_flops(case: Case, quick: bool) -> int:
    """Analytic matmul FLOPs of one step: forward x batch, x3 for a train step (forward + backward)."""
    flops = shape_arch(case.shape, quick).flops(case.seq, HEAD, NUM_LABELS) * case.batch
    return 3 * flops if case.mode == "train" else flops


# ------------------------------------------------------------------- parent


def run(cases: list[Case], *, quick: bool, timing: dict, deadline: float | None = None,
        weights_dir: str | os.PathLike | None = None, per_shape: bool | None = None) -> dict:
    """Both sides of every case; {"rows", "comparison", "messages", "children"}.

    Children run per shape (JAX then PyTorch for one shape before the next)
    unless `per_shape` is False (the default with `quick`: fewer processes).
    A case not started by `deadline` (time.time()) is recorded as skipped.
    """
    per_shape = not quick if per_shape is None else per_shape
    groups = {}
    for c in cases:
        groups.setdefault(c.shape if per_shape else "all", []).append(c)
    rows, messages, children = [], [], []
    with tempfile.TemporaryDirectory(prefix="bench-weights-") as tmp:
        weights = Path(weights_dir or tmp)
        has_torch = importlib.util.find_spec("torch") is not None
        if not has_torch:
            messages.append("PyTorch side skipped: torch is not installed (pip install torch==2.13.0)")
        for group in groups.values():
            for side in ("ours", "torch") if has_torch else ("ours",):
                new, status = _run_child(side, group, quick, timing, weights, deadline)
                rows += new
                children.append(status)
                if status["returncode"] != 0:
                    messages.append(f"{side} child failed (returncode {status['returncode']}): "
                                    f"{status.get('stderr_tail', '')[-400:]}")
    messages += sorted({r["reason"] for r in rows if r.get("mode") == "torch_skipped"})
    rows = [r for r in rows if r.get("mode") != "torch_skipped"]
    return {"rows": rows, "comparison": compare_rows(rows), "messages": messages, "children": children}


def compare_rows(rows: list[dict]) -> list[dict]:
    """One entry per case our side measured: both examples/s and ratio = ours / torch."""
    torch_rows = {r["key"]: r for r in rows if r.get("side") == "torch" and "examples_per_s" in r}
    out = []
    for r in rows:
        if r.get("side") != "ours" or "examples_per_s" not in r:
            continue
        ref = torch_rows.get(r["key"])
        out.append({
            "key": r["key"], "mode": r["mode"], "shape": r["shape"], "arch": r["arch"], "batch": r["batch"],
            "seq": r["seq"], "precision": r.get("precision", "fp32"), "ours_examples_per_s": r["examples_per_s"],
            "torch_examples_per_s": ref["examples_per_s"] if ref else None,
            "ratio": r["examples_per_s"] / ref["examples_per_s"] if ref else None,
            "max_abs_logit_diff": ref.get("max_abs_logit_diff") if ref else None,
        })
    return out


def _run_child(side: str, cases: list[Case], quick: bool, timing: dict, weights: Path, deadline):
    with tempfile.TemporaryDirectory(prefix="bench-rows-") as tmp:
        rows_path = Path(tmp) / "rows.jsonl"
        rows_path.touch()
        cmd = [sys.executable, "-m", "bench.compare", "--side", side, "--rows", str(rows_path),
               "--weights", str(weights), "--cases", json.dumps([dataclasses.asdict(c) for c in cases]),
               "--timing", json.dumps(timing), "--deadline", str(deadline or 0)] + (["--quick"] if quick else [])
        env = {**os.environ, "JAX_PLATFORMS": "cpu"}  # a CPU comparison even on a GPU machine
        # Without a deadline a hung child still ends: generous for the full suite, short for --quick.
        timeout = (deadline - time.time() if deadline else 0) + (300 if quick else 1800)
        root = Path(__file__).resolve().parent.parent
        status = {"side": side, "cases": [c.key for c in cases]}
        t0 = time.time()
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=max(timeout, 60), env=env, cwd=root)
            status["returncode"], stderr = done.returncode, done.stderr
        except subprocess.TimeoutExpired as e:
            status.update(returncode=None, timed_out=True)
            stderr = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        status["elapsed_s"] = time.time() - t0
        if status["returncode"] != 0:
            status["stderr_tail"] = stderr[-3000:]
        rows = [json.loads(line) for line in rows_path.read_text().splitlines() if line.strip()]
    return rows, status


def ratio_rows(comparison: list[dict]) -> list[dict]:
    """The suite table's lines: examples/s of both sides and ours / PyTorch."""
    return [
        {
            "name": f"{c['mode']} {c['shape']} b{c['batch']} s{c['seq']}"
                    + ("" if c.get("precision", "fp32") == "fp32" else f" {c['precision']}"),
            "ours": c["ours_examples_per_s"], "reference": c["torch_examples_per_s"], "unit": "ex/s",
            "ratio": c["ratio"], "ratio_is": "ours / torch",
        }
        for c in comparison
    ]


# -------------------------------------------------------------------- child


def _weights_file(weights: Path, arch) -> Path:
    return weights / f"{arch.name}.safetensors"


def _ours(cases: list[Case], args, add) -> None:
    retain_freed_memory()  # as `bertnas` runs: before JAX starts its threads
    import jax
    import numpy as np
    from safetensors.numpy import save_file

    from distill.model.bert import build_model, init_params
    from distill.model.hf import to_hf

    host_params = {}
    info = {"side": "ours", "device": jax.devices()[0].device_kind, "jax": jax.__version__}

    def measure(case: Case) -> dict:
        arch = shape_arch(case.shape, args.quick)
        if case.shape not in host_params:  # one init per shape, shared with the PyTorch side through a file
            params = jax.device_get(init_params(build_model(arch, HEAD, NUM_LABELS), jax.random.key(0)))
            if not _weights_file(args.weights, arch).is_file():  # the same seed: an earlier part's file is equal
                save_file(to_hf(params, arch), str(_weights_file(args.weights, arch)))
            host_params[case.shape] = params
        batch = make_batch(case.batch, case.seq, arch.vocab_size)
        build = steps.ours_forward if case.mode == "infer" else steps.ours_step
        step, carry = build(arch, host_params[case.shape], batch, case.precision)
        timed = time_steps(step, carry, jax.block_until_ready, **args.timing)
        if case.mode == "infer":
            np.save(_logits_file(args.weights, case), np.asarray(step(carry)[1]))
        return _row(case, arch, args.quick, timed, info)

    _each(cases, args, add, measure)


def _torch(cases: list[Case], args, add) -> None:
    try:
        import numpy as np
        import torch
        import transformers
        from safetensors.torch import load_file
        from transformers import BertConfig, BertForSequenceClassification
    except ImportError as e:
        add({"mode": "torch_skipped", "reason": f"PyTorch side skipped: {e}"})
        return

    torch.set_num_threads(cpu_threads())
    torch.manual_seed(0)
    info = {"side": "torch", "device": "cpu", "torch": torch.__version__, "transformers": transformers.__version__,
            "torch_threads": torch.get_num_threads()}

    def measure(case: Case) -> dict:
        arch = shape_arch(case.shape, args.quick)
        model = BertForSequenceClassification(BertConfig(**hf_bert_kwargs(arch), num_labels=NUM_LABELS))
        weights = _weights_file(args.weights, arch)
        extra = {"same_weights": weights.is_file(), "attn_implementation": model.config._attn_implementation}
        if weights.is_file():
            model.load_state_dict(load_file(str(weights)), strict=True)
        batch = make_batch(case.batch, case.seq, arch.vocab_size)
        build = steps.torch_forward if case.mode == "infer" else steps.torch_step
        step = build(model, batch, case.precision)
        timed = time_steps(step, None, lambda _: None, **args.timing)
        ours = _logits_file(args.weights, case)
        if case.mode == "infer" and ours.is_file():
            extra["max_abs_logit_diff"] = float(np.abs(step(None)[1].float().numpy() - np.load(ours)).max())
        return _row(case, arch, args.quick, timed, info | extra)

    _each(cases, args, add, measure)


def _each(cases: list[Case], args, add, measure) -> None:
    for case in cases:
        if args.deadline and time.time() > args.deadline:
            add({**case.fields(), "side": args.side, "skipped": "suite time budget spent"})
            continue
        try:
            add(measure(case))
        except Exception as e:  # one failing case (e.g. out of memory) must not lose the others
            add({**case.fields(), "side": args.side, "error": f"{type(e).__name__}: {str(e)[:600]}"})
        gc.collect()


def _logits_file(weights: Path, case: Case) -> Path:
    return weights / f"logits-{case.key.replace('/', '_')}.npy"


def _row(case: Case, arch, quick: bool, timed: dict, info: dict) -> dict:
    flops = model_flops(case, quick)
    return {
        **case.fields(), **info, "arch": arch.name, "threads": cpu_threads(), **timed,
        "examples_per_s": case.batch / timed["step_s"], "model_flops_per_step": flops,
        "gflops": flops / timed["step_s"] / 1e9,
    }


def _child(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description="one side of bench.compare (internal)")
    p.add_argument("--side", choices=["ours", "torch"], required=True)
    p.add_argument("--rows", type=Path, required=True)
    p.add_argument("--weights", type=Path, required=True)
    p.add_argument("--cases", type=lambda s: [Case(**c) for c in json.loads(s)], required=True)
    p.add_argument("--timing", type=json.loads, required=True)
    p.add_argument("--deadline", type=float, default=0.0)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)

    def add(row: dict) -> None:
        with open(args.rows, "a") as f:
            f.write(json.dumps(row) + "\n")

    (_ours if args.side == "ours" else _torch)(args.cases, args, add)
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1:]))
