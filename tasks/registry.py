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
"""

from __future__ import annotations

from typing import Sequence

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
    if is_generic(name):
        if labels is None:
            raise UserError(
                f"task {NER}: its tag set comes from its training file, which this tool does not read; "
                f"finetune_teacher.py, distill.py, evaluate.py and predict.py take it"
            )
        return tagging_task(labels)
    task = TASKS.get(_key(name))
    if task is None:
        raise UserError(f"unknown task {name!r}; valid tasks: {', '.join([*TASKS, NER])}")
    if labels is not None and tuple(labels) != task.labels:
        raise ValueError(f"task {task.name} has the fixed labels {task.labels}, not {tuple(labels)}")
    return task
