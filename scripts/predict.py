"""Predict with a saved model: one JSON line per input line.

  echo "a gorgeous, witty, seductive movie." | python scripts/predict.py --model runs/teacher-sst2/teacher
  python scripts/predict.py --model DIR --input texts.txt

Input: one text per line; sentence-pair tasks take `text_a<TAB>text_b`,
tagging takes words separated by spaces, span extraction `question<TAB>context`.
"""

from __future__ import annotations

import argparse
import json
import sys

import _paths  # noqa: F401  (before any package import)
from distill import cli


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="model directory (Hugging Face layout, or an int8 export)")
    p.add_argument("--input", default=None, help="text file (default: stdin)")
    p.add_argument("--task", default=None, help="task name (default: the one recorded in the model)")
    p.add_argument("--batch-size", type=cli.at_least(1), default=64)
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    cli.setup_logging(args.verbose)
    from distill.predict import predict_lines
    from tasks.errors import DataError

    source = args.input or "stdin"
    try:
        if args.input:
            with open(args.input, encoding="utf-8") as f:
                lines = f.readlines()
        else:
            lines = sys.stdin.readlines()
    except OSError as e:
        raise DataError(source, f"cannot read ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise DataError(source, f"not UTF-8 text ({e.reason} at byte {e.start})") from None
    for record in predict_lines(args.model, lines, task_name=args.task, batch_size=args.batch_size, source=source):
        print(json.dumps(record))
    return 0


if __name__ == "__main__":
    cli.run(main)
