"""`nas.trial.run_trial`'s reports to Tune: checkpoints when the score improves, and the best export with
the final report whichever step was best (a resumed trial may have lost the checkpoint of its best step)."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest

import nas.trial as trial
from distill.arch import BertArch
from distill.run.config import DistillConfig
from distill.train.loop import LoopConfig
from nas.config import Constraints
from nas.space import get_space
from nas.trial import TrialSetup

CONFIG = {"layers": 2, "hidden": 36, "heads": [3, 3], "ffn": [37, 37],
          "learning_rate": 1e-3, "temperature": 2.0, "hard_weight": 0.5, "hidden_weight": 0.0, "init_layers": "uniform"}


@pytest.fixture
def reports(monkeypatch, tmp_path):
    """run_trial with Tune's report and context, the cost and the distillation faked: (reports, run)."""
    import ray.tune

    for name in ("BERTNAS_CACHE", "XLA_PYTHON_CLIENT_PREALLOCATE"):  # run_trial sets them, as in a Ray worker
        monkeypatch.setenv(name, os.environ.get(name, ""))
        monkeypatch.delenv(name)
    sent = []
    monkeypatch.setattr(ray.tune, "report", lambda metrics, checkpoint=None: sent.append((metrics, checkpoint)))
    monkeypatch.setattr(ray.tune, "get_context", lambda: None)
    monkeypatch.setattr(trial, "_trial_dir", lambda ctx: tmp_path / "trial_x")
    monkeypatch.setattr(trial, "enable_compilation_cache", lambda: None)  # the session's cache stays in place
    cost = SimpleNamespace(params=1000, flops=2000, latency_ms=0.5, batch_latency_ms=1.5, speedup=3.0)
    monkeypatch.setattr(trial, "candidate_cost", lambda setup, arch: cost)
    setup = TrialSetup(
        base=DistillConfig(loop=LoopConfig(max_steps=24)), space=get_space("tiny"),
        teacher_arch=BertArch.uniform(2, 36, 3, 37), head="classification", num_labels=2, seq_len=7,
        constraints=Constraints(), metric="val_accuracy", task_metric="accuracy", cache_root=str(tmp_path),
        teacher_eval={},
    )

    def run(scores: dict[int, float]) -> list:
        """A distillation evaluated at the steps of `scores`; its export holds the best (the first of ties)."""

        def distill(cfg, out, *, resume, report, teacher_eval):
            best = None
            for step, score in scores.items():
                if best is None or score > best["accuracy"]:
                    best = {"step": step, "accuracy": score}
                    (out / "export").mkdir(parents=True, exist_ok=True)
                    (out / "export" / "step").write_text(str(step))
                report(step, {"accuracy": score}, best)
            return {"export": {"dir": str(out / "export")}}

        monkeypatch.setattr(trial, "distill", distill)
        trial.run_trial(CONFIG, setup)
        return sent

    return run


def test_checkpoints_go_with_improvements_and_the_final_report(reports):
    sent = reports({6: 0.5, 12: 0.75, 18: 0.75, 24: 0.625})
    assert [(m["step"], m["val_accuracy"], m["status"]) for m, _ in sent] == [
        (6, 0.5, "running"), (12, 0.75, "running"), (18, 0.75, "running"), (24, 0.75, "completed")]
    assert [c is not None for _, c in sent] == [True, True, False, True]
    final = Path(sent[-1][1].path)
    assert final.name == "export" and (final / "step").read_text() == "12"  # the best step's model
    assert sent[-1][0]["speedup"] == 3.0 and sent[-1][0]["objective_latency_ms"] == 0.5


def test_a_trial_whose_best_step_came_before_a_resume_still_ends_with_a_checkpoint(reports):
    """The search killed and resumed once its trial had reported step 6, its best: Tune's saved state may lack
    that report's checkpoint, and no later step improves on it. The final report carries the export."""
    sent = reports({6: 0.5, 12: 0.5, 18: 0.5, 24: 0.5})
    assert [c is not None for _, c in sent] == [True, False, False, True]
    assert (Path(sent[-1][1].path) / "step").read_text() == "6"
