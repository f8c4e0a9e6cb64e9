"""Where a task's files are: data-dir resolution and checked file opening.

Order: an explicit directory (a flag), then the task's environment variable
(google-research/bert's `$GLUE_DIR/SST-2` convention; `$CONLL_DIR`, falling
back to `$GLUE_DIR/../conll2003`; `$NER_DIR` for the generic `ner` task;
`$SQUAD_DIR`), else a UserError that says
what to set and where to download the data.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

from tasks.base import Task
from tasks.errors import DataError, UserError
from tasks.userfiles import text_lines

DATA_DIR_FLAG = "--data-dir"
"""How the scripts spell the explicit data-directory flag (used in messages)."""

DOWNLOAD_HINTS = {
    "glue_tsv": "GLUE is at https://gluebenchmark.com/tasks",
    "conll": (
        "CoNLL-2003 English NER is at https://www.clips.uantwerpen.be/conll2003/ner/ "
        "(train.txt/dev.txt/test.txt, IOB2 tags)"
    ),
    "ner": (
        "the ner task reads train.txt/dev.txt with one `token tag` line per word (or per character, "
        "for Chinese) and a blank line after each sentence, IOB2 (BIO) tags"
    ),
    "squad": "SQuAD v1.1 is at https://rajpurkar.github.io/SQuAD-explorer/",
}


def resolve_data_dir(task: Task, data_dir: str | os.PathLike | None = None) -> Path:
    """The directory holding `task`'s files (explicit > env var > UserError)."""
    if data_dir is not None and str(data_dir) != "":
        path = Path(data_dir).expanduser()
        if not path.is_dir():
            raise UserError(f"data directory {path} for task {task.name} does not exist")
        return path
    hint = DOWNLOAD_HINTS[task.reader]
    root = os.environ.get(task.env_var, "")
    if root:
        path = Path(root).expanduser()
        if task.reader == "glue_tsv":
            path = path / task.data_subdir
        if not path.is_dir():
            raise UserError(
                f"${task.env_var} points to {root}, but {path} does not exist; "
                f"it should hold the {task.name} files ({hint})"
            )
        return path
    if task.env_var == "CONLL_DIR" and os.environ.get("GLUE_DIR"):
        sibling = Path(os.environ["GLUE_DIR"]).expanduser().parent / task.data_subdir
        if sibling.is_dir():
            return sibling
    raise UserError(
        f"no data directory for task {task.name}: pass {DATA_DIR_FLAG} or set "
        f"${task.env_var}; {hint}"
    )


def split_path(task: Task, split: str, data_dir: Path) -> Path:
    """Path of `split`'s file; DataError 'file not found' with a download hint."""
    path = Path(data_dir) / task.file_for(split)
    if not path.is_file():
        nested = Path(data_dir) / task.data_subdir / task.file_for(split)
        if task.data_subdir and nested.is_file():
            raise DataError(path, f"file not found; did you mean the directory {nested.parent}?")
        raise DataError(
            path,
            f"file not found (the {task.name} {split} split); "
            f"{DOWNLOAD_HINTS[task.reader]}",
        )
    return path


def numbered_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, line without newline); DataError if empty, not UTF-8, binary or with an
    over-long line (`tasks.userfiles.text_lines`)."""
    empty = True
    for number, line in text_lines(path):
        empty = False
        yield number, line
    if empty:
        raise DataError(path, "file is empty")
