"""ASHA stops a clearly bad trial at its first rung; a constraint gives `rejected` rows with nothing trained.

One real search of 4 candidates from the tiny space (random sampler, seed 0, one trial at a time)
with `max_params=18000`: the two 2-layer hidden-36 students (20.6k and 22.1k parameters) break it and
are rejected before any training; the other two (2L-24 at 12.5k, 1L-36 at 17.4k) are distilled for 6
steps with an evaluation every 3 (ASHA's grace period, reduction factor 3). The second trained trial
is made clearly bad: it reports a validation accuracy of 0 at every evaluation, so at ASHA's first
rung (step 3) it is below the cutoff that the first trial set there, and ASHA must stop it. The first
trained trial has nothing to be compared with and runs to the end.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

import pytest
from helpers import write_sst2, write_task_teacher

pytestmark = pytest.mark.slow

ROLES = "BERTNAS_TEST_ROLES"
MAX_PARAMS = 18000


def _role(trial_id: str) -> str:
    """'good' for the first trained trial, 'bad' for the second, 'plain' after; trials run one at a time."""
    root = Path(os.environ[ROLES])
    for role in ("good", "bad"):
        try:
            fd = os.open(root / role, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            continue
        os.write(fd, trial_id.encode())
        os.close(fd)
        return role
    return "plain"


def role_trial(config: dict, setup) -> None:
    """`nas.trial.run_trial`; a trained trial takes its role at its first report (pickled by value to Ray)."""
    from ray import tune

    import nas.trial as trial

    real = trial.distill
    roles: list[str] = []

    def distill(cfg, out, *, report, **kw):
        def reporting(step, result, best):
            roles[:] = roles or [_role(tune.get_context().get_trial_id())]
            if roles[0] == "bad":  # a validation accuracy of 0 at every evaluation
                result = {**result, setup.task_metric: 0.0}
                best = {**(best or {"step": step}), setup.task_metric: 0.0}
            report(step, result, best)

        return real(cfg, out, report=reporting, **kw)

    trial.distill = distill
    try:
        return trial.run_trial(config, setup)
    finally:
        trial.distill = real


@pytest.fixture
def fresh_ray(monkeypatch, tmp_path):
    """A local Ray started by the search itself, whose workers see the roles directory."""
    import ray
    import ray.cloudpickle

    if ray.is_initialized():
        ray.shutdown()
    roles = tmp_path / "roles"
    roles.mkdir()
    monkeypatch.setenv(ROLES, str(roles))  # inherited by the Ray processes that the search starts
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield roles
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    ray.shutdown()


def test_asha_stops_a_bad_trial_and_a_constraint_rejects_candidates(fresh_ray, monkeypatch, tmp_path):
    import nas.tune
    from nas.config import Constraints, SearchConfig

    monkeypatch.setattr(nas.tune, "run_trial", role_trial)
    data = write_sst2(tmp_path / "data", n_train=300, n_dev=40)
    teacher = write_task_teacher(tmp_path / "teacher", "sst2")  # fine-tuned already: no teacher training
    cfg = SearchConfig(
        task="sst2", teacher=str(teacher), data_dir=str(data), space="tiny", strategy="trials", num_samples=4,
        trial_steps=6,
        evals_per_trial=2, validation=40, algorithm="random", scheduler="asha", final_steps=0, seed=0,
        constraints=Constraints(max_params=MAX_PARAMS),
        latency_threads=0,  # measured in the trial's process: no child process per candidate
    )
    assert cfg.eval_every == 3 and cfg.reduction_factor == 3
    out = tmp_path / "out"
    summary = nas.tune.search(cfg, out)
    with open(out / "results.csv") as fh:
        rows = {r["trial_id"]: r for r in csv.DictReader(fh)}
    assert len(rows) == 4
    roles = {p.name: p.read_text() for p in fresh_ray.iterdir()}
    assert sorted(roles) == ["bad", "good"], f"fewer than 2 trained trials: {rows}"

    # ASHA: the bad trial stopped at its first rung, after 3 of its 6 steps; the first one ran them all.
    bad, good = rows[roles["bad"]], rows[roles["good"]]
    assert bad["status"] == "stopped" and int(bad["steps"]) == 3, bad
    assert float(bad["val_metric"]) == 0.0
    bad_run = out / "ray" / "search" / f"trial_{bad['trial_id']}" / "run"
    logged = [json.loads(line)["step"] for line in (bad_run / "metrics.jsonl").read_text().splitlines()]
    assert max(logged) < 6 and not (bad_run / "results.json").exists(), "the bad trial trained on"
    assert good["status"] == "completed" and int(good["steps"]) == 6, good
    assert summary["counts"]["stopped"] >= 1

    # The constraint: candidates over 18k parameters are rejected with the reason, and never trained.
    rejected = [r for r in rows.values() if r["status"] == "rejected"]
    assert rejected and summary["counts"]["rejected"] == len(rejected), [(r["arch"], r["params"]) for r in rows.values()]
    for r in rows.values():
        over = int(r["params"]) > MAX_PARAMS
        assert (r["status"] == "rejected") == over, r
        if over:
            assert "--max-params" in r["error"] and r["val_metric"] == "" and r["pareto"] == "False", r
            assert int(r["steps"]) == 0
            assert not (out / "ray" / "search" / f"trial_{r['trial_id']}" / "run").exists(), "a rejected trial trained"
