"""`nas.tune._row`: a Tune result becomes one line of results.csv, whatever state Tune left the trial in."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from distill.config import BertArch
from nas.cost import Constraints
from nas.trial import TrialSetup
from nas.tune import _row

TEACHER = BertArch.uniform(6, 384, 12, 1536)


def _setup():
    from distill.distill import DistillConfig
    from distill.loop import LoopConfig
    from nas.space import get_space

    return TrialSetup(
        base=DistillConfig(loop=LoopConfig(max_steps=600)), space=get_space("default"), teacher_arch=TEACHER,
        head="classification", num_labels=2, seq_len=40, constraints=Constraints(), metric="val_accuracy",
        task_metric="accuracy", cache_root="/tmp", teacher_eval={},
    )


def _result(config, metrics, error=None, path="/runs/ray/search/trial_abc123"):
    return SimpleNamespace(config=config, metrics=metrics, error=error, path=path, best_checkpoints=[],
                           checkpoint=None)


CONFIG = {"layers": 2, "hidden": 256, "heads": [4, 4], "ffn": [512, 512],
          "learning_rate": 2e-4, "temperature": 2.0, "hard_weight": 0.5, "hidden_weight": 0.0, "init_layers": "uniform"}


def test_a_scored_trial():
    row = _row(_result(CONFIG, {"val_accuracy": 0.9, "step": 600, "latency_ms": 0.5, "speedup": 6.0}), _setup())
    assert row["status"] == "completed" and row["val_metric"] == 0.9 and row["arch"].startswith("2L-256")
    assert row["trial_id"] == "abc123" and row["params"] > 0 and row["learning_rate"] == 2e-4


def test_a_trial_stopped_by_the_budget_before_any_report_is_not_started():
    """The STS-B search died here: Tune returned the trial with no config and no metrics."""
    for metrics in ({}, {"trial_id": "abc123", "time_total_s": 3.0}):  # nothing, or only Tune's bookkeeping
        row = _row(_result({}, metrics), _setup())
        assert row["status"] == "not_started" and row["arch"] is None and row["params"] is None
        assert row["val_metric"] is None and "before its first report" in row["error"]


def test_metrics_without_a_config_fail_the_row_not_the_search():
    row = _row(_result({}, {"val_accuracy": 0.9, "step": 200, "arch": "2L-256"}), _setup())
    assert row["status"] == "failed" and row["val_metric"] is None and row["arch"] == "2L-256"


@pytest.mark.parametrize("metrics,status", [
    ({"val_accuracy": -1.0, "status": "rejected", "reason": "too slow"}, "rejected"),
    ({"val_accuracy": float("nan"), "step": 200}, "failed"),
    ({"val_accuracy": 0.8, "step": 200}, "stopped"),
])
def test_statuses(metrics, status):
    assert _row(_result(CONFIG, metrics), _setup())["status"] == status
