"""Reading a task's split from disk: `read_split` picks the reader by name.

Every reader takes `(task, split, path, limit)` and returns examples
(`TextExample`, `TaggingExample` or `SpanExample`); bad input raises a
`DataError` naming the file (and the line where there is one). The generic
tasks on the user's own files or dataset (`tasks.userdata`) read their splits
from where their task says, whatever the data directory.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from tasks.base import SpanExample, TaggingExample, Task, TextExample
from tasks.datafiles import DATA_DIR_FLAG, resolve_data_dir, split_path
from tasks.errors import UserError
from tasks.read_conll import read_conll, read_tag_set
from tasks.read_glue import read_glue_tsv
from tasks.read_squad import read_squad
from tasks.registry import get_task, is_generic, is_user_task, tagging_task, with_max_length
from tasks.userdata import DataSpec, read_user_split, user_data_files, user_task_from

Example = TextExample | TaggingExample | SpanExample

READER_FNS: dict[str, Callable[..., list]] = {
    "glue_tsv": read_glue_tsv,
    "conll": read_conll,
    "ner": read_conll,
    "squad": read_squad,
}
"""Reader functions by `Task.reader` name, all `(task, split, path, limit)`."""

__all__ = ["DataSpec", "Example", "READER_FNS", "data_files", "load_task", "read_split", "resolve_data_dir"]


def load_task(name: str, data_dir: str | os.PathLike | None = None,
              spec: DataSpec | None = None) -> tuple[Task, Path | None]:
    """(the task called `name`, the folder with its files: see `resolve_data_dir`).

    The generic `ner` task takes its IOB2 tag set from its training file
    (`read_tag_set`: 'O', then B-X and I-X for each entity type, sorted), so
    the same files always give the same label ids. The generic tasks on the
    user's files or dataset (`tasks.userdata`) are built from `spec`, their
    labels read from the training data; their folder is None. `spec`'s
    `max_seq_length` sets any task's sequence length.
    """
    spec = spec or DataSpec()
    if is_user_task(name):
        if data_dir:
            raise UserError(f"{DATA_DIR_FLAG}: task {name} reads --train-file / --dev-file or --dataset instead")
        return user_task_from(name, spec), None
    if spec.names_data:
        raise UserError(f"task {name} reads its benchmark files from {DATA_DIR_FLAG}; --train-file, --dev-file, "
                        "--test-file, --dataset and the column flags are for the generic tasks (text-classification, "
                        "text-pair-classification, text-regression, token-classification)")
    if not is_generic(name):
        task = with_max_length(get_task(name), spec.max_seq_length)
        return task, resolve_data_dir(task, data_dir)
    probe = tagging_task(("O", "B-X", "I-X"))  # where its files are does not depend on the tag set
    folder = resolve_data_dir(probe, data_dir)
    task = tagging_task(read_tag_set(split_path(probe, "train", folder), probe.reader))
    return with_max_length(task, spec.max_seq_length), folder


def data_files(task: Task, splits, data_dir: str | os.PathLike | None = None) -> list[Path]:
    """The files holding `splits` of `task` (what a cache key fingerprints)."""
    if task.reader == "user":
        return user_data_files(task, splits)
    folder = resolve_data_dir(task, data_dir)
    return [split_path(task, s, folder) for s in splits]


def read_split(
    task: Task,
    split: str,
    data_dir: str | os.PathLike | None = None,
    *,
    limit: int | None = None,
) -> list[Example]:
    """Examples of `split` ('train', 'dev', ...), at most `limit` of them.

    `data_dir` is the folder holding the task's files; None resolves it from
    the task's environment variable (see `resolve_data_dir`).
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    if task.reader == "user":
        return read_user_split(task, split, limit)
    path = split_path(task, split, resolve_data_dir(task, data_dir))
    return READER_FNS[task.reader](task, split, path, limit)
