"""Predict with a saved model: one JSON line per input line.

  echo "a gorgeous, witty, seductive movie." | bertnas predict --model runs/teacher-sst2/teacher
  bertnas predict --model DIR --input texts.txt

  bertnas predict --model DIR --input reviews.csv      # a table: one record per row

Input: one text per line; sentence-pair tasks take `text_a<TAB>text_b`,
tagging takes words separated by spaces, span extraction `question<TAB>context`.
A .csv, .tsv or .jsonl/.json (JSON lines) --input is a table read by the model's
columns: a generic task's own (--text-column and --text-pair-column override
them), GLUE's (sentence, sentence1/sentence2, ...), else text, tokens (a list
or whitespace-separated words) or question/context; each record gives the
row's line and text columns. Other columns, a label among them, are ignored.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from distill import cli
from tasks.read_table import TABLE_FORMATS
from tasks.userfiles import text_lines


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model directory (Hugging Face layout, int8 or ONNX export)")
    p.add_argument("--input", default=None,
                   help="text file, one input per line (default: stdin), or a .csv/.tsv/.jsonl table")
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


def is_table(path: str | None) -> bool:
    """Whether `--input` names a table file (by its suffix, `tasks.read_table.TABLE_FORMATS`)."""
    return bool(path) and Path(path).suffix.lower() in TABLE_FORMATS


def main(args: argparse.Namespace) -> int:
    from distill.run import predict_lines, predict_table

    kw = dict(task_name=args.task, batch_size=args.batch_size, spec=cli.data_from_args(args))
    if is_table(args.input):
        records = predict_table(args.model, args.input, **kw)
    else:
        records = predict_lines(args.model, read_lines(args.input), source=args.input or "stdin", **kw)
    for record in records:
        print(json.dumps(record))
    return 0
