"""Distil a BERT teacher into a compact student for one task.

  bertnas distill --task sst2 --teacher minilm --student 4L-312 --output runs/sst2-4L-312

--teacher is a directory fine-tuned on the task, or a pre-trained model
(`minilm`, a directory, a Hub name) that is fine-tuned first (cached).
--student is a name (4L-312, 6L-384-H6-F1536, 3L-384-H4,6,8-D32) or a JSON
file. The best student (by dev metric) is exported to OUTPUT/export: a
Hugging Face BERT directory our Flax API and transformers both load.
--quantize int8 also writes OUTPUT/export-int8 (`distill.export.int8`) and
reports both models' scores and sizes (results.json `quantized`). --export-onnx also writes
OUTPUT/export-onnx (and with --quantize int8 OUTPUT/export-onnx-int8, ONNX Runtime's int8), evaluated
with onnxruntime (results.json `onnx`; `bertnas export --format onnx` does the same for any export).
Every export gets a model card (README.md). --hf-layout writes a shared-layer student (-G) with every
layer stored, for transformers; --push-to-hub REPO uploads OUTPUT/export to the Hugging Face Hub.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Callable

from distill import cli
from distill.arch import LAYER_MAPS
from tasks.errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    cli.add_run_args(p, lr=2e-4, epochs=3)
    p.add_argument("--teacher", default="minilm", help="fine-tuned teacher directory, or a pre-trained one")
    p.add_argument("--teacher-epochs", type=cli.at_least(1), default=2, help="epochs when the teacher must be fine-tuned first")
    p.add_argument("--student", default="4L-312", help="architecture name (4L-312, 3L-384-H4,6,8-D32, "
                   "4L-384-G0,0,1,1 for shared layers) or JSON file")
    p.add_argument(
        "--crf", action=argparse.BooleanOptionalAction, default=None,
        help="tagging: a linear-chain CRF on the student (default: when the teacher has one; "
        "--crf also gives a teacher fine-tuned here one)",
    )
    p.add_argument(
        "--validation", type=cli.at_least(0), default=0,
        help="hold out N training examples and select on them instead of dev (dev stays unseen)",
    )
    cli.add_quantize_arg(p)
    p.add_argument("--export-onnx", action="store_true",
                   help="also write OUTPUT/export-onnx (bertnas export --format onnx; with --quantize int8 also "
                   "ONNX Runtime's int8 variant, OUTPUT/export-onnx-int8), evaluated with onnxruntime; needs "
                   "the onnx extra (pip install 'bertnas[onnx]')")
    p.add_argument("--hf-layout", action="store_true",
                   help="shared-layer students (-G): write every layer's weights into the export, so transformers "
                   "loads it as a plain BERT (by default each group is stored once: smaller, bertnas only)")
    cli.add_hub_arg(p, "OUTPUT/export (the float32 student)")
    cli.add_workers_args(p)
    _init_arguments(p.add_argument_group("initialisation"))
    _loss_arguments(p.add_argument_group("losses"))
    g = p.add_argument_group("augmentation")
    g.add_argument("--augment", type=cli.at_least(0), default=0, help="augmented copies per training example")
    g.add_argument("--augment-prob", type=cli.number(low=0, high=1), default=0.4, help="probability of replacing each word")
    g.add_argument("--augment-neighbours", type=cli.at_least(1), default=15)


def _init_arguments(g) -> None:
    g.add_argument("--init", default="teacher", choices=["teacher", "random"])
    g.add_argument("--layers", default=None,
                   help="teacher layers for the student: uniform, first, last or 0,2,3,5 (default uniform; with "
                   "--init-from, the layer map the supernet was trained with)")
    g.add_argument("--heads", default="importance", choices=["importance", "norm", "first"])
    g.add_argument("--ffn", default="importance", choices=["importance", "norm", "first"])
    g.add_argument("--hidden", default="slice", choices=["slice", "project"], help="how to reduce the hidden size")
    g.add_argument("--init-from", default=None, metavar="SUPERNET",
                   help="take the student from a supernet (bertnas supernet's OUTPUT/supernet): the first heads, "
                   "FFN neurons and hidden dims of the supernet layers --layers maps to (by default those its "
                   "sub-networks were trained on)")


def _loss_arguments(g) -> None:
    g.add_argument("--logit-loss", default="ce", choices=["ce", "kl", "mse"])
    g.add_argument("--logit-weight", type=cli.number(low=0), default=1.0)
    g.add_argument("--temperature", type=cli.number(above=0), default=1.0)
    g.add_argument("--hard-weight", type=cli.number(low=0), default=0.0, help="task loss on gold labels")
    g.add_argument("--hidden-weight", type=cli.number(low=0), default=0.0)
    g.add_argument("--attention-weight", type=cli.number(low=0), default=0.0, help="> 0 runs the teacher online")
    g.add_argument("--teacher-outputs", default="auto", choices=["auto", "cached", "online"],
                   help="cached: the teacher labels the training set once (on disk under $BERTNAS_CACHE, reused by "
                   "later runs); online: it runs in every step; auto: cached, unless attention scores are distilled "
                   "or the hidden states the losses read would take over 2 GiB")
    g.add_argument("--embedding-weight", type=cli.number(low=0), default=0.0)
    g.add_argument(
        "--layer-map", default=None, help="teacher layer matched by each student layer (default: those of --layers)"
    )
    g.add_argument("--two-stage", action="store_true", help="TinyBERT: intermediate losses first, then prediction")
    g.add_argument("--intermediate-ratio", type=cli.number(above=0, below=1), default=0.5)


def _layers(value: str | None):
    if value is None or value in LAYER_MAPS:
        return value
    try:
        return tuple(int(v) for v in value.split(","))
    except ValueError:
        raise UserError(f"--layers/--layer-map: expected uniform, first, last or e.g. 0,2,3,5; got {value!r}") from None


def config(args: argparse.Namespace):
    """The run's `DistillConfig`, from the flags (the only place they are mapped)."""
    from distill.run import AugmentConfig, DistillConfig, InitConfig, LossConfig, supernet_layer_map

    layers = _layers(args.layers)
    if layers is None:  # the supernet's own map: the sub-networks it trained, not others of the same widths
        layers = supernet_layer_map(args.init_from) if args.init_from else "uniform"

    return DistillConfig(
        task=args.task,
        teacher=args.teacher,
        student=args.student,
        data_dir=args.data_dir,
        data=cli.data_from_args(args),
        init=InitConfig(
            method=args.init, layers=layers, heads=args.heads, ffn=args.ffn, hidden=args.hidden,
            source=args.init_from,
        ),
        loss=LossConfig(
            logits=args.logit_loss, logit_weight=args.logit_weight, temperature=args.temperature,
            hard_weight=args.hard_weight, hidden_weight=args.hidden_weight, attention_weight=args.attention_weight,
            embedding_weight=args.embedding_weight, layer_map=_layers(args.layer_map), two_stage=args.two_stage,
            intermediate_ratio=args.intermediate_ratio,
        ),
        augment=AugmentConfig(
            copies=args.augment, replace_prob=args.augment_prob, neighbours=args.augment_neighbours, seed=args.seed
        ),
        optimizer=cli.optimizer_from_args(args),
        loop=cli.loop_from_args(args),
        train_limit=args.train_limit,
        dev_limit=args.dev_limit,
        validation=args.validation,
        teacher_epochs=args.teacher_epochs,
        crf=args.crf,
        hf_layout=args.hf_layout,
        teacher_outputs=args.teacher_outputs,
    )


