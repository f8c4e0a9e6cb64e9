"""The command-line tools of `distill`: one module per tool (`finetune`, `distill`, `evaluate`, `predict`,
`quantize`), each with `add_arguments(parser)`, the mapping of its flags to its one run config, and
`main(args)`; `nas.cli` gathers them (and `search`) under the `bertnas` command.

This file holds their shared plumbing: logging, errors and exit codes. A `UserError` (bad file, flag,
directory or name) prints one line, `error: <message>`, and exits with status 2; an interrupted run
exits with 130. Anything else is a bug and keeps its traceback.

May import `distill.run`, only inside a tool's `main` or config mapping: `--help` and flag errors
answer without loading JAX.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Callable

from distill.export.scheme import SCHEMES
from tasks.errors import UserError


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("jax._src", "absl", "httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def run(main: Callable[[], int | None]) -> None:
    """Call `main()` and turn user errors into a one-line message and exit 2."""
    try:
        code = main()
    except UserError as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]  # one line, always
        print(f"error: {'; '.join(lines) or type(e).__name__}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)


def at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an integer >= `low` (argparse reports anything else as a bad flag value, exit 2)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    return parse


def add_run_args(p, *, lr: float, epochs: int) -> None:
    """Flags shared by the training tools: data, run directory, loop and optimizer."""
    p.add_argument("--task", default="sst2", help="task name (sst2, stsb, conll2003, squad, mrpc, ...)")
    p.add_argument("--data-dir", default=None, help="folder with the task's files (default $GLUE_DIR/<TASK>)")
    p.add_argument("--output", required=True, help="run directory")
    p.add_argument("--resume", action="store_true", help="continue the run in --output from its last checkpoint")
    p.add_argument("--epochs", type=int, default=epochs)
    p.add_argument("--max-steps", type=int, default=0, help="stop after N steps (0: all epochs)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=lr, help="peak learning rate")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--warmup-ratio", type=float, default=0.1)
    p.add_argument("--schedule", default="linear", choices=["linear", "cosine", "constant"])
    p.add_argument("--optimizer", default="adamw", choices=["adamw", "lamb"])
    p.add_argument("--max-grad-norm", type=float, default=1.0)
    p.add_argument("--layer-lr-decay", type=float, default=1.0, help="layer-wise LR decay factor (1: off)")
    p.add_argument("--freeze-embeddings", action="store_true")
    p.add_argument("--eval-every", type=int, default=0, help="also evaluate every N steps")
    p.add_argument("--patience", type=int, default=0, help="early stopping after N evaluations without gain")
    p.add_argument("--train-limit", type=int, default=None, help="first N training examples only")
    p.add_argument("--dev-limit", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-cache", action="store_true", help="recompute instead of reusing cached results")
    p.add_argument("--checkpoint-every", type=int, default=500, help="save a resumable checkpoint every N steps")
    p.add_argument("--profile", type=at_least(0), default=0, metavar="N",
                   help="write a JAX profiler trace of N steps (from step 5) to OUTPUT/profile")
    p.add_argument("-v", "--verbose", action="store_true")


def add_quantize_arg(p) -> None:
    """`--quantize NAME` of the training tools: also an int8 copy of what they export, measured against float32."""
    p.add_argument("--quantize", default=None, choices=list(SCHEMES),
                   help="also quantize the exported model(s) (int8 weights per output channel, activations "
                   "per token) and report accuracy, size and latency next to float32")


def optimizer_from_args(args):
    from distill.run import OptimizerConfig

    return OptimizerConfig(
        name=args.optimizer,
        learning_rate=args.lr,
        weight_decay=args.weight_decay,
        warmup_ratio=args.warmup_ratio,
        schedule=args.schedule,
        max_grad_norm=args.max_grad_norm,
        layer_lr_decay=args.layer_lr_decay,
        freeze_embeddings=args.freeze_embeddings,
    )


def loop_from_args(args):
    from distill.run import LoopConfig

    return LoopConfig(
        epochs=args.epochs,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        eval_every=args.eval_every,
        patience=args.patience,
        checkpoint_every=args.checkpoint_every,
        seed=args.seed,
        profile_steps=args.profile,
    )
