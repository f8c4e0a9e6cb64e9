"""Train a weight-sharing supernet on a task: every sub-network of the space inherits its weights.

  bertnas supernet --task sst2 --output runs/supernet-sst2
  bertnas supernet --task sst2 --layers 1,2,3,4 --hidden 128,256,384 --output runs/sn
  bertnas supernet --task sst2 --workers 2 --output runs/sn2     (as 2 Ray Train worker processes)

The supernet starts as the fine-tuned teacher (fine-tuned first if need be)
with its heads, FFN neurons and hidden dims reordered by importance, so a
sub-network keeps the first ones. Each step trains the largest and the
smallest sub-network of the space and --num-sampled random ones on the
teacher's outputs (the sandwich rule). Evaluations score the largest and the
smallest; the best supernet is written to OUTPUT/supernet and cached, so a
later run with the same settings reuses it. With --workers N it runs as N
processes (one per host; Ray Train's JaxTrainer), each feeding its rows of
every batch, without the cache.
"""

from __future__ import annotations

import argparse
import json
from typing import Callable

from distill import cli
from distill.arch import LAYER_MAPS
from tasks.errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    cli.add_run_args(p, lr=1e-4, epochs=1)
    cli.add_workers_args(p)
    p.add_argument("--teacher", default="minilm", help="fine-tuned teacher directory, or a pre-trained one")
    p.add_argument("--teacher-epochs", type=cli.at_least(1), default=2, help="epochs when the teacher must be fine-tuned first")
    p.add_argument("--validation", type=cli.at_least(0), default=0,
                   help="hold out N training examples and evaluate on them instead of dev")
    g = p.add_argument_group("space")
    g.add_argument("--layers", default="1,2,3,4", help="layer counts of the sub-networks")
    g.add_argument("--hidden", default="128,192,256,320,384", help="hidden sizes")
    g.add_argument("--heads", default="2,4,6,8,12", help="attention heads per layer")
    g.add_argument("--ffn", default="256,512,768,1024,1536", help="FFN sizes per layer")
    g.add_argument("--layer-map", default="uniform", choices=list(LAYER_MAPS),
                   help="which supernet layers an L-layer sub-network runs")
    g = p.add_argument_group("training")
    g.add_argument("--num-sampled", type=cli.at_least(0), default=2,
                   help="random sub-networks per step, besides the largest and the smallest")
    g.add_argument("--temperature", type=cli.number(above=0), default=1.0)
    g.add_argument("--hard-weight", type=cli.number(low=0), default=0.5, help="task loss on gold labels")
    g.add_argument("--importance-batches", type=cli.at_least(1), default=8,
                   help="batches that rank heads, neurons and hidden dims for the rewiring")
    g.add_argument("--augment", type=cli.at_least(0), default=0, help="augmented copies per training example")


def _choices(flag: str, value: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in value.split(","))
    except ValueError:
        raise UserError(f"--{flag}: expected comma-separated integers, got {value!r}") from None
    if not values or min(values) < 1:
        raise UserError(f"--{flag}: every choice must be >= 1, got {value!r}")
    return values


def config(args: argparse.Namespace):
    """The run's `SupernetConfig`, from the flags (the only place they are mapped)."""
    from distill.run import AugmentConfig, LossConfig, SubnetChoices, SupernetConfig

    return SupernetConfig(
        task=args.task,
        teacher=args.teacher,
        data_dir=args.data_dir,
        data=cli.data_from_args(args),
        choices=SubnetChoices(
            layers=_choices("layers", args.layers), hidden=_choices("hidden", args.hidden),
            heads=_choices("heads", args.heads), ffn=_choices("ffn", args.ffn), layer_map=args.layer_map,
        ),
        num_sampled=args.num_sampled,
        loss=LossConfig(temperature=args.temperature, hard_weight=args.hard_weight),
        augment=AugmentConfig(copies=args.augment, seed=args.seed),
        optimizer=cli.optimizer_from_args(args),
        loop=cli.loop_from_args(args),
        importance_batches=args.importance_batches,
        train_limit=args.train_limit,
        dev_limit=args.dev_limit,
        validation=args.validation,
        teacher_epochs=args.teacher_epochs,
    )


def main(args: argparse.Namespace, run: Callable | None = None) -> int:
    """The supernet's training; `run(cfg, args) -> results` trains (default: `train_supernet` in this process;
    `bertnas supernet --workers N` passes one that runs it across processes)."""
    from distill.files import enable_compilation_cache
    from distill.run import train_supernet

    # A sandwich compiles a gradient per sub-network shape and batch length (about 100 in the first 200 steps
    # of the default space on SST-2): a second run on the same machine takes them from the disk cache.
    enable_compilation_cache()
    cfg = config(args)
    if run is None:
        cli.check_workers_here(args, "supernet")
        results = train_supernet(cfg, args.output, resume=args.resume, use_cache=not args.no_cache)
    else:
        results = run(cfg, args)
    keys = ("task", "best", "teacher_dev", "steps", "train_examples_per_second", "seconds", "supernet_dir")
    print(json.dumps({k: results[k] for k in keys if k in results}))
    return 0
