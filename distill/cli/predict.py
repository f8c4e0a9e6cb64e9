"""Predict with a saved model: one JSON line per input line.

  echo "a gorgeous, witty, seductive movie." | bertnas predict --model runs/teacher-sst2/teacher
  bertnas predict --model DIR --input texts.txt

Input: one text per line; sentence-pair tasks take `text_a<TAB>text_b`,
tagging takes words separated by spaces, span extraction `question<TAB>context`.
"""

from __future__ import annotations

import argparse
import json
import sys

from distill import cli
from tasks.errors import DataError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model directory (Hugging Face layout, or an int8 export)")
    p.add_argument("--input", default=None, help="text file (default: stdin)")
    p.add_argument("--task", default=None, help="task name (default: the one recorded in the model)")
    p.add_argument("--batch-size", type=cli.at_least(1), default=64)
    p.add_argument("-v", "--verbose", action="store_true")


def read_lines(path: str | None) -> list[str]:
    """The input's lines (stdin when `path` is None); a DataError naming it when it cannot be read."""
    source = path or "stdin"
    try:
        if path:
            with open(path, encoding="utf-8") as f:
                return f.readlines()
        return sys.stdin.readlines()
    except OSError as e:
        raise DataError(source, f"cannot read ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise DataError(source, f"not UTF-8 text ({e.reason} at byte {e.start})") from None


def main(args: argparse.Namespace) -> int:
    from distill.run import predict_lines

    lines = read_lines(args.input)
    for record in predict_lines(args.model, lines, task_name=args.task, batch_size=args.batch_size,
                                source=args.input or "stdin"):
        print(json.dumps(record))
    return 0
