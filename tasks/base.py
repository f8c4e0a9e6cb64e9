"""What a task is: plain, frozen data (name, label set, file layout, metric).

A `Task` holds names and numbers only. Readers, the feature encoder and the
metrics look at `task.reader`, `task.kind` and `task.metric` and pick their
code by name, the way flax's `examples/sst2/input_pipeline.py` keeps a task
as data. The example records that readers return live here too.
"""

from __future__ import annotations

from dataclasses import dataclass

from tasks.errors import UserError

KINDS = ("classification", "regression", "tagging", "span")
READERS = ("glue_tsv", "conll", "ner", "squad", "user")
"""How a task's files are read; 'user': the generic tasks on the user's own CSV, TSV or JSON lines files or a
Hugging Face dataset (`tasks.userdata`)."""
ENV_VARS = ("GLUE_DIR", "CONLL_DIR", "NER_DIR", "SQUAD_DIR")

# Metric names each kind can report (the functions live in tasks/metrics.py,
# which checks that its registry matches this table).
KIND_METRICS = {
    "classification": ("accuracy", "f1", "matthews_corr"),
    "regression": ("pearson", "spearmanr"),
    "tagging": ("f1", "precision", "recall"),
    "span": ("exact_match", "f1"),
}


@dataclass(frozen=True)
class Task:
    """One downstream task: its labels, files, reader and metrics."""

    name: str
    """Canonical lower-case name, e.g. 'sst2'."""
    kind: str
    """One of KINDS."""
    labels: tuple[str, ...]
    """Class names in label-id order; IOB2 tags for tagging; () otherwise."""
    metric: str
    """Primary metric (a key of `evaluate`'s result), used for model selection."""
    reader: str
    """One of READERS."""
    data_subdir: str
    """Folder under $env_var holding the files ('SST-2'); '' for none."""
    env_var: str
    """Environment variable that points at the data root ('' for the generic tasks on the user's files)."""
    files: tuple[tuple[str, str], ...]
    """(split, file name) pairs, e.g. (('train', 'train.tsv'), ...); the generic tasks: (split, the user's
    file path), or (split, the split's name in `dataset`); () when the task is only rebuilt to predict."""
    max_length: int = 128
    """Longest token sequence fed to the model, special tokens included."""
    extra_metrics: tuple[str, ...] = ()
    """Metrics reported next to `metric` (e.g. accuracy for MRPC)."""
    text_columns: tuple[str, ...] = ()
    """GLUE TSV and the generic tasks: the one or two text columns (text_a, text_b); token-classification: the
    tokens column."""
    label_column: str = ""
    """GLUE TSV and the generic tasks: the label (or score) column; token-classification: the tags column."""
    dataset: str = ""
    """The generic tasks: the Hugging Face dataset the splits come from (a `save_to_disk` directory, or
    NAME[:CONFIG] in the local datasets cache); '' when they come from files."""
    column_names: tuple[str, ...] = ()
    """GLUE TSV without a header line: names of the columns by position."""
    label_range: tuple[float, float] | None = None
    """Regression: the inclusive range a gold score must lie in."""
    doc_stride: int = 128
    """SQuAD: context tokens shared by two consecutive windows."""
    max_query_length: int = 64
    """SQuAD: questions are cut to this many tokens."""
    max_answer_length: int = 30
    """SQuAD: longest predicted answer, in tokens."""
    n_best: int = 20
    """SQuAD: start and end candidates considered per window."""

    def __post_init__(self):
        def bad(problem: str):
            raise ValueError(f"task {self.name!r}: {problem}")

        if not self.name or self.name != self.name.lower():
            bad("name must be non-empty and lower case")
        if self.kind not in KINDS:
            bad(f"kind {self.kind!r} is not one of {KINDS}")
        if self.reader not in READERS:
            bad(f"reader {self.reader!r} is not one of {READERS}")
        if self.env_var not in ENV_VARS and not (self.reader == "user" and not self.env_var):
            bad(f"env_var {self.env_var!r} is not one of {ENV_VARS}")
        if len(set(self.labels)) != len(self.labels):
            bad(f"duplicate labels in {self.labels}")
        if self.kind in ("classification", "tagging") and len(self.labels) < 2:
            bad(f"a {self.kind} task needs at least two labels")
        if self.kind in ("regression", "span") and self.labels:
            bad(f"a {self.kind} task has no label names")
        if self.kind == "tagging":
            _check_iob2_labels(self.labels, bad)
        allowed = KIND_METRICS[self.kind]
        for m in (self.metric, *self.extra_metrics):
            if m not in allowed:
                bad(f"metric {m!r} is not one of {allowed} for {self.kind}")
        if self.metric in self.extra_metrics:
            bad(f"metric {self.metric!r} repeated in extra_metrics")
        if self.max_length < 8:
            bad(f"max_length {self.max_length} is below 8")
        splits = [s for s, _ in self.files]
        if (not splits and self.reader != "user") or len(set(splits)) != len(splits):
            bad(f"files must name each split once, got {splits}")
        if self.dataset and self.reader != "user":
            bad("only the generic tasks read a dataset")
        if self.reader in ("glue_tsv", "user"):
            counts = (1,) if self.kind == "tagging" else (1, 2)
            if len(self.text_columns) not in counts or not self.label_column:
                bad("needs 1 or 2 text_columns (tagging: 1, the tokens) and a label_column")
            if self.column_names:
                missing = set(self.text_columns + (self.label_column,))
                missing -= set(self.column_names)
                if missing:
                    bad(f"columns {sorted(missing)} not in column_names")
        if self.label_range is not None:
            lo, hi = self.label_range
            if self.kind != "regression" or not lo < hi:
                bad(f"label_range {self.label_range} needs a regression task, low < high")
        if self.kind == "span":
            room = self.max_length - self.max_query_length - 3
            if not 0 < self.doc_stride < room:
                bad(
                    f"doc_stride {self.doc_stride} must be in (0, {room}): "
                    "max_length - max_query_length - 3"
                )
            if self.max_answer_length < 1 or self.n_best < 1:
                bad("max_answer_length and n_best must be positive")

    @property
    def num_labels(self) -> int:
        """Output width of the task head: 1 regression, 2 span, else #labels."""
        if self.kind == "regression":
            return 1
        if self.kind == "span":
            return 2
        return len(self.labels)

    @property
    def metric_names(self) -> tuple[str, ...]:
        """All metrics `evaluate` reports, primary first."""
        return (self.metric, *self.extra_metrics)

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(s for s, _ in self.files)

    def file_for(self, split: str) -> str:
        """File name of `split`; UserError listing the known splits."""
        for s, name in self.files:
            if s == split:
                return name
        if self.reader == "user":
            raise UserError(f"task {self.name}: no {split} data; pass --{split}-file FILE, or --dataset with a "
                            f"{split} split")
        raise UserError(
            f"task {self.name!r} has no split {split!r}; known: {', '.join(self.splits)}"
        )


