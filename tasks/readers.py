"""Reading a task's split from disk: `read_split` picks the reader by name.

Every reader takes `(task, split, path, limit)` and returns examples
(`TextExample`, `TaggingExample` or `SpanExample`); bad input raises a
`DataError` naming the file (and the line where there is one).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np

from tasks.base import SpanExample, TaggingExample, Task, TextExample
from tasks.datafiles import resolve_data_dir, split_path
from tasks.read_conll import read_conll, read_tag_set
from tasks.read_glue import read_glue_tsv
from tasks.read_squad import read_squad
from tasks.registry import get_task, is_generic, tagging_task

Example = TextExample | TaggingExample | SpanExample

READER_FNS: dict[str, Callable[..., list]] = {
    "glue_tsv": read_glue_tsv,
    "conll": read_conll,
    "ner": read_conll,
    "squad": read_squad,
}
"""Reader functions by `Task.reader` name, all `(task, split, path, limit)`."""

__all__ = ["Example", "READER_FNS", "load_task", "read_split", "resolve_data_dir", "split_off"]


def load_task(name: str, data_dir: str | os.PathLike | None = None) -> tuple[Task, Path]:
    """(the task called `name`, the folder with its files: see `resolve_data_dir`).

    The generic `ner` task takes its IOB2 tag set from its training file
    (`read_tag_set`: 'O', then B-X and I-X for each entity type, sorted), so
    the same files always give the same label ids.
    """
    if not is_generic(name):
        task = get_task(name)
        return task, resolve_data_dir(task, data_dir)
    probe = tagging_task(("O", "B-X", "I-X"))  # where its files are does not depend on the tag set
    folder = resolve_data_dir(probe, data_dir)
    return tagging_task(read_tag_set(split_path(probe, "train", folder), probe.reader)), folder


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
    path = split_path(task, split, resolve_data_dir(task, data_dir))
    return READER_FNS[task.reader](task, split, path, limit)


def split_off(examples: list, n: int, seed: int = 0) -> tuple[list, list]:
    """(rest, held out): `n` examples drawn by a seeded permutation, both in their original order.

    The same (examples, n, seed) always gives the same split, so every run of
    a search holds out the same validation examples.
    """
    if not 0 <= n < len(examples):
        raise ValueError(f"cannot hold out {n} of {len(examples)} examples")
    held = np.zeros(len(examples), bool)
    held[np.random.default_rng(seed).permutation(len(examples))[:n]] = True
    return [e for e, h in zip(examples, held) if not h], [e for e, h in zip(examples, held) if h]
