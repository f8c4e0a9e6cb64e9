"""Task definitions and lookup by name."""

from __future__ import annotations

import dataclasses

import pytest

from tasks.base import KIND_METRICS, Task
from tasks.errors import UserError
from tasks.metrics import METRICS
from tasks.registry import TASKS, get_task


@pytest.mark.parametrize(
    "name, canonical",
    [("sst2", "sst2"), ("SST-2", "sst2"), ("sst-2", "sst2"), ("STS-B", "stsb"), ("CoLA", "cola"),
     ("conll", "conll2003"), ("CoNLL-2003", "conll2003"), ("SQuAD", "squad")],
)
def test_get_task_accepts_spellings(name, canonical):
    assert get_task(name).name == canonical


def test_unknown_task_lists_valid_names():
    with pytest.raises(UserError) as err:
        get_task("imdb")
    message = str(err.value)
    assert "imdb" in message
    for name in ("sst2", "stsb", "conll2003", "squad", "mnli"):
        assert name in message


def test_all_tasks_present_and_consistent():
    assert set(TASKS) == {
        "sst2", "cola", "mrpc", "qqp", "mnli", "qnli", "rte", "wnli", "stsb", "conll2003", "squad"
    }
    for task in TASKS.values():
        hash(task)  # frozen and hashable
        assert task.metric in task.metric_names
        assert task.file_for("train")


def test_task_details():
    assert get_task("sst2").num_labels == 2
    assert get_task("mnli").num_labels == 3
    assert get_task("mnli").file_for("dev") == "dev_matched.tsv"
    assert get_task("stsb").num_labels == 1 and get_task("stsb").labels == ()
    conll = get_task("conll2003")
    assert conll.num_labels == 9 and conll.labels[0] == "O"
    squad = get_task("squad")
    assert (squad.num_labels, squad.max_length, squad.doc_stride, squad.max_query_length) == (2, 384, 128, 64)
    assert squad.file_for("dev") == "dev-v1.1.json"
    assert get_task("cola").column_names == ("source", "label", "mark", "sentence")
    assert get_task("mrpc").metric_names == ("f1", "accuracy")
    assert get_task("stsb").metric_names == ("pearson", "spearmanr")


def test_unknown_split_is_user_error():
    with pytest.raises(UserError, match="no split 'validation'.*train, dev, test"):
        get_task("sst2").file_for("validation")


@pytest.mark.parametrize(
    "change, problem",
    [
        ({"kind": "ranking"}, "kind"),
        ({"metric": "bleu"}, "metric"),
        ({"labels": ("0",)}, "two labels"),
        ({"labels": ("0", "0")}, "duplicate"),
        ({"reader": "csv"}, "reader"),
        ({"env_var": "DATA"}, "env_var"),
        ({"text_columns": ()}, "text_columns"),
        ({"files": ()}, "split"),
        ({"max_length": 4}, "max_length"),
    ],
)
def test_task_validates_itself(change, problem):
    with pytest.raises(ValueError, match=problem):
        dataclasses.replace(get_task("sst2"), **change)


def test_tagging_labels_must_be_iob2():
    with pytest.raises(ValueError, match="IOB2"):
        dataclasses.replace(get_task("conll2003"), labels=("O", "PER", "LOC"))
    with pytest.raises(ValueError, match="doc_stride"):
        dataclasses.replace(get_task("squad"), max_length=64, doc_stride=128)


def test_metric_registry_matches_kinds():
    assert {kind: tuple(table) for kind, table in METRICS.items()} == KIND_METRICS
    assert isinstance(get_task("sst2"), Task)
