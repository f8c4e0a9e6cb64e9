"""The `bertnas` command: `bertnas {finetune,distill,supernet,search,evaluate,predict,quantize,export} ...`.

  bertnas search --task sst2 --output runs/search-sst2
  bertnas search --task sst2 --smoke-test --output runs/smoke
  bertnas search --resume runs/search-sst2

`search` fine-tunes the teacher (or reuses the cached one), runs a Ray Tune
search over student architectures (local Ray on this machine by default;
`--address auto` or $RAY_ADDRESS joins a cluster), and writes to --output: the
config, results.csv / results.json (every candidate), pareto.png,
leaderboard.txt and the Pareto-front students in export/ (which `bertnas
evaluate` and `bertnas predict` take). By default (--strategy supernet) it
trains one weight-sharing supernet, scores --num-samples candidates with its
weights and trains the best at each --targets speedup further (final/);
--strategy trials distils every candidate for --trial-steps and trains the
most accurate one at least --target-speedup times faster again. Either way
the whole run is planned within --budget-minutes. --quantize int8 adds int8
copies of the front's students (export/<rank>-<arch>-int8), measured like the
others; they join the front.

The other subcommands are `distill.cli`'s tools; `scripts/*.py` call the same
functions. Flags map to each tool's one run config in its module (`config(args)`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from types import ModuleType
from typing import Callable

from distill import cli
from distill.cli import distill as distill_tool
from distill.cli import evaluate as evaluate_tool
from distill.cli import export as export_tool
from distill.cli import finetune as finetune_tool
from distill.cli import predict as predict_tool
from distill.cli import quantize as quantize_tool
from distill.cli import supernet as supernet_tool
from distill.cli.host import retain_freed_memory
from nas.config import ALGORITHMS, SCHEDULERS, STRATEGIES, Constraints, SearchConfig, smoke
from tasks.errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of `bertnas search`."""
    p.add_argument("--task", default="sst2")
    p.add_argument("--teacher", default="minilm", help="fine-tuned teacher directory, or a pre-trained one")
    p.add_argument("--data-dir", default=None, help="folder with the task's files (default $GLUE_DIR/<TASK>)")
    cli.add_data_args(p)
    p.add_argument("--output", default=None, help="output directory (default runs/search-<task>)")
    p.add_argument("--resume", metavar="DIR", default=None, help="continue the interrupted search in DIR")
    p.add_argument("--smoke-test", action="store_true",
                   help="tiny end-to-end run: a data slice, a 24-step supernet and 16 candidates (4 small trials)")
    p.add_argument("--space", default="default",
                   help="preset (default, uniform, shared, smoke, tiny) or a .yaml/.json file")
    p.add_argument("--strategy", default="supernet", choices=list(STRATEGIES),
                   help="supernet (default): train one weight-sharing supernet, score hundreds of candidates with "
                   "its weights, train the best at each --targets; trials: distil each candidate for --trial-steps")
    p.add_argument("--num-samples", type=cli.at_least(1), default=None,
                   help="candidates to try (default 24 trials, 240 with --strategy supernet)")
    p.add_argument("--budget-minutes", type=cli.number(above=0), default=60.0, help="bound on the whole run's wall time")
    p.add_argument("--trial-steps", type=cli.at_least(1), default=600, help="distillation steps of a full trial")
    p.add_argument("--evals-per-trial", type=cli.at_least(1), default=3, help="validation evaluations (scheduler rungs)")
    p.add_argument("--validation", type=cli.at_least(1), default=2000, help="training examples held out to compare candidates")
    p.add_argument("--augment", type=cli.at_least(0), default=0, help="augmented copies per training example")
    _constraint_arguments(p)
    _final_arguments(p)
    cli.add_quantize_arg(p)
    _export_arguments(p)
    _ray_arguments(p)
    p.add_argument("--teacher-epochs", type=cli.at_least(1), default=2)
    p.add_argument("--crf", action=argparse.BooleanOptionalAction, default=None,
                   help="tagging: students with a linear-chain CRF (default: when the teacher has one)")
    p.add_argument("--train-limit", type=cli.at_least(1), default=None)
    p.add_argument("--dev-limit", type=cli.at_least(1), default=None)
    p.add_argument("--seed", type=cli.at_least(0), default=0)
    cli.add_precision_arg(p)
    cli.add_attention_dropout_arg(p)
    cli.add_packing_arg(p)
    p.add_argument("-v", "--verbose", action="store_true")


def _constraint_arguments(p) -> None:
    p.add_argument("--max-latency-ms", type=cli.number(above=0), default=None, help="skip candidates slower than this (batch 1)")
    p.add_argument("--min-speedup", type=cli.number(above=0), default=None, help="skip candidates less than this much faster")
    p.add_argument("--max-params", type=cli.at_least(1), default=None, help="skip candidates with more parameters")
    p.add_argument("--latency-threads", type=cli.at_least(0), default=1,
                   help="CPU threads latency is measured on (0: all; 1 gives stable batch-1 figures)")


