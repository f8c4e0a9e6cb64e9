"""The tasks we know, by name: GLUE, CoNLL-2003 NER, SQuAD v1.1, and generic NER.

GLUE column layouts follow google-research/bert `run_classifier.py` and the
transformers GLUE processors, by header name where the file has a header
(CoLA has none: source, label, mark, sentence). Primary metrics follow the
BERT paper's GLUE table (F1 for MRPC and QQP, Matthews for CoLA) except
STS-B, which selects on Pearson and also reports Spearman.

`ner` is token tagging on any CoNLL-format files (`token tag` lines, e.g. one
Chinese character per line) whose IOB2 tag set is not fixed in advance: it is
read from the training file (`tasks.readers.load_task`), and a saved model
records it in its config.json (`get_task('ner', labels=...)`).

The generic tasks `text-classification`, `text-pair-classification`,
`text-regression` and `token-classification` read the user's own CSV, TSV or
JSON lines files or a Hugging Face dataset (`tasks.userdata`): their columns,
their label set (read from the training data) and their files are part of the
task (`user_task`); a saved model records the first two (`task_record`), so
`evaluate` and `predict` rebuild the task from it (`saved_task`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from tasks.base import Task
from tasks.errors import UserError

_GLUE_FILES = (("train", "train.tsv"), ("dev", "dev.tsv"), ("test", "test.tsv"))
_BINARY = ("0", "1")
_NLI2 = ("entailment", "not_entailment")


def _glue(name: str, subdir: str, **kw) -> Task:
    kw.setdefault("files", _GLUE_FILES)
    kw.setdefault("kind", "classification")
    kw.setdefault("metric", "accuracy")
    return Task(name=name, reader="glue_tsv", data_subdir=subdir, env_var="GLUE_DIR", **kw)


_ALL = (
    _glue(
        "cola", "CoLA", labels=_BINARY, metric="matthews_corr",
        extra_metrics=("accuracy",), text_columns=("sentence",), label_column="label",
        column_names=("source", "label", "mark", "sentence"),
    ),
    _glue("sst2", "SST-2", labels=_BINARY, text_columns=("sentence",), label_column="label"),
    _glue(
        "mrpc", "MRPC", labels=_BINARY, metric="f1", extra_metrics=("accuracy",),
        text_columns=("#1 String", "#2 String"), label_column="Quality",
    ),
    _glue(
        "qqp", "QQP", labels=_BINARY, metric="f1", extra_metrics=("accuracy",),
        text_columns=("question1", "question2"), label_column="is_duplicate",
    ),
    _glue(
        "mnli", "MNLI", labels=("contradiction", "entailment", "neutral"),
        text_columns=("sentence1", "sentence2"), label_column="gold_label",
        files=(
            ("train", "train.tsv"),
            ("dev", "dev_matched.tsv"),
            ("dev_mismatched", "dev_mismatched.tsv"),
            ("test", "test_matched.tsv"),
            ("test_mismatched", "test_mismatched.tsv"),
        ),
    ),
    _glue("qnli", "QNLI", labels=_NLI2, text_columns=("question", "sentence"), label_column="label"),
    _glue("rte", "RTE", labels=_NLI2, text_columns=("sentence1", "sentence2"), label_column="label"),
    _glue("wnli", "WNLI", labels=_BINARY, text_columns=("sentence1", "sentence2"), label_column="label"),
    _glue(
        "stsb", "STS-B", kind="regression", labels=(), metric="pearson",
        extra_metrics=("spearmanr",), text_columns=("sentence1", "sentence2"),
        label_column="score", label_range=(0.0, 5.0),
    ),
    Task(
        name="conll2003", kind="tagging", reader="conll", data_subdir="conll2003",
        env_var="CONLL_DIR", metric="f1", extra_metrics=("precision", "recall"),
        labels=("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"),
        files=(("train", "train.txt"), ("dev", "dev.txt"), ("test", "test.txt")),
    ),
    Task(
        name="squad", kind="span", reader="squad", data_subdir="", env_var="SQUAD_DIR",
        labels=(), metric="exact_match", extra_metrics=("f1",), max_length=384,
        files=(("train", "train-v1.1.json"), ("dev", "dev-v1.1.json")),
    ),
)

TASKS: dict[str, Task] = {t.name: t for t in _ALL}
"""Every task with a fixed label set, by canonical name."""

NER = "ner"
"""The generic tagging task: its IOB2 tags come from its data (see `tagging_task`)."""

USER_TASKS = {
    "text-classification": "classification",
    "text-pair-classification": "classification",
    "text-regression": "regression",
    "token-classification": "tagging",
}
"""The generic tasks on the user's data, by name: their kind."""

DEFAULT_COLUMNS = {
    "text-classification": (("text",), "label"),
    "text-pair-classification": (("text", "text_pair"), "label"),
    "text-regression": (("text",), "label"),
    "token-classification": (("tokens",), "tags"),
}
"""(text columns, label column) a generic task reads when no --text-column / --text-pair-column /
--label-column is given."""

_ALIASES = {"conll": "conll2003", "squad1": "squad", "squadv1": "squad", "squad11": "squad", "tagging": NER}


def tagging_task(labels: Sequence[str]) -> Task:
    """The generic `ner` task over an IOB2 tag set ('O' plus B-X and I-X for each entity type X)."""
    try:
        return Task(
            name=NER, kind="tagging", reader="ner", data_subdir="", env_var="NER_DIR", metric="f1",
            extra_metrics=("precision", "recall"), labels=tuple(labels),
            files=(("train", "train.txt"), ("dev", "dev.txt"), ("test", "test.txt")),
        )
    except ValueError as e:
        raise UserError(f"task {NER}: bad tag set {list(labels)}: {e}") from None


