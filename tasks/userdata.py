"""The generic tasks on the user's own data: CSV, TSV or JSON lines files, or a Hugging Face dataset.

`DataSpec` is what the data flags say (`--train-file`, `--dev-file`, `--test-file` or `--dataset`, the
columns, `--max-seq-length`); `user_task_from(name, spec)` builds the task, its label set read from the
whole training split: class names sorted (numerically when they are all integers), the `ClassLabel` names
of a dataset in their own order, IOB2 tags as `ner` orders them ('O', then B-X, I-X per type).
`read_user_split(task, split, limit)` reads a split into examples; `user_data_files` names the files a
cache key fingerprints; `with_data(task, spec)` points a saved model's task at the data to evaluate;
`table_inputs(task, path)` reads a table file's rows as unlabelled inputs of any task (`bertnas predict
--input rows.csv`), by the task's columns.

Rows come from `tasks.read_table` (files) and `tasks.read_dataset` (a dataset). The checks here fail with
one `DataError` naming the file and line (or the dataset split and row): a missing column, an empty label,
a label the training data does not have, a regression target that is not a number, a column whose values
change type between rows (JSON lines, datasets), a file without rows, a file that is not UTF-8.
token-classification takes a list of words and a list of tags per row (JSON lines, datasets), or both
as whitespace-separated text (CSV, TSV).
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path
from typing import Any, Iterator, Sequence

from tasks.base import SpanExample, TaggingExample, Task, TextExample
from tasks.errors import DataError, UserError
from tasks.read_conll import iob2_tag_problem, iob2_tag_set
from tasks.read_dataset import class_names, dataset_files, dataset_rows, dataset_split
from tasks.read_table import Where, table_format, table_rows, value_type
from tasks.registry import DEFAULT_COLUMNS, USER_TASKS, user_task, user_task_name

SPLITS = ("train", "dev", "test")


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """The data flags of every tool: the generic tasks' files or dataset and columns, and any task's
    sequence length. Paths are where the data is, not what it is: cache keys take the files' contents
    (`user_data_files`) and `cache_settings`, never the paths."""

    train_file: str | None = None
    dev_file: str | None = None
    test_file: str | None = None
    dataset: str | None = None
    """A `save_to_disk` directory, or NAME[:CONFIG] in the local datasets cache."""
    text_column: str | None = None
    """The text column (token-classification: the words); None: `text` (`tokens`)."""
    text_pair_column: str | None = None
    """The second text of a pair; None: `text_pair` for text-pair-classification, no pair otherwise."""
    label_column: str | None = None
    """The label or score column (token-classification: the tags); None: `label` (`tags`)."""
    max_seq_length: int | None = None
    """Longest token sequence, special tokens included; None: the task's own (128; SQuAD 384)."""

    def __post_init__(self):
        n = self.max_seq_length
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 8):
            raise UserError(f"--max-seq-length: must be an integer >= 8, got {n!r}")
        if self.dataset and self.files():
            raise UserError("--dataset and --train-file/--dev-file/--test-file: give one source of data, not both")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, str) and not value.strip():
                raise UserError(f"--{f.name.replace('_', '-')}: empty")

    def resolved(self) -> DataSpec:
        """The same data with absolute paths (a search's trials run in directories of their own); a dataset
        name stays a name."""
        def absolute(path: str | None) -> str | None:
            return str(Path(path).expanduser().resolve()) if path else path

        dataset = self.dataset
        if dataset and Path(dataset).expanduser().exists():
            dataset = absolute(dataset)
        return dataclasses.replace(self, train_file=absolute(self.train_file), dev_file=absolute(self.dev_file),
                                   test_file=absolute(self.test_file), dataset=dataset)

    def files(self) -> tuple[tuple[str, str], ...]:
        """(split, path) of each file given."""
        return tuple((s, p) for s, p in zip(SPLITS, (self.train_file, self.dev_file, self.test_file)) if p)

    @property
    def names_data(self) -> bool:
        """Whether any flag of the generic tasks (files, dataset, columns) is set."""
        return bool(self.files() or self.dataset or self.text_column or self.text_pair_column or self.label_column)

    def cache_settings(self) -> dict[str, Any]:
        """The settings that change what is read (columns, sequence length): empty when none is set, so the
        cache keys of runs without them stay as they were."""
        keys = ("text_column", "text_pair_column", "label_column", "max_seq_length")
        return {k: getattr(self, k) for k in keys if getattr(self, k) is not None}