def _check_iob2_labels(labels: tuple[str, ...], bad) -> None:
    if "O" not in labels:
        bad("tagging labels must include 'O'")
    for tag in labels:
        if tag == "O":
            continue
        prefix, _, kind = tag.partition("-")
        if prefix not in ("B", "I") or not kind:
            bad(f"tag {tag!r} is not IOB2 (O, B-X or I-X)")
        if f"B-{kind}" not in labels or f"I-{kind}" not in labels:
            bad(f"tag {tag!r} needs both B-{kind} and I-{kind}")


@dataclass(frozen=True)
class TextExample:
    """One GLUE row: a sentence or a pair; label str (class), float (score) or None."""

    guid: str
    text_a: str
    text_b: str | None = None
    label: str | float | None = None


@dataclass(frozen=True)
class TaggingExample:
    """One sentence of whitespace tokens with one IOB2 tag per token."""

    guid: str
    tokens: tuple[str, ...]
    tags: tuple[str, ...]

    def __post_init__(self):
        if len(self.tokens) != len(self.tags):
            raise ValueError(
                f"example {self.guid}: {len(self.tokens)} tokens but {len(self.tags)} tags"
            )


@dataclass(frozen=True)
class SpanExample:
    """One SQuAD question; answers are (text, char_start) pairs, () if unknown."""

    qid: str
    question: str
    context: str
    answers: tuple[tuple[str, int], ...] = ()
