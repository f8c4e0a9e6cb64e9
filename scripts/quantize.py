"""Quantize an exported student to int8: `python scripts/quantize.py --model DIR --output DIR`.

  python scripts/quantize.py --model runs/sst2-4L-312/export --output runs/sst2-4L-312/export-int8
  python scripts/quantize.py --model DIR --output DIR --evaluate --json     # also both models on dev

Dense weights become int8 with a float32 scale per output channel, embedding tables int8 with a scale per
row; activations are quantized per token at run time (`--activations none`: kept float32). The output is
a model directory about a quarter of the float32 export's size, which evaluate.py and predict.py take and
`distill.export.load_export` loads in one call. With --json the last line of stdout is one JSON object:
sizes, and with --evaluate both models' metrics on --split, the drop and their agreement.
"""

from __future__ import annotations

import argparse
import json

import _paths  # noqa: F401  (before any package import)
from distill import cli


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="float32 model directory (an export)")
    p.add_argument("--output", required=True, help="directory for the int8 model")
    p.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    p.add_argument("--activations", default="dynamic", choices=["dynamic", "none"],
                   help="dynamic: int8 per token at run time; none: float32 (weight-only int8)")
    p.add_argument("--embeddings", default="int8", choices=["int8", "float32"], help="embedding tables")
    p.add_argument("--evaluate", action="store_true", help="evaluate both models on --split of their task")
    p.add_argument("--task", default=None, help="task name (default: the one recorded in the model)")
    p.add_argument("--data-dir", default=None, help="folder with the task's files (default $GLUE_DIR/<TASK>)")
    p.add_argument("--split", default="dev")
    p.add_argument("--limit", type=cli.at_least(1), default=None, help="first N examples only")
    p.add_argument("--batch-size", type=cli.at_least(1), default=128)
    p.add_argument("--json", action="store_true", help="print the result as one JSON line")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    cli.setup_logging(args.verbose)
    from distill.quantize import QuantConfig, compare, quantize_export

    cfg = QuantConfig(activations=args.activations, embeddings=args.embeddings)
    result = {"quantization": cfg.to_dict(), **quantize_export(args.model, args.output, cfg, overwrite=args.overwrite)}
    if args.evaluate:
        result["evaluation"] = compare(args.model, args.output, args.task, data_dir=args.data_dir, split=args.split,
                                       limit=args.limit, batch_size=args.batch_size)
    if args.json:
        print(json.dumps(result))
    else:
        for k in ("path", "arch", "weight_bytes", "source_weight_bytes", "weight_ratio", "total_ratio"):
            print(f"{k:>22}: {result[k]}")
        if args.evaluate:
            ev = result["evaluation"]
            print(f"{ev['metric'] + ' float32':>22}: {ev['float32'][ev['metric']]:.4f}")
            print(f"{ev['metric'] + ' int8':>22}: {ev['int8'][ev['metric']]:.4f}  (drop {ev['drop']:+.4f})")
    return 0


if __name__ == "__main__":
    cli.run(main)
