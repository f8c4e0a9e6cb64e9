"""Fine-tune a BERT teacher on a task.

  python scripts/finetune_teacher.py --task sst2 --teacher minilm --output runs/teacher-sst2

Data: --data-dir, else $GLUE_DIR/<TASK> (CoNLL: $CONLL_DIR, SQuAD: $SQUAD_DIR).
The best dev checkpoint is written to OUTPUT/teacher in the Hugging Face
layout and cached, so later runs with the same settings reuse it.
"""

from __future__ import annotations

import argparse
import json

from distill import cli


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="sst2", help="task name (sst2, stsb, conll2003, squad, mrpc, ...)")
    p.add_argument("--teacher", default="minilm", help="model directory, alias (minilm) or Hub name")
    p.add_argument("--data-dir", default=None, help="folder with the task's files (default $GLUE_DIR/<TASK>)")
    p.add_argument("--output", required=True, help="run directory")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--max-steps", type=int, default=0, help="stop after N steps (0: all epochs)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-4, help="peak learning rate")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--warmup-ratio", type=float, default=0.1)
    p.add_argument("--schedule", default="linear", choices=["linear", "cosine", "constant"])
    p.add_argument("--optimizer", default="adamw", choices=["adamw", "lamb"])
    p.add_argument("--max-grad-norm", type=float, default=1.0)
    p.add_argument("--layer-lr-decay", type=float, default=1.0, help="layer-wise LR decay factor (1: off)")
    p.add_argument("--freeze-embeddings", action="store_true")
    p.add_argument("--reinit-top-layers", type=int, default=0, help="re-initialise the top k layers")
    p.add_argument("--eval-every", type=int, default=0, help="also evaluate every N steps")
    p.add_argument("--patience", type=int, default=0, help="early stopping after N evaluations without gain")
    p.add_argument("--train-limit", type=int, default=None, help="first N training examples only")
    p.add_argument("--dev-limit", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-cache", action="store_true", help="retrain even if a cached teacher exists")
    p.add_argument("--resume", action="store_true", help="continue the run in --output from its last checkpoint")
    p.add_argument("--checkpoint-every", type=int, default=500, help="save a resumable checkpoint every N steps")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    cli.setup_logging(args.verbose)
    from distill.finetune import FinetuneConfig, finetune
    from distill.optim import OptimizerConfig

    cfg = FinetuneConfig(
        task=args.task,
        teacher=args.teacher,
        data_dir=args.data_dir,
        epochs=args.epochs,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        optimizer=OptimizerConfig(
            name=args.optimizer,
            learning_rate=args.lr,
            weight_decay=args.weight_decay,
            warmup_ratio=args.warmup_ratio,
            schedule=args.schedule,
            max_grad_norm=args.max_grad_norm,
            layer_lr_decay=args.layer_lr_decay,
            freeze_embeddings=args.freeze_embeddings,
        ),
        reinit_top_layers=args.reinit_top_layers,
        eval_every=args.eval_every,
        patience=args.patience,
        train_limit=args.train_limit,
        dev_limit=args.dev_limit,
        checkpoint_every=args.checkpoint_every,
        seed=args.seed,
    )
    results = finetune(cfg, args.output, use_cache=not args.no_cache, resume=args.resume)
    print(json.dumps({"best": results["best"], "teacher_dir": results["teacher_dir"]}))
    return 0


if __name__ == "__main__":
    cli.run(main)
