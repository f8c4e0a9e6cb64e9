"""GLUE TSV reader: one `TextExample` per row, columns found by header name.

Files are read with quoting disabled (csv.QUOTE_NONE), as GLUE's own readers
do, so quotes inside STS-B sentences stay text. A headerless layout (CoLA)
names its columns by position in `Task.column_names`; a file of such a task
whose first line holds the text column names (CoLA's test.tsv) is read by
that header instead. Test splits may lack the label column (label None).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Iterator

from tasks.base import Task, TextExample
from tasks.datafiles import numbered_lines
from tasks.errors import DataError


def read_glue_tsv(task: Task, split: str, path: Path, limit: int | None = None) -> list[TextExample]:
    """Examples of `path` (at most `limit`); DataError on any malformed row."""
    rows = _rows(path)
    _, first = next(rows)
    header = _header(task, first)
    if header is None:
        columns = {name: i for i, name in enumerate(task.column_names)}
        pending = [(1, first)]
    else:
        columns = {}
        for i, name in enumerate(header):
            columns.setdefault(name.strip(), i)
        pending = []
    text_idx = []
    for col in task.text_columns:
        if col not in columns:
            raise DataError(path, f"missing column {col!r}; the header has {header}", line=1)
        text_idx.append(columns[col])
    label_idx = columns.get(task.label_column)
    if label_idx is None and not split.startswith("test"):
        raise DataError(path, f"missing column {task.label_column!r}; the header has {header}", line=1)
    need = max(text_idx + ([label_idx] if label_idx is not None else [])) + 1

    examples: list[TextExample] = []
    for line, row in _chain(pending, rows):
        if limit is not None and len(examples) >= limit:
            break
        if not row:
            continue
        if len(row) < need:
            raise DataError(
                path, f"expected at least {need} tab-separated fields, found {len(row)}", line=line
            )
        label = None if label_idx is None else _label(task, row[label_idx], path, line)
        examples.append(
            TextExample(
                guid=f"{split}-{len(examples)}",
                text_a=row[text_idx[0]],
                text_b=row[text_idx[1]] if len(text_idx) > 1 else None,
                label=label,
            )
        )
    if not examples and limit != 0:
        raise DataError(path, "no examples in the file" + (" (only a header)" if header else ""))
    return examples


def _header(task: Task, first: list[str]) -> list[str] | None:
    """The header row, or None when `first` is already data (headerless layout)."""
    if not task.column_names:
        return first
    names = {f.strip() for f in first}
    return first if all(col in names for col in task.text_columns) else None


def _rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of each line; a DataError naming the line for what the csv module refuses
    (e.g. a field over its size limit)."""
    current = 0

    def lines():
        nonlocal current
        for current, line in numbered_lines(path):  # `current`: the line the reader is on
            yield line

    reader = csv.reader(lines(), delimiter="\t", quoting=csv.QUOTE_NONE)
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise DataError(path, f"malformed TSV row ({e})", line=current) from None
        yield current, row


def _chain(pending: list[tuple[int, list[str]]], rows):
    yield from pending
    yield from rows


def _label(task: Task, raw: str, path: Path, line: int) -> str | float:
    value = raw.strip()
    if task.kind == "regression":
        try:
            score = float(value)
        except ValueError:
            raise DataError(path, f"score {raw!r} is not a number", line=line) from None
        if not math.isfinite(score):
            raise DataError(path, f"score {raw!r} is not a finite number", line=line)
        if task.label_range is not None:
            lo, hi = task.label_range
            if not lo <= score <= hi:
                raise DataError(path, f"score {score} is outside [{lo}, {hi}]", line=line)
        return score
    if value not in task.labels:
        raise DataError(
            path, f"label {raw!r} is not one of the {task.name} labels {list(task.labels)}", line=line
        )
    return value
