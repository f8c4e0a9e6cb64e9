"""Evaluate a saved model (fine-tuned teacher, exported student or its int8 copy) on a task split.

  bertnas evaluate --model runs/teacher-sst2/teacher --task sst2 --split dev --json
  bertnas evaluate --model runs/search-sst2/final/<id>/run/export --against runs/teacher-sst2/teacher

With --json the last line of stdout is one JSON object with the task's
metrics by name plus `examples` and `examples_per_second`. With --against
REFERENCE it compares the model with another on the same examples instead
(`distill.run.paired_comparison`): both metrics, their difference with a 95%
interval and p-value from a paired bootstrap, and how often they agree.
"""

from __future__ import annotations

import argparse
import json

from distill import cli
from tasks.errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model directory (Hugging Face layout, int8 or ONNX export)")
    p.add_argument("--task", default=None, help="task name (default: the one recorded in the model)")
    p.add_argument("--data-dir", default=None, help="folder with the task's files (default $GLUE_DIR/<TASK>)")
    cli.add_data_args(p)
    p.add_argument("--split", default="dev", help="dev, test, train, ...")
    p.add_argument("--limit", type=cli.at_least(0), default=None, help="first N examples only")
    p.add_argument("--batch-size", type=cli.at_least(1), default=128)
    p.add_argument("--against", default=None, metavar="REFERENCE",
                   help="compare with this model on the same examples (a student with its teacher): the difference "
                   "of the task's metric, its 95%% interval and p-value (paired bootstrap), the agreement")
    p.add_argument("--samples", type=cli.at_least(1), default=None,
                   help="--against: bootstrap resamplings (default 1000)")
    p.add_argument("--json", action="store_true", help="print the metrics as one JSON line")
    p.add_argument("-v", "--verbose", action="store_true")


def main(args: argparse.Namespace) -> int:
    from distill.run import evaluate_dir, paired_comparison

    if args.samples is not None and not args.against:
        raise UserError("--samples: only with --against (the paired bootstrap's resamplings)")
    common = dict(data_dir=args.data_dir, split=args.split, limit=args.limit, batch_size=args.batch_size,
                  spec=cli.data_from_args(args))
    if args.against:
        samples = {} if args.samples is None else {"samples": args.samples}
        result = paired_comparison(args.model, args.against, args.task, **common, **samples)
    else:
        result = evaluate_dir(args.model, args.task, **common)
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:>22}: {v:.4f}" if isinstance(v, float) else f"{k:>22}: {v}")
    return 0
