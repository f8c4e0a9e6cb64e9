"""Quantize an exported student to int8: `bertnas quantize --model DIR --output DIR`.

  bertnas quantize --model runs/sst2-4L-312/export --output runs/sst2-4L-312/export-int8
  bertnas quantize --model DIR --output DIR --evaluate --json     # also both models on dev

Dense weights become int8 with a float32 scale per output channel, embedding tables int8 with a scale per
row; activations are quantized per token at run time (`--activations none`: kept float32). The output is
a model directory about a quarter of the float32 export's size, which `bertnas evaluate` and `bertnas
predict` take and `distill.export.load.load_export` loads in one call, with a model card (README.md).
--push-to-hub REPO uploads it to the Hugging Face Hub. With --json the last line of
stdout is one JSON object: sizes, and with --evaluate both models' metrics on --split, the drop and
their agreement.
"""

from __future__ import annotations

import argparse
import json

from distill import cli
from distill.export.scheme import ACTIVATIONS, EMBEDDINGS, QuantConfig


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="float32 model directory (an export)")
    p.add_argument("--output", required=True, help="directory for the int8 model")
    p.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    p.add_argument("--activations", default="dynamic", choices=list(ACTIVATIONS),
                   help="dynamic: int8 per token at run time; none: float32 (weight-only int8)")
    p.add_argument("--embeddings", default="int8", choices=list(EMBEDDINGS), help="embedding tables")
    cli.add_compare_args(p)
    cli.add_hub_arg(p, "the int8 export")
    p.add_argument("--json", action="store_true", help="print the result as one JSON line")
    p.add_argument("-v", "--verbose", action="store_true")


def config(args: argparse.Namespace) -> QuantConfig:
    return QuantConfig(activations=args.activations, embeddings=args.embeddings)


def main(args: argparse.Namespace) -> int:
    from distill.export.int8 import quantize_export

    cfg = config(args)
    cli.check_hub_arg(args)
    result = {"quantization": cfg.to_dict(), **quantize_export(args.model, args.output, cfg, overwrite=args.overwrite)}
    if args.evaluate:
        result["evaluation"] = cli.compare_from_args(args)
    result.update(cli.finish_export(args, args.output))
    if args.json:
        print(json.dumps(result))
    else:
        _print(result, args.evaluate)
    return 0


def _print(result: dict, evaluated: bool) -> None:
    for k in ("path", "arch", "weight_bytes", "source_weight_bytes", "weight_ratio", "total_ratio", "card", "hub"):
        print(f"{k:>22}: {result[k]}")
    if evaluated:
        ev = result["evaluation"]
        print(f"{ev['metric'] + ' float32':>22}: {ev['float32'][ev['metric']]:.4f}")
        print(f"{ev['metric'] + ' int8':>22}: {ev['int8'][ev['metric']]:.4f}  (drop {ev['drop']:+.4f})")