def _final_arguments(p) -> None:
    p.add_argument("--target-speedup", type=cli.number(above=0), default=5.0,
                   help="final student: the most accurate candidate at least this much faster than the teacher")
    p.add_argument("--final-steps", type=cli.at_least(0), default=40000,
                   help="training steps of the final student, fewer if the budget ends first (0: none)")
    p.add_argument("--final-augment", type=cli.at_least(0), default=4, help="augmented copies per example for the final student")
    p.add_argument("--final-lr", type=cli.number(above=0), default=5e-5,
                   help="--strategy supernet: the finals' learning rate (they continue from trained supernet weights)")
    p.add_argument("--final-share", type=cli.number(low=0, below=1), default=0.45, help="share of the budget kept for the final student")
    p.add_argument("--targets", default="3,5,10",
                   help="supernet strategy: speedups over the teacher; the best candidate at each is trained further")
    p.add_argument("--supernet-steps", type=cli.at_least(1), default=20000,
                   help="supernet strategy: at most this many supernet training steps (the budget plans fewer)")
    p.add_argument("--local-rounds", type=cli.at_least(0), default=3,
                   help="supernet strategy: rounds of a local search around each target (mutations of the best "
                   "candidates near it, scored with the supernet's weights; 0: none)")
    p.add_argument("--latency-design", type=cli.at_least(3), default=12,
                   help="supernet strategy: candidates measured to fit the latency predictor")


def _export_arguments(p) -> None:
    p.add_argument("--export-onnx", action="store_true",
                   help="also write each float student of the front as ONNX (export/<rank>-<arch>-onnx; with "
                   "--quantize int8 also ONNX Runtime's int8 variant, -onnx-int8), scored on dev with onnxruntime; "
                   "needs the onnx extra (pip install 'bertnas[onnx]')")
    p.add_argument("--hf-layout", action="store_true",
                   help="write shared-layer students (-G) with every layer stored, so transformers loads them")
    cli.add_hub_arg(p, "the exported front (OUTPUT/export: one folder per student, each with its model card)")


def _ray_arguments(p) -> None:
    p.add_argument("--algorithm", default="tpe", choices=list(ALGORITHMS))
    p.add_argument("--scheduler", default="asha", choices=list(SCHEDULERS))
    p.add_argument("--address", default=None, help="Ray cluster address (auto, ray://host:10001); default local")
    p.add_argument("--cpus-per-trial", type=cli.number(low=0), default=0, help="0: a whole node's CPUs")
    p.add_argument("--gpus-per-trial", type=cli.number(low=0), default=0,
                   help="GPUs per trial: a fraction shares a GPU (0.25: four trials, each capped at its share of "
                   "the GPU's memory), a whole number gives a trial a data-parallel mesh over that many")
    p.add_argument("--tpus-per-trial", type=cli.at_least(0), default=0, help="TPU chips per trial (a TPU VM)")
    p.add_argument("--storage-path", default=None, help="Ray results storage (shared FS or URI); default OUTPUT/ray")
    p.add_argument("--optuna-storage", default=None, metavar="URL",
                   help="also keep the Optuna study in this database (e.g. sqlite:///runs/optuna.db), to watch it "
                   "with optuna-dashboard; the study is named after the output directory and its start time")


def _targets(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(t) for t in text.split(","))
    except ValueError:
        raise UserError(f"--targets: expected comma-separated speedups such as 3,5,10; got {text!r}") from None


def config(args: argparse.Namespace) -> SearchConfig:
    """The search's `SearchConfig`, from the flags (the only place they are mapped)."""
    cfg = SearchConfig(
        task=args.task, teacher=args.teacher, data_dir=args.data_dir, data=cli.data_from_args(args), space=args.space,
        strategy=args.strategy,
        num_samples=args.num_samples,
        supernet_steps=args.supernet_steps, latency_design=args.latency_design, targets=_targets(args.targets),
        budget_minutes=args.budget_minutes, trial_steps=args.trial_steps,
        evals_per_trial=args.evals_per_trial, validation=args.validation, augment=args.augment,
        constraints=Constraints(
            max_latency_ms=args.max_latency_ms, min_speedup=args.min_speedup, max_params=args.max_params
        ),
        algorithm=args.algorithm, scheduler=args.scheduler, address=args.address,
        cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial, storage_path=args.storage_path,
        tpus_per_trial=args.tpus_per_trial,
        optuna_storage=args.optuna_storage,
        latency_threads=args.latency_threads, target_speedup=args.target_speedup, final_steps=args.final_steps,
        final_augment=args.final_augment, final_share=args.final_share, final_lr=args.final_lr,
        local_rounds=args.local_rounds, teacher_epochs=args.teacher_epochs,
        train_limit=args.train_limit, dev_limit=args.dev_limit, seed=args.seed, quantize=args.quantize, crf=args.crf,
        export_onnx=args.export_onnx, hf_layout=args.hf_layout, push_to_hub=args.push_to_hub,
        precision=cli.precision(args.precision), attention_dropout=cli.attention_dropout(args.attention_dropout),
        # trials on GPUs or TPUs keep bucketed rows (cuDNN's attention) whatever the driver runs on
        packing=("on" if args.packing == "on" else "off") if args.gpus_per_trial or args.tpus_per_trial
        else cli.packing(args.packing),
    )
    return smoke(cfg) if args.smoke_test else cfg


