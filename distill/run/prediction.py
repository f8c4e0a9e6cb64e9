"""Predictions of a saved model on raw text, as JSON-ready dicts.

Input lines by task kind:
  classification / regression   `text` or `text_a<TAB>text_b`
  tagging                       whitespace-separated words; each CJK character is
                                a word of its own (character-level Chinese NER)
  span                          `question<TAB>context`

or, from a table file (`predict_table`: CSV, TSV or JSON lines), one record per row read by the task's
columns (`tasks.userdata.input_columns`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Iterable

from distill.run.evaluation import load_for_task, task_outputs
from tasks.base import SpanExample, TaggingExample, TextExample
from tasks.decode import predict_labels
from tasks.errors import UserError
from tasks.features import encode
from tasks.userdata import DataSpec, input_columns, split_words, table_inputs


def _example(kind: str, i: int, line: str, pairs: bool, source: str):
    fields = line.split("\t")
    where = f"{source}:{i + 1}"
    if kind == "tagging":
        words = split_words(line)
        return TaggingExample(str(i), words, ("O",) * len(words))
    if kind == "span":
        if len(fields) != 2:
            raise UserError(f"{where}: expected `question<TAB>context`, got {len(fields)} field(s)")
        return SpanExample(str(i), fields[0], fields[1])
    if pairs and len(fields) != 2:
        raise UserError(f"{where}: this task takes sentence pairs `text_a<TAB>text_b`, got {len(fields)} field(s)")
    if not pairs and len(fields) != 1:
        raise UserError(f"{where}: this task takes one sentence per line, got {len(fields)} tab-separated fields")
    return TextExample(str(i), fields[0], fields[1] if pairs else None)


def predict_lines(
    model_dir: str | Path, lines: Iterable[str], *, task_name: str | None = None, batch_size: int = 64,
    source: str = "input", spec: DataSpec | None = None,
) -> list[dict[str, Any]]:
    """One record per non-blank input line (see the module docstring); `spec`: see `load_for_task`."""
    loaded, task = load_for_task(model_dir, task_name, spec)
    texts = [line.rstrip("\n") for line in lines]
    kept = [(i, t) for i, t in enumerate(texts) if t.strip()]
    if not kept:
        raise UserError(f"{source}: no input lines")
    pairs = len(task.text_columns) == 2
    examples = [_example(task.kind, i, t, pairs, source) for i, t in kept]
    return _predictions(loaded, task, examples, [{"line": i + 1, "text": text} for i, text in kept], batch_size)


def predict_table(
    model_dir: str | Path, path: str | Path, *, task_name: str | None = None, batch_size: int = 64,
    spec: DataSpec | None = None,
) -> list[dict[str, Any]]:
    """One record per row of the table file `path` (CSV, TSV or JSON lines: `tasks.read_table`), read by the
    model's task's columns (`tasks.userdata.input_columns`: a generic task's own, GLUE's, else `text`,
    `tokens` or `question`/`context`; `spec`'s text columns replace them, for any task); each record has the
    row's line and its text columns."""
    spec = spec or DataSpec()
    loaded, task = load_for_task(model_dir, task_name, dataclasses.replace(
        spec, text_column=None, text_pair_column=None, label_column=None))
    columns = input_columns(task, spec.text_column, spec.text_pair_column)
    inputs = table_inputs(task, path, columns)
    bases = [{"line": where.line, **{c: row[c] for c in columns}} for where, row, _ in inputs]
    return _predictions(loaded, task, [ex for _, _, ex in inputs], bases, batch_size)


def _predictions(loaded, task, examples: list, bases: list[dict], batch_size: int) -> list[dict[str, Any]]:
    """Each base record with the model's prediction for its example added."""
    features = encode(task, examples, loaded.tokenizer)
    outputs = task_outputs(loaded.model, loaded.params, task, features, batch_size)
    preds = predict_labels(task, features, outputs, examples)
    results = []
    for base, pred, ex in zip(bases, preds, examples):
        record: dict[str, Any] = dict(base)
        if task.kind == "classification":
            record["label"] = pred.label
            record["probabilities"] = dict(zip(task.labels, pred.probabilities))
        elif task.kind == "regression":
            record["score"] = pred
        elif task.kind == "tagging":
            record["tags"] = list(pred)
            record["words"] = list(ex.tokens)
        else:
            record["answer"] = pred
        results.append(record)
    return results
