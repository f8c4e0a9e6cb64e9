"""Reading a file the user handed us: every failure is one `DataError` naming the file (and line).

- `text_lines(path)`: the lines of a text file, numbered; UTF-8 checked line by line, a NUL byte
  (a binary file) and a line longer than `MAX_LINE_BYTES` refused, read in bounded pieces, so a
  50 MB line costs at most one megabyte before it is refused.
- `read_text(path, max_bytes=)`: a whole (small) text file, UTF-8 and NUL checked.
- `read_json(path, what=, max_bytes=)`: a JSON document: bad syntax (with its line), nesting too
  deep for the parser (Python raises `RecursionError` there), a number too long to convert, and,
  when `what` is given, a document that is not an object are all `DataError`s.

Used by the task readers, the search-space and student files, model directories' JSON and
`bertnas predict --input`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import IO, Any, Iterator

from tasks.errors import DataError

MAX_LINE_BYTES = 1 << 20
"""The longest line a line-based file (TSV, CoNLL, predict input) may have: 1 MiB."""
MAX_JSON_BYTES = 64 << 20
"""The largest small JSON file (configs, indexes, search spaces): 64 MiB; data files pass their own."""


def text_lines(path: str | os.PathLike, stream: IO[bytes] | None = None) -> Iterator[tuple[int, str]]:
    """(1-based line number, line without its end) of `path` (or of the binary `stream`, named `path`).

    Lines end at `\\n`, `\\r\\n` or a lone `\\r` (as Python's universal newlines do); a UTF-8 BOM at the
    start is dropped."""
    try:
        if stream is not None:
            yield from _lines(path, stream)
            return
        with open(path, "rb") as fh:
            yield from _lines(path, fh)
    except OSError as e:
        raise DataError(path, f"cannot read ({e.strerror or e})") from None


def _lines(path, fh: IO[bytes]) -> Iterator[tuple[int, str]]:
    number = 0
    while True:
        raw = fh.readline(MAX_LINE_BYTES + 1)
        if not raw:
            return
        if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
            raise DataError(path, f"line longer than {MAX_LINE_BYTES} bytes (not a text file of this kind?)",
                            line=number + 1)
        text = _decode(path, raw, number + 1, bom=number == 0)
        pieces = text.rstrip("\n").removesuffix("\r").split("\r")
        for piece in pieces:
            number += 1
            yield number, piece


def _decode(path, raw: bytes, line: int, bom: bool = False) -> str:
    try:
        text = raw.decode("utf-8-sig" if bom else "utf-8")
    except UnicodeDecodeError as e:
        raise DataError(path, f"not UTF-8 text at line {line} ({e.reason} at byte {e.start + 1} of the line)") from None
    if "\x00" in text:
        raise DataError(path, f"binary data (a NUL byte) at line {line}; expected a text file")
    return text


def read_text(path: str | os.PathLike, *, max_bytes: int | None = MAX_JSON_BYTES) -> str:
    """The whole of a text file (BOM dropped); DataError when it is missing, too large, not UTF-8 or binary."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            data = fh.read() if max_bytes is None else fh.read(max_bytes + 1)
    except OSError as e:
        raise DataError(path, f"cannot read ({e.strerror or e})") from None
    if max_bytes is not None and len(data) > max_bytes:
        raise DataError(path, f"larger than {max_bytes} bytes; not a file of this kind?")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(path, f"not UTF-8 text at line {line} ({e.reason})") from None
    if "\x00" in text:
        line = text.count("\n", 0, text.index("\x00")) + 1
        raise DataError(path, f"binary data (a NUL byte) at line {line}; expected a text file")
    return text


def read_json(path: str | os.PathLike, what: str | None = None, *, max_bytes: int | None = MAX_JSON_BYTES) -> Any:
    """The JSON document in `path`; with `what` (e.g. "a BERT config") it must be an object.

    DataError, naming the file (and the line of a syntax error), for anything `read_text` refuses,
    for malformed JSON, for nesting deeper than the parser goes and for numbers too long to convert."""
    path = Path(path)
    text = read_text(path, max_bytes=max_bytes)
    return parse_json(path, text, what)


def parse_json(path: str | os.PathLike, text: str, what: str | None = None) -> Any:
    """`json.loads(text)` for the file `path`, its failures as `read_json` words them."""
    if not text.strip():
        raise DataError(path, "file is empty" + (f"; expected {what} (a JSON object)" if what else ""))
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(path, f"malformed JSON: {e.msg} (column {e.colno})", line=e.lineno) from None
    except RecursionError:
        raise DataError(path, "malformed JSON: nested too deeply") from None
    except ValueError as e:  # e.g. an integer longer than Python converts
        raise DataError(path, f"malformed JSON: {str(e).splitlines()[0]}") from None
    if what is not None and not isinstance(doc, dict):
        raise DataError(path, f"expected a JSON object ({what}), got a {_json_type(doc)}")
    return doc


def _json_type(value: Any) -> str:
    names = {list: "list", str: "string", bool: "boolean", int: "number", float: "number", type(None): "null"}
    return names.get(type(value), type(value).__name__)