def columns_for(name: str, spec: DataSpec) -> tuple[tuple[str, ...], str]:
    """(text columns, label column) of the generic task `name` under `spec` (its defaults where unset)."""
    (text, *pair), label = DEFAULT_COLUMNS[user_task_name(name)]
    first = spec.text_column or text
    second = spec.text_pair_column or (pair[0] if pair else None)
    return ((first, second) if second else (first,)), spec.label_column or label


def user_task_from(name: str, spec: DataSpec) -> Task:
    """The generic task `name` on the data `spec` names, its label set read from the training split."""
    text_columns, label_column = columns_for(name, spec)
    if spec.dataset:
        files = tuple((s, dataset_split(spec.dataset, s)) for s in SPLITS if _has_split(spec.dataset, s))
    else:
        files = tuple((s, str(Path(p).expanduser().resolve())) for s, p in spec.files())
    if "train" not in dict(files):
        raise UserError(f"task {name}: needs its training data: --train-file FILE (.csv, .tsv, .jsonl) and "
                        "--dev-file FILE, or --dataset")
    for _, path in files if not spec.dataset else ():
        table_format(path)  # an unknown suffix fails before any reading
    kw = dict(text_columns=text_columns, label_column=label_column, files=files, dataset=spec.dataset or "")
    if spec.max_seq_length:
        kw["max_length"] = spec.max_seq_length
    placeholder = {"classification": ("0", "1"), "tagging": ("O", "B-X", "I-X"), "regression": ()}
    probe = user_task(name, placeholder[USER_TASKS[user_task_name(name)]], **kw)  # reads the data, labels aside
    return user_task(name, _label_set(probe), **kw)


def _has_split(ref: str, split: str, train_required: bool = True) -> bool:
    try:
        dataset_split(ref, split)
    except UserError:
        if split == "train" and train_required:
            raise
        return False
    return True


def _label_set(task: Task) -> tuple[str, ...]:
    """The task's labels from its whole training split (see the module docstring)."""
    if task.kind == "regression":
        return ()
    if task.dataset:
        names = class_names(task.dataset, task.label_column)
        if names is not None:
            return names
    examples = _read(task, "train", None, check_labels=False)
    where = _source(task, "train")
    if task.kind == "tagging":
        tags = iob2_tag_set({t for e in examples for t in e.tags})
        if tags is None:
            raise DataError(where, f"no entity tags (B-X / I-X) in column {task.label_column!r}")
        return tags
    labels = sorted({e.label for e in examples}, key=lambda v: (0, int(v), "") if re.fullmatch(r"-?\d+", v)
                    else (1, 0, v))
    if len(labels) < 2:
        raise DataError(where, f"column {task.label_column!r} has the one label {labels}; a classifier needs at "
                        "least two")
    return tuple(labels)


def _source(task: Task, split: str) -> str:
    return f"{task.dataset} ({task.file_for(split)} split)" if task.dataset else task.file_for(split)


def read_user_split(task: Task, split: str, limit: int | None = None) -> list[TextExample | TaggingExample]:
    """The examples of `split` (at most `limit`); labels must be the task's (those of its training data)."""
    return _read(task, split, limit, check_labels=True)


def user_data_files(task: Task, splits: Sequence[str]) -> list[Path]:
    """The files holding `splits` of a generic task: the user's files, or the dataset's Arrow files."""
    if task.dataset:
        return [f for s in splits for f in dataset_files(task.dataset, s)]
    return [Path(task.file_for(s)) for s in splits]


def _rows(task: Task, split: str, labelled: bool) -> Iterator[tuple[Where, dict]]:
    required = list(task.text_columns) + ([task.label_column] if labelled else [])
    optional = [] if labelled else [task.label_column]
    source = task.file_for(split)
    if task.dataset:
        return dataset_rows(task.dataset, split, required, optional)
    return table_rows(source, required, optional)


def _read(task: Task, split: str, limit: int | None, *, check_labels: bool) -> list:
    """Examples of `split`; a test split may lack the label column (unlabelled examples)."""
    types = _TypeCheck()
    examples: list = []
    labelled = not split.startswith("test")
    for where, row in _rows(task, split, labelled):
        if limit is not None and len(examples) >= limit:
            break
        types.check(where, row)
        example = _example(task, f"{split}-{len(examples)}", where, row)
        if example is None:
            continue
        if check_labels:
            _check_labels(task, where, example)
        examples.append(example)
    if not examples and limit != 0:
        raise DataError(_source(task, split), "no rows with tokens" if task.kind == "tagging" else "no rows")
    return examples