def main(args: argparse.Namespace, run: Callable | None = None) -> int:
    """The run, then its int8, ONNX and Hub steps; `run(cfg, args) -> results` trains (default: `distill`
    in this process; `bertnas distill --workers N` passes one that runs it across processes)."""
    from distill.run import distill, export_onnx_run, quantize_run

    cfg = config(args)
    cli.check_hub_arg(args)  # offline or no token: said before the run, not after it
    if args.export_onnx:  # the missing extra named before the run, not after it
        from distill.export.onnx import require

        require("jax2onnx", "onnx", "onnxruntime")
    if run is None:
        cli.check_workers_here(args, "distill")
        results = distill(cfg, args.output, resume=args.resume, use_cache=not args.no_cache)
    else:
        results = run(cfg, args)
    if args.quantize:
        results["quantized"] = quantize_run(cfg, args.output, args.quantize)
    if args.export_onnx:
        results["onnx"] = export_onnx_run(cfg, args.output, args.quantize)
    results["hub"] = _cards(args)
    keys = ("task", "student", "best", "teacher_dev", "gap", "student_params", "seconds", "export", "quantized",
            "onnx", "hub")
    print(json.dumps({k: results[k] for k in keys if k in results}))
    return 0


def _cards(args: argparse.Namespace) -> str | None:
    """Each export of the run gets a card naming this command; with --push-to-hub OUTPUT/export is uploaded
    (its URL returned)."""
    out = Path(args.output)
    if not (out / "export" / "config.json").is_file():
        return None
    for name in ("export-int8", "export-onnx", "export-onnx-int8"):
        if (out / name / "config.json").is_file():
            cli.finish_export(argparse.Namespace(push_to_hub=None), out / name)
    return cli.finish_export(args, out / "export")["hub"]
