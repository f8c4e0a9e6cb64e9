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
from tasks.userfiles import text_lines


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model directory (Hugging Face layout, int8 or ONNX export)")
    p.add_argument("--input", default=None, help="text file (default: stdin)")
    p.add_argument("--task", default=None, help="task name (default: the one recorded in the model)")
    cli.add_data_args(p)
    p.add_argument("--batch-size", type=cli.at_least(1), default=64)
    p.add_argument("-v", "--verbose", action="store_true")


def read_lines(path: str | None) -> list[str]:
    """The input's lines (stdin when `path` is None); a DataError naming it (and the line) when it cannot
    be read: missing, not UTF-8, binary, or a line over `tasks.userfiles.MAX_LINE_BYTES`."""
    if path:
        return [line for _, line in text_lines(path)]
    return [line for _, line in text_lines("stdin", sys.stdin.buffer)]


def main(args: argparse.Namespace) -> int:
    from distill.run import predict_lines

    lines = read_lines(args.input)
    for record in predict_lines(args.model, lines, task_name=args.task, batch_size=args.batch_size,
                                source=args.input or "stdin", spec=cli.data_from_args(args)):
        print(json.dumps(record))
    return 0
