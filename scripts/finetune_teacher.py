"""Fine-tune a BERT teacher on a task.

  python scripts/finetune_teacher.py --task sst2 --teacher minilm --output runs/teacher-sst2
  python scripts/finetune_teacher.py --task conll2003 --crf --output runs/teacher-conll-crf
  python scripts/finetune_teacher.py --task ner --data-dir data/msra --teacher bert-base-chinese --crf \
      --output runs/msra

Data: --data-dir, else $GLUE_DIR/<TASK> (CoNLL: $CONLL_DIR, SQuAD: $SQUAD_DIR).
Task `ner` is tagging on any train.txt/dev.txt with `token tag` lines (one
Chinese character per line works), its IOB2 tags read from train.txt ($NER_DIR).
The best dev checkpoint is written to OUTPUT/teacher in the Hugging Face
layout and cached, so later runs with the same settings reuse it.
"""

from __future__ import annotations

import argparse
import json

import _paths  # noqa: F401  (before any package import)
from distill import cli


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_run_args(p, lr=1e-4, epochs=3)
    p.add_argument("--teacher", default="minilm", help="model directory, alias (minilm) or Hub name")
    p.add_argument("--reinit-top-layers", type=int, default=0, help="re-initialise the top k layers")
    p.add_argument("--crf", action="store_true", help="tagging: a linear-chain CRF over the tags (Viterbi decoding)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    cli.setup_logging(args.verbose)
    from distill.finetune import FinetuneConfig, finetune

    cfg = FinetuneConfig(
        task=args.task,
        teacher=args.teacher,
        data_dir=args.data_dir,
        epochs=args.epochs,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        optimizer=cli.optimizer_from_args(args),
        reinit_top_layers=args.reinit_top_layers,
        eval_every=args.eval_every,
        patience=args.patience,
        train_limit=args.train_limit,
        dev_limit=args.dev_limit,
        checkpoint_every=args.checkpoint_every,
        seed=args.seed,
        crf=args.crf,
    )
    results = finetune(cfg, args.output, use_cache=not args.no_cache, resume=args.resume)
    print(json.dumps({"best": results["best"], "teacher_dir": results["teacher_dir"]}))
    return 0


if __name__ == "__main__":
    cli.run(main)
