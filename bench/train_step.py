"""Train-step throughput: our Flax BERT vs transformers' PyTorch BERT, same shape, one run.

  python bench/train_step.py                 # teacher shape (6L-384), batch 32, seq 16/32/64
  python bench/train_step.py --shape base --seq 128
  python bench/train_step.py --precision fp32 bf16   # bf16: ours in bfloat16 compute, PyTorch under autocast

Both sides do one full step: forward, backward, global-norm clipping and an
AdamW update, on a sequence-classification head with dropout on (training
mode), with random token ids, from the same initial weights. Each side runs
in its own process (PyTorch's OpenMP threads keep spinning after its work and
would slow a JAX run in the same process; see `bench/compare.py`). PyTorch
uses as many threads as this process may use (torch 2.13.0 CPU,
`pip install torch==2.13.0`); without torch only our side is measured.
Prints a table and one JSON line per shape.

Also the suite's part `train_step` (`python -m bench`): batch 32, sequence
128, shapes student, teacher and BERT-base, in float32 and, on a CPU where
`--precision auto` picks bf16 (AMX or AVX512-BF16), in bfloat16 too: ours as the
tools train there, PyTorch under CPU autocast to bfloat16 (`--quick`: tiny
shapes, batch 8, sequence 16, float32).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import compare  # noqa: E402
from bench.common import SHAPES, cpu_threads, shape_arch  # noqa: E402
from bench.compare import Case, ratio_rows  # noqa: E402
from distill.cli import BF16_CPU_FLAGS, cpu_flags  # noqa: E402

SHAPE_ORDER = ("student", "teacher", "base")  # cheapest first: a time budget cuts from the end


def cases(quick: bool) -> list[Case]:
    """Float32 cases, then (on a CPU with bfloat16 matmuls, not with `quick`) the bfloat16 ones."""
    batch, seq = (8, 16) if quick else (32, 128)
    precisions = ["fp32"] + (["bf16"] if not quick and cpu_flags() & BF16_CPU_FLAGS else [])
    return [Case("train", shape, batch, seq, p) for p in precisions for shape in SHAPE_ORDER]


def part(ctx) -> dict:
    result = compare.run(cases(ctx.quick), quick=ctx.quick, timing=compare.timing(ctx.quick),
                         deadline=ctx.deadline, weights_dir=ctx.weights_dir)
    return {"timing": compare.timing(ctx.quick), **result, "ratios": ratio_rows(result["comparison"])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="teacher", choices=sorted(SHAPES))
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, nargs="+", default=[16, 32, 64])
    p.add_argument("--steps", type=int, default=10, help="timed steps, after compilation and one warm-up step")
    p.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "bf16"],
                   help="bf16: ours in bfloat16 compute, PyTorch under CPU autocast to bfloat16")
    args = p.parse_args()
    arch = shape_arch(args.shape)
    timing = {"warmup": 0, "repeats": args.steps, "min_repeat_s": 0.0, "max_steps_per_repeat": 1}
    result = compare.run([Case("train", args.shape, args.batch, s, p) for p in args.precision for s in args.seq],
                         quick=False, timing=timing)
    for message in result["messages"]:
        print(message, file=sys.stderr)
    ours = {r["key"]: r for r in result["rows"] if r.get("side") == "ours"}
    print(f"{'shape':>8} {'seq':>4} {'prec':>5} {'ours ex/s':>10} {'torch ex/s':>10} {'ratio':>6}")
    for c in result["comparison"]:
        row = {
            "shape": args.shape,
            "arch": arch.name,
            "batch": args.batch,
            "seq": c["seq"],
            "precision": c["precision"],
            "ours_examples_per_second": c["ours_examples_per_s"],
            "torch_examples_per_second": c["torch_examples_per_s"],
            "ratio": c["ratio"],
            "device": ours[c["key"]]["device"],
            "cpus": cpu_threads(),
        }
        ref = c["torch_examples_per_s"]
        torch_col = f"{ref:10.1f}" if ref else f"{'-':>10}"
        ratio_col = f"{c['ratio']:6.2f}" if ref else f"{'-':>6}"
        print(f"{args.shape:>8} {c['seq']:>4} {c['precision']:>5} {c['ours_examples_per_s']:10.1f} {torch_col} "
              f"{ratio_col}")
        print(json.dumps(row))


if __name__ == "__main__":
    main()
