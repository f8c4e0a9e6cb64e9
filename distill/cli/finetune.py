"""Fine-tune a BERT teacher on a task.

  bertnas finetune --task sst2 --teacher minilm --output runs/teacher-sst2
  bertnas finetune --task conll2003 --crf --output runs/teacher-conll-crf
  bertnas finetune --task ner --data-dir data/msra --teacher bert-base-chinese --crf --output runs/msra

Data: --data-dir, else $GLUE_DIR/<TASK> (CoNLL: $CONLL_DIR, SQuAD: $SQUAD_DIR).
Task `ner` is tagging on any train.txt/dev.txt with `token tag` lines (one
Chinese character per line works), its IOB2 tags read from train.txt ($NER_DIR).
The best dev checkpoint is written to OUTPUT/teacher in the Hugging Face
layout and cached, so later runs with the same settings reuse it.
"""

from __future__ import annotations

import argparse
import json

from distill import cli


def add_arguments(p: argparse.ArgumentParser) -> None:
    cli.add_run_args(p, lr=1e-4, epochs=3)
    p.add_argument("--teacher", default="minilm", help="model directory, alias (minilm) or Hub name")
    p.add_argument("--reinit-top-layers", type=cli.at_least(0), default=0, help="re-initialise the top k layers")
    p.add_argument("--crf", action="store_true", help="tagging: a linear-chain CRF over the tags (Viterbi decoding)")
    cli.add_workers_args(p)


def config(args: argparse.Namespace):
    """The run's `FinetuneConfig`, from the flags (the only place they are mapped)."""
    from distill.run import FinetuneConfig

    return FinetuneConfig(
        task=args.task,
        teacher=args.teacher,
        data_dir=args.data_dir,
        data=cli.data_from_args(args),
        optimizer=cli.optimizer_from_args(args),
        loop=cli.loop_from_args(args),
        reinit_top_layers=args.reinit_top_layers,
        train_limit=args.train_limit,
        dev_limit=args.dev_limit,
        crf=args.crf,
    )


def main(args: argparse.Namespace) -> int:
    from distill.run import finetune

    cli.check_workers_here(args, "finetune")
    results = finetune(config(args), args.output, use_cache=not args.no_cache, resume=args.resume)
    print(json.dumps({"best": results["best"], "teacher_dir": results["teacher_dir"]}))
    return 0
