"""`nas.tune._row`: a Tune result becomes one line of results.csv, whatever state Tune left the trial in,
and a handle (sampled config, best checkpoint) kept beside the row, never in it."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from distill.arch import BertArch
from distill.run import DistillConfig
from nas.config import Constraints
from nas.trial import TrialSetup
from nas.tune import TrialHandle, _export_front, _row, _rows
from tasks.registry import get_task

TEACHER = BertArch.uniform(6, 384, 12, 1536)


def _setup():
    from distill.run.config import DistillConfig
    from distill.train.loop import LoopConfig
    from nas.space import get_space

    return TrialSetup(
        base=DistillConfig(loop=LoopConfig(max_steps=600)), space=get_space("default"), teacher_arch=TEACHER,
        head="classification", num_labels=2, seq_len=40, constraints=Constraints(), metric="val_accuracy",
        task_metric="accuracy", cache_root="/tmp", teacher_eval={},
    )


def _result(config, metrics, error=None, path="/runs/ray/search/trial_abc123", checkpoint=None):
    return SimpleNamespace(config=config, metrics=metrics, error=error, path=path, best_checkpoints=[],
                           checkpoint=checkpoint)


CONFIG = {"layers": 2, "hidden": 256, "heads": [4, 4], "ffn": [512, 512],
          "learning_rate": 2e-4, "temperature": 2.0, "hard_weight": 0.5, "hidden_weight": 0.0, "init_layers": "uniform"}


def test_a_scored_trial():
    checkpoint = SimpleNamespace(path="/runs/ray/search/trial_abc123/checkpoint_000002")
    result = _result(CONFIG, {"val_accuracy": 0.9, "step": 600, "latency_ms": 0.5, "speedup": 6.0},
                     checkpoint=checkpoint)
    row, handle = _row(result, _setup())
    assert row["status"] == "completed" and row["val_metric"] == 0.9 and row["arch"].startswith("2L-256")
    assert row["trial_id"] == "abc123" and row["params"] > 0 and row["learning_rate"] == 2e-4
    assert row["checkpoint"] == checkpoint.path
    assert handle == TrialHandle(config=CONFIG, checkpoint=checkpoint)


def test_rows_hold_plain_values_and_the_handles_sit_beside_them():
    """The sampled config and the Checkpoint object travel in the handles, by trial id, not in the rows."""
    checkpoint = SimpleNamespace(path="/runs/ray/search/trial_b/checkpoint_000000")
    results = [
        _result(CONFIG, {"val_accuracy": 0.9, "step": 600}, path="/runs/ray/search/trial_a"),
        _result(CONFIG, {"val_accuracy": 0.8, "step": 200}, path="/runs/ray/search/trial_b", checkpoint=checkpoint),
        _result({}, {}, path="/runs/ray/search/trial_c"),
    ]
    rows, handles = _rows(results, _setup())
    assert [r["trial_id"] for r in rows] == ["a", "b", "c"] and list(handles) == ["a", "b", "c"]
    assert handles["b"] == TrialHandle(config=CONFIG, checkpoint=checkpoint) and handles["a"].checkpoint is None
    assert handles["c"] == TrialHandle(config={})
    assert not any(k.startswith("_") for r in rows for k in r)
    json.dumps(rows, allow_nan=True)  # plain values only


def test_the_front_is_exported_from_the_handles_checkpoints(tmp_path, monkeypatch):
    import nas.tune

    class Checkpoint:
        def to_directory(self, path):
            (tmp_path / "copied").mkdir(exist_ok=True)
            (tmp_path / "copied" / "from").write_text(path)

    monkeypatch.setattr(nas.tune, "evaluate_dir", lambda *a, **kw: {"accuracy": 0.75})
    final_export = tmp_path / "final_export"
    final_export.mkdir()
    front = [
        {"trial_id": "final", "arch": "2L-256", "export_dir": str(final_export)},
        {"trial_id": "a", "arch": "2L-128"},
        {"trial_id": "b", "arch": "1L-128"},  # its trial kept no checkpoint: nothing to export, and it says so
    ]
    handles = {"a": TrialHandle(config=CONFIG, checkpoint=Checkpoint()), "b": TrialHandle(config=CONFIG)}
    base = DistillConfig(data_dir=str(tmp_path))
    _export_front(tmp_path, front, handles, get_task("sst2"), base, None, latency_device="cpu")
    assert [r.get("dev_metric") for r in front] == [0.75, 0.75, None]
    assert Path(front[0]["export"]).name == "01-2L-256" and Path(front[0]["export"]).is_dir()
    assert (tmp_path / "copied" / "from").read_text() == front[1]["export"] and front[2]["export"] is None
    assert front[2]["export_error"] == "no model: its trial kept no checkpoint"
    assert not (tmp_path / "export" / "03-1L-128").exists()


def test_a_trial_stopped_by_the_budget_before_any_report_is_not_started():
    """The STS-B search died here: Tune returned the trial with no config and no metrics."""
    for metrics in ({}, {"trial_id": "abc123", "time_total_s": 3.0}):  # nothing, or only Tune's bookkeeping
        row, handle = _row(_result({}, metrics), _setup())
        assert row["status"] == "not_started" and row["arch"] is None and row["params"] is None
        assert row["val_metric"] is None and "before its first report" in row["error"]
        assert handle == TrialHandle(config={}, checkpoint=None)


def test_a_started_trial_cut_by_the_budget_before_its_report_is_not_started():
    """The CoNLL-2003 search's last scoring trial: Tune had its config, then the budget ended it before it
    reported; its row read `failed`, 'no finite validation score'."""
    row, handle = _row(_result(CONFIG, {"trial_id": "abc123", "time_total_s": 0.4}), _setup())
    assert row["status"] == "not_started" and "before its first report" in row["error"]
    assert row["val_metric"] is None and handle.config == CONFIG
    # a trial that did report, but never its score, failed
    row, _ = _row(_result(CONFIG, {"trial_id": "abc123", "time_total_s": 9.0, "step": 12}), _setup())
    assert row["status"] == "failed" and "no finite validation score" in row["error"]


def test_metrics_without_a_config_fail_the_row_not_the_search():
    row, _ = _row(_result({}, {"val_accuracy": 0.9, "step": 200, "arch": "2L-256"}), _setup())
    assert row["status"] == "failed" and row["val_metric"] is None and row["arch"] == "2L-256"


@pytest.mark.parametrize("metrics,status", [
    ({"val_accuracy": -1.0, "status": "rejected", "reason": "too slow"}, "rejected"),
    ({"val_accuracy": float("nan"), "step": 200}, "failed"),
    ({"val_accuracy": 0.8, "step": 200}, "stopped"),
])
def test_statuses(metrics, status):
    row, _ = _row(_result(CONFIG, metrics), _setup())
    assert row["status"] == status
