"""The tasks we know, by name: GLUE, CoNLL-2003 NER and SQuAD v1.1.

GLUE column layouts follow google-research/bert `run_classifier.py` and the
transformers GLUE processors, by header name where the file has a header
(CoLA has none: source, label, mark, sentence). Primary metrics follow the
BERT paper's GLUE table (F1 for MRPC and QQP, Matthews for CoLA) except
STS-B, which selects on Pearson and also reports Spearman.
"""

from __future__ import annotations

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
"""Every task by canonical name."""

_ALIASES = {"conll": "conll2003", "squad1": "squad", "squadv1": "squad", "squad11": "squad"}


def _key(name: str) -> str:
    key = "".join(c for c in name.strip().lower() if c not in "-_. ")
    return _ALIASES.get(key, key)


def get_task(name: str) -> Task:
    """The task called `name` ('sst2', 'SST-2', 'sts-b', ...); UserError if unknown."""
    task = TASKS.get(_key(name))
    if task is None:
        raise UserError(f"unknown task {name!r}; valid tasks: {', '.join(TASKS)}")
    return task