class _TypeCheck:
    """Each column keeps the type of its first value: a later row with another type is 'mixed types'."""

    def __init__(self):
        self.first: dict[str, tuple[str, Where]] = {}

    def check(self, where: Where, row: dict) -> None:
        for column, value in row.items():
            kind = value_type(value)
            if kind == "null":
                continue
            seen = self.first.setdefault(column, (kind, where))
            if seen[0] != kind:
                at = f"line {seen[1].line}" if seen[1].line is not None else f"row {seen[1].row}"
                raise where.error(f"column {column!r} holds {kind} here but {seen[0]} at {at} (mixed types)")


def _example(task: Task, guid: str, where: Where, row: dict):
    if task.kind == "tagging":
        return _tagging_example(task, guid, where, row)
    texts = [_text(where, c, row[c]) for c in task.text_columns]
    label = row.get(task.label_column)
    if task.label_column in row:
        label = _score(where, task.label_column, label) if task.kind == "regression" else _class(
            where, task.label_column, label)
    return TextExample(guid, texts[0], texts[1] if len(texts) > 1 else None, label)


def _text(where: Where, column: str, value) -> str:
    if not isinstance(value, str):
        raise where.error(f"column {column!r} must hold text, found {value_type(value)}")
    return value


def _class(where: Where, column: str, value) -> str:
    """A class label as text: strings stripped, integers and booleans spelt out."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise where.error(f"empty label in column {column!r}")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return value.strip()
    hint = " (text-regression takes scores)" if isinstance(value, float) else ""
    raise where.error(f"label {value!r} in column {column!r} is {value_type(value)}, not a class name{hint}")


def _score(where: Where, column: str, value) -> float:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise where.error(f"empty label in column {column!r}")
    try:
        if isinstance(value, bool):
            raise ValueError
        score = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise where.error(f"regression target {value!r} in column {column!r} is not a number") from None
    if not math.isfinite(score):
        raise where.error(f"regression target {value!r} in column {column!r} is not a finite number")
    return score


# CJK ideographs, as BERT's tokenizer (`_is_chinese_char`) splits them off one by one.
_CJK = re.compile(
    "([\u4E00-\u9FFF\u3400-\u4DBF\U00020000-\U0002A6DF\U0002A700-\U0002B73F"
    "\U0002B740-\U0002B81F\U0002B820-\U0002CEAF\uF900-\uFAFF\U0002F800-\U0002FA1F])"
)


def split_words(line: str) -> tuple[str, ...]:
    """The words of a tagging input: whitespace-separated, each CJK character a word of its own."""
    return tuple(w for token in line.split() for w in _CJK.split(token) if w)


INPUT_COLUMNS = {"tagging": ("tokens",), "span": ("question", "context"), "classification": ("text",),
                 "regression": ("text",)}
"""The columns `table_inputs` reads for a task that names none of its own (CoNLL-2003, `ner`, SQuAD)."""


def input_columns(task: Task, text_column: str | None = None, text_pair_column: str | None = None
                  ) -> tuple[str, ...]:
    """The text columns an input table holds for `task`: its own (a generic task's, GLUE's), else
    `INPUT_COLUMNS` by kind; `text_column` / `text_pair_column` (the flags) replace the first / second."""
    columns = list(task.text_columns or INPUT_COLUMNS[task.kind])
    if text_pair_column and len(columns) < 2:
        raise UserError(f"--text-pair-column: task {task.name} takes one text column ({columns[0]!r})")
    for i, name in enumerate((text_column, text_pair_column)):
        if name:
            columns[i] = name
    return tuple(columns)


def table_inputs(task: Task, path: str | Path, columns: Sequence[str] | None = None
                 ) -> list[tuple[Where, dict, Any]]:
    """(where, row, example) for each row of the table file `path` (CSV, TSV or JSON lines) as an unlabelled
    input of `task`, read from `columns` (default `input_columns(task)`); a label column is not read. A
    tagging row without words is skipped. DataError naming the file and line: the file's own problems
    (`table_rows`), a missing column, a value of the wrong type, mixed types in a column, no rows."""
    columns = tuple(columns or input_columns(task))
    types = _TypeCheck()
    inputs = []
    for where, row in table_rows(path, columns):
        types.check(where, row)
        example = _input_example(task, f"input-{len(inputs)}", where, row, columns)
        if example is not None:
            inputs.append((where, row, example))
    if not inputs:
        raise DataError(path, "no rows with words" if task.kind == "tagging" else "no rows")
    return inputs


def _input_example(task: Task, guid: str, where: Where, row: dict, columns: tuple[str, ...]):
    if task.kind == "tagging":  # a list of words, or text split as `bertnas predict` splits a line
        value = row[columns[0]]
        words = split_words(value) if isinstance(value, str) else _sequence(where, columns[0], value)
        return TaggingExample(guid, tuple(words), ("O",) * len(words)) if words else None
    texts = [_text(where, c, row[c]) for c in columns]
    if task.kind == "span":
        return SpanExample(guid, texts[0], texts[1])
    return TextExample(guid, texts[0], texts[1] if len(texts) > 1 else None)


def _tagging_example(task: Task, guid: str, where: Where, row: dict) -> TaggingExample | None:
    words_col, tags_col = task.text_columns[0], task.label_column
    words = _sequence(where, words_col, row[words_col])
    if not words or words == ["-DOCSTART-"]:  # no sentence (CoNLL's document separators, as its reader skips)
        return None
    tags = _sequence(where, tags_col, row[tags_col]) if tags_col in row else ["O"] * len(words)
    if len(tags) != len(words):
        raise where.error(f"{len(words)} words in column {words_col!r} but {len(tags)} tags in {tags_col!r}")
    for i, tag in enumerate(tags):
        problem = "empty tag" if not tag else iob2_tag_problem(tag)
        if problem:
            raise where.error(f"{problem} (word {i + 1}) in column {tags_col!r}")
    return TaggingExample(guid, tuple(words), tuple(tags))


def _sequence(where: Where, column: str, value) -> list[str]:
    """Words or tags: a list of strings, or whitespace-separated text (CSV, TSV)."""
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list) and all(isinstance(v, str) or v is None for v in value):
        return ["" if v is None else v.strip() for v in value]
    raise where.error(f"column {column!r} must hold a list of strings or whitespace-separated text, found "
                      f"{value_type(value)}")


def _check_labels(task: Task, where: Where, example) -> None:
    if task.kind == "regression":
        return
    if task.kind == "classification":
        if example.label is not None and example.label not in task.labels:
            raise where.error(f"label {example.label!r} is not one of the training data's labels "
                              f"{list(task.labels)}")
        return
    valid = set(task.labels)
    for i, tag in enumerate(example.tags):
        if tag not in valid:
            raise where.error(f"tag {tag!r} (word {i + 1}) is not one of the training data's tags {list(task.labels)}")
        if tag.startswith("I-") and (i == 0 or example.tags[i - 1][2:] != tag[2:]):
            after = example.tags[i - 1] if i else "the sentence start"
            raise where.error(f"tag {tag} (word {i + 1}) follows {after}: not IOB2 (IOB1 data must be converted)")


def with_data(task: Task, spec: DataSpec) -> Task:
    """A saved model's `task` (`tasks.registry.saved_task`) reading the data `spec` names: a generic task
    takes its files or dataset, and any columns `spec` sets, from it (its labels stay the model's)."""
    if task.reader != "user":
        if spec.names_data:
            raise UserError(f"task {task.name} reads its benchmark files from --data-dir; --dev-file, --test-file, "
                            "--dataset and the column flags are for the generic tasks")
        return task
    if spec.dataset:
        files = tuple((s, dataset_split(spec.dataset, s)) for s in SPLITS if _has_split(spec.dataset, s, False))
    else:
        files = tuple((s, str(Path(p).expanduser().resolve())) for s, p in spec.files())
    text_columns, label_column = task.text_columns, task.label_column
    if spec.text_column or spec.text_pair_column or spec.label_column:
        text_columns, label_column = columns_for(task.name, dataclasses.replace(
            spec, text_column=spec.text_column or text_columns[0],
            text_pair_column=spec.text_pair_column or (text_columns[1] if len(text_columns) > 1 else None),
            label_column=spec.label_column or label_column))
    try:
        return dataclasses.replace(task, files=files, dataset=spec.dataset or "", text_columns=text_columns,
                                   label_column=label_column)
    except ValueError as e:
        raise UserError(f"task {task.name}: {str(e).split(': ', 1)[-1]}") from None