def is_user_task(name: str) -> bool:
    """Whether `name` is one of the generic tasks on the user's own files or dataset (`USER_TASKS`)."""
    return _user_name(name) is not None


def _user_name(name: str) -> str | None:
    key = "".join(c for c in name.strip().lower() if c not in "-_. ")
    return next((n for n in USER_TASKS if n.replace("-", "") == key), None)


def user_task_name(name: str) -> str:
    """The canonical name of the generic task `name` ('Text_Classification' -> 'text-classification')."""
    canonical = _user_name(name)
    if canonical is None:
        raise UserError(f"unknown generic task {name!r}; valid: {', '.join(USER_TASKS)}")
    return canonical


def user_task(name: str, labels: Sequence[str], *, text_columns: Sequence[str], label_column: str,
              files: Sequence[tuple[str, str]] = (), dataset: str = "", max_length: int = 128) -> Task:
    """The generic task `name` over the user's data: its label set (class names in label-id order, IOB2 tags
    for token-classification, none for text-regression), its columns and where its splits are."""
    canonical = user_task_name(name)
    kind = USER_TASKS[canonical]
    counts = {"text-pair-classification": (2,), "token-classification": (1,)}.get(canonical, (1, 2))
    if len(text_columns) not in counts:
        raise UserError(f"task {canonical}: takes {' or '.join(map(str, counts))} text column(s) (a second one "
                        f"with --text-pair-column), got {list(text_columns)}")
    metric, extra = {"classification": ("accuracy", ("f1", "matthews_corr") if len(labels) == 2 else
                                        ("matthews_corr",)),
                     "regression": ("pearson", ("spearmanr",)),
                     "tagging": ("f1", ("precision", "recall"))}[kind]
    try:
        return Task(
            name=canonical, kind=kind, labels=tuple(labels), metric=metric, extra_metrics=extra, reader="user",
            data_subdir="", env_var="", files=tuple(files), text_columns=tuple(text_columns),
            label_column=label_column, dataset=dataset, max_length=max_length,
        )
    except ValueError as e:
        raise UserError(f"task {canonical}: {str(e).split(': ', 1)[-1]}") from None


def task_record(task: Task) -> dict[str, Any]:
    """What a saved model records of its task beside its labels (config.json's `bertnas` block): the name,
    the sequence length and, for the generic tasks, the columns (which `saved_task` reads back)."""
    record: dict[str, Any] = {"task": task.name, "max_length": task.max_length}
    if task.reader == "user":
        record.update(text_columns=list(task.text_columns), label_column=task.label_column)
    return record


def saved_task(meta: dict[str, Any], name: str | None = None, *, max_length: int | None = None) -> Task:
    """The task a saved model was trained on, from its config.json's `bertnas` block (`task_record` and its
    labels); `name` overrides the recorded task, `max_length` the recorded sequence length. A generic task
    comes back without files (`dataclasses.replace` them in to read its data)."""
    name = name or meta.get("task")
    if not name:
        raise UserError("the model's config.json records no task; pass --task")
    labels = meta.get("labels") or ()
    length = max_length or meta.get("max_length")
    if is_user_task(name):
        default_text, default_label = DEFAULT_COLUMNS[user_task_name(name)]
        task = user_task(name, labels, text_columns=meta.get("text_columns") or default_text,
                         label_column=meta.get("label_column") or default_label)
    else:
        task = get_task(name, labels=labels if is_generic(name) else None)  # `ner`: the model's tags
    return with_max_length(task, int(length)) if length else task


def with_max_length(task: Task, max_length: int | None) -> Task:
    """`task` with sequences of at most `max_length` tokens (None: as it is); UserError if it cannot be."""
    if not max_length or max_length == task.max_length:
        return task
    try:
        return dataclasses.replace(task, max_length=max_length)
    except ValueError as e:
        raise UserError(f"--max-seq-length {max_length}: {str(e).split(': ', 1)[-1]}") from None


def is_generic(name: str) -> bool:
    """Whether `name` is the generic tagging task, whose tags come from its data."""
    return _key(name) == NER


def _key(name: str) -> str:
    key = "".join(c for c in name.strip().lower() if c not in "-_. ")
    return _ALIASES.get(key, key)


def get_task(name: str, labels: Sequence[str] | None = None) -> Task:
    """The task called `name` ('sst2', 'SST-2', 'sts-b', ...); UserError if unknown.

    The generic `ner` task needs its IOB2 `labels` (tasks.readers.load_task reads them from the
    training file); the other tasks have theirs and take none.
    """
    if is_user_task(name):
        raise UserError(f"task {_user_name(name)}: reads the user's files or dataset (--train-file / --dataset), "
                        "which this tool does not take")
    if is_generic(name):
        if labels is None:
            raise UserError(
                f"task {NER}: its tag set comes from its training file, which this tool does not read; "
                f"finetune_teacher.py, distill.py, evaluate.py and predict.py take it"
            )
        return tagging_task(labels)
    task = TASKS.get(_key(name))
    if task is None:
        raise UserError(f"unknown task {name!r}; valid tasks: {', '.join([*TASKS, NER, *USER_TASKS])}")
    if labels is not None and tuple(labels) != task.labels:
        raise ValueError(f"task {task.name} has the fixed labels {task.labels}, not {tuple(labels)}")
    return task
