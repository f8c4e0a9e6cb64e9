"""Rows of the user's table files: CSV, TSV and JSON lines, each row a dict by column name.

`table_rows(path, required, optional)` yields `(Where, row)` for each data row. The format comes from the
suffix (`TABLE_FORMATS`): `.csv` is read with the csv module's usual quoting (a quoted field may hold
commas, quotes and line breaks), `.tsv` with quoting off, as GLUE's readers do (a quote is text); both take
a header line. `.jsonl`, `.ndjson` and `.json` hold one JSON object per line (JSON lines, what
`datasets`' `to_json` writes). Lines are read through `tasks.userfiles.text_lines`, so a file that is not
UTF-8 is refused with the line it fails on. Every failure is one `DataError` naming the file and line.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from tasks.datafiles import numbered_lines
from tasks.errors import DataError

TABLE_FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}
"""File suffix -> format of the files the generic tasks read."""


@dataclass(frozen=True)
class Where:
    """Where a row is, for error messages: a file and line, or a dataset split and row index."""

    source: str
    line: int | None = None
    row: int | None = None

    def error(self, problem: str) -> DataError:
        """A `DataError` for `problem` at this row: 'FILE:LINE: problem' or 'DATASET (split): row N: problem'."""
        return DataError(self.source, problem if self.row is None else f"row {self.row}: {problem}", line=self.line)


def table_format(path: str | Path) -> str:
    """'csv', 'tsv' or 'jsonl', from the suffix of `path`; DataError for any other suffix."""
    fmt = TABLE_FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise DataError(path, f"unknown file type {Path(path).suffix or '(no suffix)'!r}; expected a .csv, .tsv, "
                        ".jsonl or .json (JSON lines) file")
    return fmt


def table_rows(path: str | Path, required: Sequence[str], optional: Sequence[str] = ()
               ) -> Iterator[tuple[Where, dict]]:
    """(where, {column: value}) for each row of `path`, with every `required` column (and those `optional`
    columns it has); CSV and TSV values are strings, JSON lines values as parsed. DataError: missing file,
    unknown suffix, not UTF-8, a malformed row, a missing column, no rows at all."""
    path = Path(path)
    fmt = table_format(path)
    if not path.is_file():
        raise DataError(path, "file not found")
    rows = _json_rows(path) if fmt == "jsonl" else _delimited_rows(path, fmt, required)
    empty = True
    for where, row in rows:
        missing = [c for c in required if c not in row]
        if missing:
            raise where.error(f"missing column {missing[0]!r}; the row has {sorted(row)}")
        empty = False
        yield where, {c: row[c] for c in (*required, *optional) if c in row}
    if empty:
        raise DataError(path, "no rows" + (" (only a header)" if fmt != "jsonl" else ""))


def _delimited_rows(path: Path, fmt: str, required: Sequence[str]) -> Iterator[tuple[Where, dict]]:
    """CSV / TSV rows after the header, as dicts; a header without a required column is refused at line 1."""
    rows = _csv_rows(path, fmt)
    first = next(rows, None)
    if first is None:
        raise DataError(path, "file is empty")
    header = [name.strip() for name in first[1]]
    seen = set()
    for name in header:
        if name in seen:
            raise DataError(path, f"column {name!r} appears twice in the header", line=first[0])
        seen.add(name)
    for column in required:
        if column not in seen:
            raise DataError(path, f"missing column {column!r}; the header has {header}", line=first[0])
    for line, row in rows:
        if len(row) != len(header):
            raise DataError(path, f"expected {len(header)} {fmt.upper()} fields (as the header has), found "
                            f"{len(row)}", line=line)
        yield Where(str(path), line=line), dict(zip(header, row))


def _csv_rows(path: Path, fmt: str) -> Iterator[tuple[int, list[str]]]:
    """(first line, fields) of each non-blank record; a record may span lines (a quoted CSV field)."""
    consumed = 0

    def lines():
        nonlocal consumed
        for consumed, line in numbered_lines(path):
            yield line + "\n"

    quoting = csv.QUOTE_NONE if fmt == "tsv" else csv.QUOTE_MINIMAL
    reader = csv.reader(lines(), delimiter="\t" if fmt == "tsv" else ",", quoting=quoting)
    start = 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise DataError(path, f"malformed {fmt.upper()} row ({e})", line=consumed) from None
        if row:
            yield start, row
        start = consumed + 1


def _json_rows(path: Path) -> Iterator[tuple[Where, dict]]:
    for number, line in numbered_lines(path):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(path, f"malformed JSON: {e.msg} (column {e.colno})", line=number) from None
        except (RecursionError, ValueError) as e:
            raise DataError(path, f"malformed JSON: {str(e).splitlines()[0] or 'nested too deeply'}",
                            line=number) from None
        if not isinstance(row, dict):
            raise DataError(path, f"expected one JSON object per line, got {value_type(row)}", line=number)
        yield Where(str(path), line=number), row


def value_type(value) -> str:
    """How a row's value reads in messages: 'text', 'a number', 'a boolean', 'a list', 'null', 'an object'."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    names = {str: "text", list: "a list", tuple: "a list", dict: "an object", type(None): "null"}
    return names.get(type(value), type(value).__name__)
