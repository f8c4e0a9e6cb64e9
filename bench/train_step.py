"""Train-step throughput: our Flax BERT vs transformers' PyTorch BERT, same shape, one run.

  python bench/train_step.py                 # teacher shape (6L-384), batch 32, seq 16/32/64
  python bench/train_step.py --shape base --seq 128

Both sides do one full step: forward, backward, global-norm clipping and an
AdamW update, on a sequence-classification head with dropout on (training
mode), with random token ids. Each side runs in its own process (PyTorch's
OpenMP threads keep spinning after its work and would slow a JAX run in the
same process). PyTorch uses as many threads as there are cores (torch 2.13.0
CPU, `pip install torch==2.13.0`); without torch only our side is measured.
Prints a table and one JSON line per shape.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax

from bench.common import SHAPES, hf_bert_kwargs, make_batch
from distill.config import BertArch
from distill.modeling import build_model, init_params
from distill.optim import OptimizerConfig
from distill.train import TrainState, make_supervised_step


def time_ours(arch: BertArch, batch: dict, steps: int) -> float:
    model = build_model(arch, "classification", 2)
    params = init_params(model, jax.random.key(0))
    tx = OptimizerConfig().build(params, 10_000, arch.num_layers)
    state = TrainState.create(params, tx)
    step = make_supervised_step(model, tx, "classification")
    rng = jax.random.key(0)
    for _ in range(2):  # compile + warm-up
        state, metrics = step(state, batch, rng)
    jax.block_until_ready(metrics)
    t0 = time.perf_counter()
    for _ in range(steps):
        state, metrics = step(state, batch, rng)
    jax.block_until_ready(metrics)
    return (time.perf_counter() - t0) / steps


def time_torch(arch: BertArch, batch: dict, steps: int) -> float | None:
    try:
        import torch
        from transformers import BertConfig, BertForSequenceClassification
    except ImportError:
        return None
    torch.set_num_threads(os.cpu_count() or 1)
    cfg = BertConfig(**hf_bert_kwargs(arch))
    model = BertForSequenceClassification(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, eps=1e-6, weight_decay=0.01)
    inputs = {k: torch.from_numpy(batch[k]).long() for k in ("input_ids", "token_type_ids", "attention_mask")}
    labels = torch.from_numpy(batch["labels"]).long()

    def one():
        opt.zero_grad(set_to_none=True)
        model(**inputs, labels=labels).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    for _ in range(2):
        one()
    t0 = time.perf_counter()
    for _ in range(steps):
        one()
    return (time.perf_counter() - t0) / steps


def _measure_in_subprocess(side: str, shape: str, batch: int, seq: int, steps: int) -> float | None:
    cmd = [sys.executable, __file__, "--side", side, "--shape", shape, "--batch", str(batch), "--seq", str(seq)]
    run = subprocess.run(cmd + ["--steps", str(steps)], capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"{side} benchmark failed:\n{run.stderr[-2000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])["seconds_per_step"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="teacher", choices=sorted(SHAPES))
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, nargs="+", default=[16, 32, 64])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--side", choices=["ours", "torch"], help=argparse.SUPPRESS)
    args = p.parse_args()
    arch = BertArch.uniform(*SHAPES[args.shape])
    if args.side:  # child process: one side, one shape
        batch = make_batch(args.batch, args.seq[0], arch.vocab_size)
        fn = time_ours if args.side == "ours" else time_torch
        print(json.dumps({"seconds_per_step": fn(arch, batch, args.steps)}))
        return
    print(f"{'shape':>8} {'seq':>4} {'ours ex/s':>10} {'torch ex/s':>10} {'ratio':>6}")
    for seq in args.seq:
        ours = _measure_in_subprocess("ours", args.shape, args.batch, seq, args.steps)
        ref = _measure_in_subprocess("torch", args.shape, args.batch, seq, args.steps)
        row = {
            "shape": args.shape,
            "arch": arch.name,
            "batch": args.batch,
            "seq": seq,
            "ours_examples_per_second": args.batch / ours,
            "torch_examples_per_second": args.batch / ref if ref else None,
            "ratio": ref / ours if ref else None,
            "device": jax.devices()[0].device_kind,
            "cpus": os.cpu_count(),
        }
        torch_col = f"{row['torch_examples_per_second']:10.1f}" if ref else f"{'-':>10}"
        ratio_col = f"{row['ratio']:6.2f}" if ref else f"{'-':>6}"
        print(f"{args.shape:>8} {seq:>4} {row['ours_examples_per_second']:10.1f} {torch_col} {ratio_col}")
        print(json.dumps(row))


if __name__ == "__main__":
    main()