def search_main(args: argparse.Namespace) -> int:
    # The driver shares the accelerator with the trials: no up-front grab of most of its memory (read when
    # JAX first starts, which is after this).
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    from nas.tune import search

    if args.resume:
        summary = search(None, args.resume, resume=True)
    else:
        summary = search(config(args), args.output or f"runs/search-{args.task}")
    brief = {k: summary.get(k) for k in ("task", "metric", "candidates", "distinct_candidates", "counts", "pareto",
                                         "seconds")}
    final = summary.get("final")
    keys = ("arch", "speedup", "val_metric", "dev_metric", "steps", "export")
    brief["final"] = {k: final.get(k) for k in keys} if final else None
    print(json.dumps(brief))
    return 0


@dataclasses.dataclass(frozen=True)
class Tool:
    """A subcommand: its help text, its flags and what it runs."""

    doc: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    main: Callable[[argparse.Namespace], int]

    @classmethod
    def of(cls, module: ModuleType) -> Tool:
        return cls(module.__doc__, module.add_arguments, module.main)


def on_workers(cfg, args: argparse.Namespace) -> dict:
    """`cfg`'s run as `--workers` Ray Train workers on `--workers-on` devices (`nas.multihost`); rank 0's
    results."""
    from nas.multihost import run_on_workers  # ray and jax: only when used (as `search` does)

    if args.resume:  # ranks other than 0 write scratch directories: only rank 0 would hold checkpoints
        raise UserError("--resume: a run across --workers processes cannot be resumed yet (only rank 0 keeps "
                        "checkpoints); start it again in a new --output")
    return run_on_workers(cfg, args.output, args.workers, resume=args.resume, use_gpu=args.workers_on == "gpu",
                          use_tpu=args.workers_on == "tpu")


def finetune_main(args: argparse.Namespace) -> int:
    """`bertnas finetune`: in this process, or with `--workers N` as N Ray Train workers (`nas.multihost`)."""
    if args.workers == 1:
        return finetune_tool.main(args)
    results = on_workers(finetune_tool.config(args), args)
    print(json.dumps({"best": results["best"], "teacher_dir": results["teacher_dir"]}))
    return 0


def distill_main(args: argparse.Namespace) -> int:
    """`bertnas distill`: in this process, or with `--workers N` as N Ray Train workers (`nas.multihost`)."""
    return distill_tool.main(args, run=on_workers if args.workers > 1 else None)


def supernet_main(args: argparse.Namespace) -> int:
    """`bertnas supernet`: in this process, or with `--workers N` as N Ray Train workers (`nas.multihost`)."""
    return supernet_tool.main(args, run=on_workers if args.workers > 1 else None)


TOOLS: dict[str, Tool] = {
    "finetune": Tool(finetune_tool.__doc__, finetune_tool.add_arguments, finetune_main),
    "distill": Tool(distill_tool.__doc__, distill_tool.add_arguments, distill_main),
    "supernet": Tool(supernet_tool.__doc__, supernet_tool.add_arguments, supernet_main),
    "search": Tool(__doc__, add_arguments, search_main),
    "evaluate": Tool.of(evaluate_tool),
    "predict": Tool.of(predict_tool),
    "quantize": Tool.of(quantize_tool),
    "export": Tool.of(export_tool),
}


def parser() -> argparse.ArgumentParser:
    p = cli.Parser(prog="bertnas", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, tool in TOOLS.items():
        sp = sub.add_parser(name, help=tool.doc.splitlines()[0], description=tool.doc,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        tool.add_arguments(sp)
    return p


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    return parser().parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """`bertnas ...` (the console script), also behind `scripts/*.py`: exits 2 with one line on bad input.
    Before anything starts a thread, glibc is set to keep freed memory (`distill.cli.host`)."""
    retain_freed_memory()
    def run() -> int:
        args = parse(sys.argv[1:] if argv is None else argv)
        cli.setup_logging(getattr(args, "verbose", False))
        return TOOLS[args.command].main(args)

    cli.run(run)


if __name__ == "__main__":
    main()
