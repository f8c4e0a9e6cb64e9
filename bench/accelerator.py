"""Accelerator benchmark: BERT train-step model FLOPs utilisation (MFU), and Flax vs PyTorch.

  python3 bench/accelerator.py --out bench/results/accelerator.json   # on a GPU (or TPU) machine
  python bench/accelerator.py --quick --force --out /tmp/acc.json     # tiny shapes, any backend

Without a GPU or TPU it prints one line saying so, writes {"skipped": reason}
to --out and exits 0; `--force` runs it anyway (on CPU: a smoke test).

What runs (sequence 128; once --budget-s is spent, the cases left are
skipped and say so; bfloat16 cases come before float32 ones):
- peak: a jitted N x N x N matmul (N = 8192) in bfloat16 and float32;
- train: our Flax step (`distill.train.steps.make_supervised_step`: forward,
  backward, global-norm clipping, AdamW; classification head, dropout on)
  on the BERT-base shape (12L-768, 12 heads, FFN 3072), batch 128 and 32;
- infer: forward only, deterministic, on BERT-base, the teacher (6L-384,
  FFN 1536) and a student (4L-312, FFN 1200) shape, batch 128 and 1;
- data parallel, where JAX sees several local devices (`--devices`, default
  all): the first train case and the teacher's first inference case with
  their batch split over the devices as the tools split it
  (`distill.model.sharding.data_parallel`: batch on the mesh's data axis,
  state replicated), each device given its one-device twin's batch; MFU is
  per device, and `scaling` in the JSON is examples/s over devices x the
  twin's (ours only: PyTorch's would take DDP's processes);
- last, diagnostic runs of the first bfloat16 train case (`VARIANTS`, ours
  only): float32 matmul results and GELU inputs, the CPU form (what the
  accelerators' bfloat16 results are worth; `distill.model.bert.bf16_results`),
  attention through XLA instead of cuDNN's fused kernel, and
  attention-probability dropout on (what the fused path is worth). Earlier
  runs also tried the dropout key from `unsafe_rbg`: it gained nothing;
- `--profile`: a JAX profiler trace of a few steps of the first bfloat16 train
  case, summed per XLA op and kind of op (`distill.train.profile`; rows with
  mode "profile": the ops that take the most time per step, and their share),
  to see where a step's time goes;
- the same train and infer cases with transformers'
  `BertForSequenceClassification` (random init, eager; AdamW, fused on CUDA,
  and `clip_grad_norm_`; inference in `torch.inference_mode`), if torch is
  installed; ratio = our examples/s over PyTorch's;
- then, outside the time budget, the teacher (`--label-teacher`, default
  minilm) labelling `--label-task`'s training sentences (default SST-2, all
  of them, from `--data-root`), ours and PyTorch's: `bench.realdata`'s label
  workload (`labelling`). A teacher directory with a config and tokenizer
  but no weights gets random ones (the speed does not depend on them), so a
  machine without the model can still measure it.

Ours is the model the tools train on the device: `in_precision(model,
precision, attention_dropout=...)` as `--precision` and `--attention-dropout
auto` give it (on a GPU or TPU no attention-probability dropout, and in
bfloat16 on an NVIDIA GPU cuDNN's fused attention); PyTorch's config drops
the attention dropout likewise on CUDA (its SDPA attention).

Precision. bfloat16 training keeps float32 master weights and optimizer
state: our matmuls take bfloat16 operands with float32 accumulation
(`distill.model.bert.mixed_matmul`; LayerNorm, softmax, logits and loss
stay float32); PyTorch runs the forward under `torch.autocast(bfloat16)`.
bfloat16 inference stores the weights in bfloat16 on both sides (our params
cast once, `model.to(torch.bfloat16)`). float32 matmuls use TF32 on both
sides: it is JAX's default on Ampere and newer GPUs, and PyTorch is set to
match with `torch.set_float32_matmul_precision("high")`.

Timing: each framework runs in its own child process, JAX first, then
PyTorch, never both on the device at once (JAX does not preallocate). Each
case is compiled (first call, reported as first_call_s), warmed up, then
timed as the median of repeats of back-to-back steps, with
`jax.block_until_ready` / `torch.cuda.synchronize` before each clock read.

Model FLOPs: `BertArch.flops(seq, "classification", 2)` per example forward
(matmuls only, 2 per multiply-add); a train step counts 3x. MFU = achieved
TFLOP/s over the device's nominal dense peak for the compute dtype (bf16 for
bfloat16, TF32 for float32); mfu_measured divides by the measured matmul
peak instead. Goal: bfloat16 train MFU >= 40% on BERT-base.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import realdata  # noqa: E402
from bench.common import SHAPES, hf_bert_kwargs, make_batch, shape_arch, speed_model_dir, time_steps  # noqa: E402
from distill.arch import BertArch  # noqa: E402

DEFAULT_OUT = Path("bench/results/accelerator.json")
MFU_GOAL = 0.40
HEAD, NUM_LABELS = "classification", 2

# Nominal dense peaks in TFLOP/s, (bfloat16, TF32), by a substring of the
# device kind; the first match wins, so the more specific names come first.
NOMINAL_PEAKS = (
    ("H100 NVL", 835.5, 417.5),
    ("H100 PCIe", 756.5, 378.0),
    ("H200 NVL", 835.5, 417.5),
    ("GH200", 989.4, 494.7),
    ("H100", 989.4, 494.7),  # SXM5, e.g. "NVIDIA H100 80GB HBM3"
    ("H200", 989.4, 494.7),
    ("B200", 2250.0, 1100.0),
    ("A100", 312.0, 156.0),
    ("L40S", 362.1, 183.0),
    ("L4", 121.0, 60.0),
    ("TPU v4", 275.0, None),
    ("TPU v5 lite", 197.0, None),
    ("TPU v5", 459.0, None),
    ("TPU v6 lite", 918.0, None),
)


@dataclasses.dataclass(frozen=True)
class Case:
    """One measurement: a mode, a named shape, a batch size and a compute dtype."""

    mode: str  # "train" or "infer"
    shape: str  # a key of SHAPES
    batch: int
    dtype: str  # "bfloat16" or "float32"
    variant: str = ""  # our side only: one of VARIANTS
    devices: int = 1  # above 1, our side only: the batch (`batch` in all) split over this many local devices

    @property
    def key(self) -> str:
        spread = f"d{self.devices}" if self.devices > 1 else ""
        return "/".join(filter(None, (self.mode, self.shape, f"b{self.batch}", self.dtype, self.variant, spread)))

    def fields(self) -> dict:
        return dataclasses.asdict(self) | {"key": self.key}


def nominal_peaks(device_kind: str) -> dict:
    """{"bfloat16": TFLOP/s, "float32": TFLOP/s (TF32)}; empty for an unknown device."""
    for name, bf16, tf32 in NOMINAL_PEAKS:
        if name.lower() in device_kind.lower():
            return {"bfloat16": bf16, "float32": tf32}
    return {}


def arch_for(shape: str, quick: bool) -> BertArch:
    return shape_arch(shape, quick)


INFER_SHAPES = ("base", "teacher", "student")
VARIANTS = {
    "f32-results": "matmul results and GELU inputs in float32 (the CPU form) instead of bfloat16",
    "xla-attn": "attention through XLA's own fusion instead of cuDNN's fused kernel",
    "attn-dropout": "attention-probability dropout on (no fused kernel takes it): the CPU default",
    "no-dropout": "no dropout at all (hidden and attention rates 0): what dropout costs in total",
    "gelu-tanh": "GELU's tanh approximation instead of the exact erf form BERT uses: what the erf costs",
    "rbg": "the dropout key from unsafe_rbg instead of threefry",
}
"""Diagnostic runs of the first bfloat16 train case, ours only: what each lever is worth."""


def plan(args) -> list[Case]:
    """Every case, most important first (the time budget cuts from the end).

    bfloat16 (train, then inference) before float32, the data-parallel cases
    right after the first dtype's; the diagnostic variants last.
    """
    train_batches = sorted(args.train_batches, reverse=True)
    infer_batches = sorted(args.infer_batches, reverse=True)
    dtypes = sorted(args.dtypes, key=lambda d: d != "bfloat16")
    cases = []
    for dtype in dtypes:
        cases += [Case("train", "base", b, dtype) for b in train_batches]
        cases += [Case("infer", s, b, dtype) for s in INFER_SHAPES for b in infer_batches]
        if dtype == dtypes[0] and args.devices > 1:
            cases += spread_cases(args.devices, dtype, train_batches[0], infer_batches[0] if infer_batches else 0)
    if "bfloat16" in args.dtypes and not args.no_variants:
        cases += [Case("train", "base", train_batches[0], "bfloat16", v) for v in args.variants]
    return cases


def spread_cases(devices: int, dtype: str, train_batch: int, infer_batch: int) -> list[Case]:
    """The data-parallel cases over `devices` local devices, each device given the batch its one-device
    twin has (so examples/s over devices x the twin's is the scaling efficiency): the BERT-base train step,
    and the teacher's forward (labelling) where there is inference."""
    cases = [Case("train", "base", train_batch * devices, dtype, devices=devices)]
    if infer_batch:
        cases.append(Case("infer", "teacher", infer_batch * devices, dtype, devices=devices))
    return cases


def _table_order(row: dict) -> tuple:
    return (row["mode"] != "train", row["variant"], row.get("devices", 1), INFER_SHAPES.index(row["shape"]),
            row["dtype"], -row["batch"])


def _timing(args) -> dict:
    if args.quick:
        return {"warmup": 1, "repeats": 3, "min_repeat_s": 0.01, "max_steps_per_repeat": 5}
    return {"warmup": args.warmup, "repeats": args.repeats, "min_repeat_s": 0.2, "max_steps_per_repeat": 50}


def _result(case: Case, arch: BertArch, seq: int, timed: dict, **extra) -> dict:
    flops = (3 if case.mode == "train" else 1) * arch.flops(seq, HEAD, NUM_LABELS) * case.batch
    return {
        **case.fields(),
        "arch": arch.name,
        "seq": seq,
        **extra,
        **timed,
        "model_flops_per_step": flops,
        "examples_per_s": case.batch / timed["step_s"],
        "tflops": flops / timed["step_s"] / 1e12,
    }


class _Rows:
    """Appends one JSON line per result to the file the parent reads back."""

    def __init__(self, path: str):
        self.path = path

    def add(self, row: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")


def _run_cases(cases, measure, rows: _Rows, side: str, deadline: float, cleanup) -> None:
    for case in cases:
        if time.time() > deadline:
            rows.add({**case.fields(), "side": side, "skipped": "time budget (--budget-s) spent"})
            continue
        try:
            rows.add({**measure(case), "side": side})
        except Exception as e:  # one failing case (e.g. out of memory) must not lose the others
            rows.add({**case.fields(), "side": side, "error": f"{type(e).__name__}: {str(e)[:800]}"})
        cleanup()


# ----------------------------------------------------------------- JAX side


def _jax_side(args, rows: _Rows, deadline: float) -> None:
    import gc

    import jax
    import jax.numpy as jnp

    from distill.model.bert import init_params
    from distill.model.sharding import data_parallel

    timing = _timing(args)
    backend = jax.default_backend()
    info = {"side": "ours", "device_type": backend, "device": jax.devices()[0].device_kind}

    def matmul_peak(dtype: str, n: int) -> dict:
        a, b = (jax.random.normal(jax.random.key(i), (n, n), jnp.float32).astype(dtype) for i in (1, 2))
        mm = jax.jit(jnp.dot)
        timed = time_steps(lambda c: (c, mm(a, b)), None, jax.block_until_ready, **timing)
        return {"mode": "peak", "dtype": dtype, "n": n, **info, **timed, "tflops": 2 * n**3 / timed["step_s"] / 1e12}

    for dtype in sorted(args.dtypes, key=lambda d: d != "bfloat16"):
        rows.add(matmul_peak(dtype, args.matmul_size))

    profiled = next((c for c in plan(args) if c.mode == "train" and c.dtype == "bfloat16"), None)

    def measure(case: Case) -> dict:
        arch, base, model = _our_model(case, args.quick, backend)
        # float32 parameters whatever the compute dtype; the float32 model's init is compiled once per shape.
        params = init_params(base, jax.random.key(0))
        batch = make_batch(case.batch, args.seq, arch.vocab_size)
        dp = data_parallel(case.batch, case.devices)
        if case.mode == "train":
            profile = args.profile if case == profiled else None
            timed = _our_train_step(case, base, model, params, batch, dp, timing, rows, profile)
        else:
            timed = _our_forward(case, model, params, batch, dp, timing)
        return _result(case, arch, args.seq, timed, **info, attention=model.attention,
                       attention_dropout=model.attention_dropout)

    _run_cases(plan(args), measure, rows, "ours", deadline, gc.collect)


def _our_model(case: Case, quick: bool, backend: str) -> tuple:
    """(arch, the float32 model, the model the tools train or serve on this device): `--precision` and
    `--attention-dropout auto` (off on accelerators, where bfloat16 attention is cuDNN's fused kernel on
    NVIDIA GPUs), unless the case's variant says otherwise."""
    from distill.model.bert import build_model, in_precision

    arch = arch_for(case.shape, quick)
    if case.variant == "no-dropout":
        arch = dataclasses.replace(arch, hidden_dropout=0.0, attention_dropout=0.0)
    base = build_model(arch, HEAD, NUM_LABELS)
    dropout = case.variant == "attn-dropout" or backend == "cpu"
    model = in_precision(base, "bf16" if case.dtype == "bfloat16" else "fp32", attention_dropout=dropout)
    if case.variant == "xla-attn":
        model = model.clone(attention="xla")
    return arch, base, model


def _place(dp, tree):
    """As the tools place a step's batch (`distill.train.loop`): split over the devices; on one device put
    there once."""
    import jax

    return dp.shard(tree) if dp.size > 1 else jax.device_put(tree)


def _our_train_step(case: Case, base, model, params, batch, dp, timing: dict, rows: _Rows, profile: str | None):
    """The train step timed (state and key replicated over `dp`'s devices, as the tools place them), and
    with `profile` a trace of a few more steps added to `rows`."""
    import jax

    from distill.model import bert
    from distill.model.bert import init_params
    from distill.train.optim import OptimizerConfig
    from distill.train.steps import TrainState, make_supervised_step

    tx = OptimizerConfig().build(params, 10_000, base.arch.num_layers)
    step = make_supervised_step(model, tx, HEAD)
    batch = _place(dp, batch)
    rng = dp.replicate(jax.random.key(0, impl="unsafe_rbg" if case.variant == "rbg" else None))
    state = dp.place_state(TrainState.create(params, tx))
    with _patched(case.variant, bert):  # read when the step is traced, at its first call
        timed = time_steps(lambda st: step(st, batch, rng), state, jax.block_until_ready, **timing)
    if profile:
        fresh = dp.place_state(TrainState.create(init_params(base, jax.random.key(0)), tx))  # the first was donated
        try:  # a failed trace must not lose the timing
            rows.add({**profile_ops(lambda st: step(st, batch, rng), fresh, case, profile), "side": "ours"})
        except Exception as e:
            rows.add({**case.fields(), "mode": "profile", "side": "ours", "error": f"{type(e).__name__}: {e}"})
    return timed


def _our_forward(case: Case, model, params, batch, dp, timing: dict) -> dict:
    """The forward timed, from bfloat16 weights in a bfloat16 case (parameters replicated over `dp`)."""
    import jax
    import jax.numpy as jnp

    from distill.model.infer import logits_step

    if case.dtype != "float32":  # serve from bfloat16 weights
        params = jax.tree.map(lambda p: p.astype(jnp.dtype(case.dtype)), params)
    params = dp.replicate(params)
    forward = jax.jit(functools.partial(logits_step, model=model))
    batch = _place(dp, {k: batch[k] for k in ("input_ids", "token_type_ids", "attention_mask")})
    return time_steps(lambda c: (c, forward(params, batch)), None, jax.block_until_ready, **timing)


def _patched(variant: str, bert):
    """The model changes of the diagnostic variants that no setting reaches (a context: undone after)."""
    from unittest import mock

    import jax

    if variant == "f32-results":
        return mock.patch.object(bert, "bf16_results", lambda: False)
    if variant == "gelu-tanh":
        return mock.patch.object(bert.nn, "gelu", lambda x, approximate=False: jax.nn.gelu(x, approximate=True))
    return contextlib.nullcontext()


def profile_ops(step, state, case: Case, out_dir: str, steps: int = 3, top: int = 25) -> dict:
    """Traces `steps` calls of the (compiled) `step` with the JAX profiler into `out_dir` and sums the
    op times (`distill.train.profile.summarize`): {"mode": "profile", "source", "kinds", "ops", ...}, the
    `top` biggest ops first."""
    import jax

    from distill.train.profile import summarize

    state = jax.block_until_ready(step(state)[0])  # `step` returns (state, metrics) and donates its state
    os.makedirs(out_dir, exist_ok=True)
    trace_dir = tempfile.mkdtemp(prefix="trace-", dir=out_dir)
    with jax.profiler.trace(trace_dir):
        for _ in range(steps):
            state = jax.block_until_ready(step(state)[0])
    return {**case.fields(), "mode": "profile", **summarize(trace_dir, steps, top)}


# ------------------------------------------------------------- PyTorch side


def _torch_side(args, rows: _Rows, deadline: float) -> None:
    import gc

    try:
        import torch
        import transformers
        from transformers import BertConfig, BertForSequenceClassification
    except ImportError as e:
        rows.add({"mode": "torch_skipped", "reason": f"PyTorch side skipped: {e}"})
        return
    if torch.cuda.is_available():
        device = "cuda"
    elif args.force:
        device = "cpu"
        torch.set_num_threads(os.cpu_count() or 1)
    else:
        rows.add({"mode": "torch_skipped", "reason": "PyTorch side skipped: torch sees no CUDA device"})
        return
    torch.set_float32_matmul_precision("high")  # TF32, as JAX's default on GPUs
    torch.manual_seed(0)
    timing = _timing(args)
    info = {
        "side": "torch",
        "device_type": "gpu" if device == "cuda" else "cpu",
        "device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    rows.add({"mode": "torch_info", **info})

    def sync(_):
        if device == "cuda":
            torch.cuda.synchronize()

    def measure(case: Case) -> dict:
        arch = arch_for(case.shape, args.quick)
        dtype = getattr(torch, case.dtype)
        config = BertConfig(**hf_bert_kwargs(arch), num_labels=NUM_LABELS)
        if device == "cuda":  # as ours on accelerators: no attention-probability dropout
            config.attention_probs_dropout_prob = 0.0
        model = BertForSequenceClassification(config).to(device)
        batch = make_batch(case.batch, args.seq, arch.vocab_size)
        inputs = {
            k: torch.from_numpy(batch[k]).long().to(device) for k in ("input_ids", "token_type_ids", "attention_mask")
        }
        attn = getattr(model.config, "_attn_implementation", None)
        if case.mode == "train":
            model.train()
            labels = torch.from_numpy(batch["labels"]).long().to(device)
            opt = torch.optim.AdamW(
                model.parameters(), lr=1e-4, eps=1e-6, weight_decay=0.01, fused=device == "cuda" or None
            )
            autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16)

            def step(c):
                opt.zero_grad(set_to_none=True)
                with autocast:
                    loss = model(**inputs, labels=labels).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                return c, loss

            timed = time_steps(step, None, sync, **timing)
        else:
            model.eval().to(dtype)
            with torch.inference_mode():
                timed = time_steps(lambda c: (c, model(**inputs).logits), None, sync, **timing)
        return _result(case, arch, args.seq, timed, **info, attn_implementation=attn)

    def cleanup():
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()

    # Ours only: the diagnostic variants, and the data-parallel cases (PyTorch would need DDP's processes).
    _run_cases([c for c in plan(args) if not c.variant and c.devices == 1], measure, rows, "torch", deadline, cleanup)


# ------------------------------------------------------------------- parent


def _run_child(side: str, argv: list[str], deadline: float, grace_s: float) -> tuple[list[dict], dict]:
    """Run one side in a fresh process; returns its rows and how it ended."""
    with tempfile.TemporaryDirectory() as tmp:
        rows_path = Path(tmp) / "rows.jsonl"
        rows_path.touch()
        cmd = [sys.executable, str(Path(__file__).resolve()), *argv]
        cmd += ["--side", side, "--rows", str(rows_path), "--deadline", str(deadline)]
        status = {"side": side}
        try:
            run = subprocess.run(cmd, capture_output=True, text=True, timeout=max(deadline - time.time(), 0) + grace_s)
            status["returncode"] = run.returncode
            stderr = run.stderr
        except subprocess.TimeoutExpired as e:
            status["returncode"] = None
            status["timed_out"] = True
            stderr = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        if status["returncode"] != 0:
            status["stderr_tail"] = stderr[-3000:]
        rows = [json.loads(line) for line in rows_path.read_text().splitlines() if line.strip()]
    return rows, status


def _add_utilisation(rows: list[dict], backend: str, nominal: dict) -> dict:
    """Adds mfu / mfu_measured to each timed row; returns the measured peaks."""
    peaks = {r["dtype"]: r["tflops"] for r in rows if r.get("mode") == "peak"}
    for r in rows:
        if r.get("mode") not in ("train", "infer") or "tflops" not in r:
            continue
        same_device, n = r["device_type"] == backend, r.get("devices", 1)  # a data-parallel row: per device
        peak = nominal.get(r["dtype"])
        r["mfu"] = r["tflops"] / n / peak if same_device and peak else None
        r["mfu_measured"] = r["tflops"] / n / peaks[r["dtype"]] if same_device and r["dtype"] in peaks else None
    return peaks


def _compare(rows: list[dict]) -> list[dict]:
    torch_rows = {r["key"]: r for r in rows if r.get("side") == "torch" and "examples_per_s" in r}
    out = []
    for r in rows:
        if r.get("side") != "ours" or "examples_per_s" not in r or r["variant"] or r.get("devices", 1) > 1:
            continue
        ref = torch_rows.get(r["key"])
        out.append(
            {
                "key": r["key"],
                "ours_examples_per_s": r["examples_per_s"],
                "torch_examples_per_s": ref["examples_per_s"] if ref else None,
                "ratio": r["examples_per_s"] / ref["examples_per_s"] if ref else None,
            }
        )
    return out


def _scaling(rows: list[dict]) -> list[dict]:
    """Each data-parallel case against its one-device twin (`spread_cases`: the same batch per device):
    efficiency = examples/s over devices x the twin's (1.0: perfect scaling)."""
    ours = {(r["mode"], r["shape"], r["dtype"], r["batch"], r.get("devices", 1)): r for r in rows
            if r.get("side") == "ours" and "examples_per_s" in r and not r["variant"]}
    out = []
    for (mode, shape, dtype, batch, n), r in ours.items():
        one = ours.get((mode, shape, dtype, batch // n, 1)) if n > 1 else None
        if one:
            out.append({"key": r["key"], "devices": n, "examples_per_s": r["examples_per_s"],
                        "one_device_examples_per_s": one["examples_per_s"],
                        "efficiency": r["examples_per_s"] / (n * one["examples_per_s"])})
    return out


def _summary(rows: list[dict], comparison: list[dict]) -> dict:
    train = [
        r
        for r in rows
        if r.get("side") == "ours" and r.get("mode") == "train" and r.get("shape") == "base" and r.get("mfu")
    ]
    bf16 = [r for r in train if r["dtype"] == "bfloat16" and not r["variant"] and r.get("devices", 1) == 1]
    best = max(bf16, key=lambda r: r["mfu"], default=None)
    ratios = [c["ratio"] for c in comparison if c["ratio"]]
    return {
        "mfu_goal": MFU_GOAL,
        "best_bf16_train_mfu": best["mfu"] if best else None,
        "best_bf16_train_key": best["key"] if best else None,
        "meets_goal": best["mfu"] >= MFU_GOAL if best else None,
        "median_ours_over_torch": statistics.median(ratios) if ratios else None,
    }


def _fmt(value, spec: str, width: int) -> str:
    return f"{value:{width}{spec}}" if value is not None else f"{'-':>{width}}"


def _print_table(result: dict) -> None:
    dev, peaks, nominal = result["device"], result["peak"]["measured_tflops"], result["peak"]["nominal_tflops"]
    print(f"accelerator bench on {dev['kind']} ({dev['backend']}), seq {result['config']['seq']}")
    for dtype, tflops in peaks.items():
        nom = nominal.get(dtype)
        label = "TF32" if dtype == "float32" else dtype
        print(
            f"  peak {dtype:>8}: {tflops:7.1f} TFLOP/s measured ({result['peak']['matmul_size']}^3 matmul)"
            + (f", {nom:.1f} nominal {label}" if nom else ", nominal unknown")
        )
    torch_by_key = {r["key"]: r for r in result["rows"] if r.get("side") == "torch" and "examples_per_s" in r}
    print(f"{'case':<30} {'arch':<18} {'ex/s':>9} {'ms/step':>8} {'TFLOP/s':>8} {'MFU':>6}", end="")
    print(f" {'torch ex/s':>10} {'ratio':>6}")
    ours = [r for r in result["rows"] if r.get("side") == "ours" and r.get("mode") in ("train", "infer")]
    for r in sorted(ours, key=_table_order):
        if "examples_per_s" not in r:
            print(f"{r['key']:<30} {r.get('skipped') or r.get('error', '')}")
            continue
        ref = torch_by_key.get(r["key"])
        mfu = f"{100 * r['mfu']:5.1f}%" if r.get("mfu") is not None else f"{'-':>6}"
        print(
            f"{r['key']:<30} {r['arch']:<18} {r['examples_per_s']:9.1f} {1e3 * r['step_s']:8.2f}"
            f" {r['tflops']:8.2f} {mfu} {_fmt(ref and ref['examples_per_s'], '.1f', 10)}"
            f" {_fmt(ref and r['examples_per_s'] / ref['examples_per_s'], '.2f', 6)}"
        )
    for r in result["scaling"]:
        print(f"{r['key']}: {r['examples_per_s']:.1f} ex/s on {r['devices']} devices, {r['efficiency']:.2f} of "
              f"{r['devices']} x one device's {r['one_device_examples_per_s']:.1f}")
    _print_label(result.get("label") or {})
    for r in result["rows"]:
        if r.get("side") == "torch" and ("error" in r or "skipped" in r):
            print(f"torch {r['key']}: {r.get('error') or r.get('skipped')}")
    for r in result["rows"]:
        if r.get("mode") == "profile" and "ops" in r:
            print(f"profile of {r['key']} ({r['source']}, {r['busy_ms_per_step']:.2f} ms busy per step):")
            print("  by kind: " + ", ".join(f"{k['kind']} {100 * k['share']:.1f}%" for k in r["kinds"][:12]))
            for op in r["ops"][:15]:
                print(f"  {op['ms_per_step']:8.3f} ms {100 * op['share']:5.1f}%  {op['name'][:90]}")
    for note in result["messages"]:
        print(note)
    s = result["summary"]
    if s["best_bf16_train_mfu"] is not None:
        verdict = "meets" if s["meets_goal"] else "misses"
        mfu, key = 100 * s["best_bf16_train_mfu"], s["best_bf16_train_key"]
        print(f"bf16 train MFU {mfu:.1f}% ({key}): {verdict} the >= {100 * MFU_GOAL:.0f}% goal")


def _print_label(label: dict) -> None:
    if "ours" not in label:
        print(f"labelling: {label.get('skipped', 'not run')}")
        return
    ours, ref = label["ours"], label["torch"]
    line = (f"labelling {label['task']} train ({label['sentences']:,} sentences, teacher {label['teacher']}, "
            f"{label['weights']} weights): ours {ours['examples_per_s']:,.0f} ex/s")
    if label["ratio"]:
        line += f", PyTorch {ref['examples_per_s']:,.0f}, ratio {label['ratio']:.2f}"
    print(line + (f" ({ref['skipped']})" if "skipped" in ref else ""))


def _write(path: Path, result: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="tiny shapes and few steps (a smoke test)")
    p.add_argument("--force", action="store_true", help="run even without a GPU/TPU (on CPU)")
    p.add_argument("--seq", type=int, help="sequence length (default 128; 7 with --quick)")
    p.add_argument("--train-batches", type=int, nargs="+", help="default 32 128 (3 with --quick)")
    p.add_argument("--infer-batches", type=int, nargs="*", help="default 1 128 (1 3 with --quick); none: no inference")
    p.add_argument("--dtypes", nargs="+", choices=["bfloat16", "float32"], default=["bfloat16", "float32"])
    p.add_argument("--matmul-size", type=int, help="N of the peak matmul (default 8192; 128 with --quick)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--budget-s", type=float, default=270.0, help="no new case starts after this (default %(default)s)")
    p.add_argument("--no-torch", action="store_true", help="measure our side only")
    p.add_argument("--no-variants", action="store_true", help="skip the diagnostic runs (VARIANTS)")
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS),
                   help="which diagnostic runs (default: all)")
    p.add_argument("--profile", metavar="DIR",
                   help="trace the first bfloat16 train case into DIR; its op times go in the JSON")
    p.add_argument("--devices", type=int, default=0,
                   help="data-parallel cases over this many local devices (default 0: all, where there are "
                   "several; 1: none)")
    p.add_argument("--label-task", default="sst2", choices=[*realdata.TASKS, "none"],
                   help="the teacher labels this task's training set, ours and PyTorch (default %(default)s)")
    p.add_argument("--label-teacher", default="minilm",
                   help="its teacher (default %(default)s); a directory with a config and tokenizer but no "
                   "weights gets random ones")
    p.add_argument("--label-limit", type=int, default=0, help="the first N training sentences (default 0: all)")
    p.add_argument("--data-root", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data",
                   help="where the task's data is (default: ../shared/data)")
    p.add_argument("--side", choices=["jax", "torch"], help=argparse.SUPPRESS)
    p.add_argument("--rows", help=argparse.SUPPRESS)
    p.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    return p


def _parse(argv: list[str]):
    args = _parser().parse_args(argv)
    quick_defaults = {"seq": 7, "train_batches": [3], "infer_batches": [1, 3], "matmul_size": 128}
    full_defaults = {"seq": 128, "train_batches": [32, 128], "infer_batches": [1, 128], "matmul_size": 8192}
    for name, value in (quick_defaults if args.quick else full_defaults).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parse(argv)
    # Before JAX starts: allocate on demand, so the PyTorch child gets the memory.
    os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    if args.side:  # child process: one framework
        (_jax_side if args.side == "jax" else _torch_side)(args, _Rows(args.rows), args.deadline)
        return 0

    import jax

    t0 = time.time()
    backend = jax.default_backend()
    kind = jax.devices()[0].device_kind
    if backend not in ("gpu", "tpu") and not args.force:
        reason = f"accelerator bench skipped: JAX backend is {backend!r} ({kind}), no GPU or TPU (--force runs it)"
        print(reason)
        _write(args.out, {"skipped": reason, "backend": backend, "device_kind": kind})
        return 0

    if args.devices < 0 or args.devices > jax.local_device_count():
        print(f"--devices: {args.devices} asked for, this machine has {jax.local_device_count()}", file=sys.stderr)
        return 2
    argv += ["--devices", str(args.devices or jax.local_device_count())]  # the children plan the same cases
    args = _parse(argv)
    rows, children, messages = [], [], []

    def finish(label: dict | None = None) -> dict:  # written after each child, so a cut-off run still leaves results
        result = _assemble(args, jax, backend, kind, rows, children, messages, time.time() - t0)
        result["label"] = label or {}
        _write(args.out, result)
        return result

    _run_side("jax", argv, t0 + 0.7 * args.budget_s, 180, rows, children, messages)
    finish()
    if args.no_torch:
        messages.append("PyTorch side skipped: --no-torch")
    elif importlib.util.find_spec("torch") is None:
        messages.append("PyTorch side skipped: torch is not installed")
    else:
        _run_side("torch", argv, max(t0 + args.budget_s, time.time() + 90), 120, rows, children, messages)
    finish()
    _print_table(finish(labelling(args)))
    print(f"wrote {args.out}")
    return 0


def labelling(args) -> dict:
    """The teacher labelling `--label-task`'s training sentences on this device, ours and PyTorch's: the label
    workload of `bench.realdata` (ours: the tools' batches, buckets fitted to the data, in bfloat16 where
    the bench measures it; PyTorch: length-sorted batches of 128 padded per batch, under bfloat16 autocast
    on a GPU). It runs after the cases, outside `--budget-s`: one pass each side."""
    if args.label_task == "none":
        return {"skipped": "--label-task none"}
    bf16 = "bfloat16" in args.dtypes
    strategy = "after-bf16" if bf16 else "after"
    with tempfile.TemporaryDirectory(prefix="bench-teacher-") as tmp:
        try:
            teacher, weights = speed_model_dir(args.label_teacher, Path(tmp))
            run = realdata.run(args.label_task, args.data_root, steps=1, label_limit=args.label_limit,
                               limit=args.label_limit or None, teacher=str(teacher), strategies=(strategy,),
                               torch_precision="bf16" if bf16 else "fp32", workloads=("label",),
                               reference=not args.no_torch)
        except Exception as e:  # noqa: BLE001 - the cases already measured must still be written
            return {"skipped": f"{type(e).__name__}: {str(e)[:800]}"}
    ours, ref = run["ours"][strategy]["label"], run["torch"].get("label")
    return {"task": args.label_task, "teacher": args.label_teacher, "weights": weights, "strategy": strategy,
            "sentences": ours["examples"], "ours": ours, "ours_side": _without(run["ours"], strategy),
            "torch": ref or run["torch"], "torch_side": _without(run["torch"], "label"),
            "ratio": ours["examples_per_s"] / ref["examples_per_s"] if ref else None}


def _without(side: dict, key: str) -> dict:
    """What a `bench.realdata` side says of itself (device, precision, versions), without its figures."""
    return {k: v for k, v in side.items() if k != key}


def _run_side(side, argv, deadline, grace_s, rows: list, children: list, messages: list) -> None:
    new_rows, status = _run_child(side, argv, deadline, grace_s)
    rows += new_rows
    children.append(status)
    messages += [r["reason"] for r in new_rows if r.get("mode") == "torch_skipped"]
    if status["returncode"] != 0:
        print(f"--- {side} child stderr (tail) ---\n{status['stderr_tail'][-1500:]}", file=sys.stderr)
        messages.append(f"{side} child failed (returncode {status['returncode']}); see children in the JSON")


def _assemble(args, jax, backend: str, kind: str, rows, children, messages, elapsed_s: float) -> dict:
    nominal = nominal_peaks(kind) if backend in ("gpu", "tpu") else {}
    peaks = _add_utilisation(rows, backend, nominal)
    comparison = _compare(rows)
    torch_info = next((r for r in rows if r.get("mode") == "torch_info"), {})
    return {
        "device": {
            "backend": backend,
            "kind": kind,
            "count": jax.device_count(),
            "forced": backend not in ("gpu", "tpu"),
            "jax": jax.__version__,
            "python": platform.python_version(),
            "torch": torch_info.get("torch"),
            "transformers": torch_info.get("transformers"),
            "torch_device": torch_info.get("device"),
            "xla_flags": os.environ.get("XLA_FLAGS", ""),
        },
        "config": {
            "quick": args.quick,
            "seq": args.seq,
            "train_batches": args.train_batches,
            "infer_batches": args.infer_batches,
            "dtypes": args.dtypes,
            "head": HEAD,
            "num_labels": NUM_LABELS,
            "timing": _timing(args),
            "budget_s": args.budget_s,
            "devices": args.devices,
            "shapes": {s: arch_for(s, args.quick).name for s in SHAPES},
        },
        "peak": {"matmul_size": args.matmul_size, "measured_tflops": peaks, "nominal_tflops": nominal},
        "rows": [r for r in rows if r.get("mode") not in ("torch_info", "torch_skipped")],
        "comparison": comparison,
        "scaling": _scaling(rows),
        "summary": _summary(rows, comparison),
        "messages": list(messages),
        "children": list(children),
        "elapsed_s": elapsed_s,
    }


if __name__ == "__main__":
    sys.exit(main())
