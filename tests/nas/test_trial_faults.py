"""Trials that run out of memory, whose loss turns NaN or whose worker is killed: failed rows, the search goes on.

A search of 5 candidates where each of the first 4 trials meets one fault,
for real: an XLA allocation the device cannot hold (RESOURCE_EXHAUSTED, after
the trial's first report), a host allocation that fails (MemoryError, before
any training), a learning rate that makes the loss non-finite, and SIGKILL of
the trial's worker process (what the kernel's OOM killer does). The fifth
trial runs clean: the search must finish with it on the front and the four
others reported as `failed` with their cause.
"""

from __future__ import annotations

import csv
import os
import signal
import sys
from pathlib import Path

import pytest
from helpers import write_sst2, write_task_teacher

pytestmark = pytest.mark.slow

FAULTS = ("device_oom", "host_oom", "nan", "killed")
CLAIMS = "BERTNAS_TEST_FAULTS"


def _claim(trial_id: str) -> str | None:
    """The next fault no trial has taken yet (None when all are taken); trials run one at a time."""
    root = Path(os.environ[CLAIMS])
    for i, fault in enumerate(FAULTS):
        try:
            fd = os.open(root / f"{i}-{fault}", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            continue
        os.write(fd, trial_id.encode())
        os.close(fd)
        return fault
    return None


def faulty_trial(config: dict, setup) -> None:
    """`nas.trial.run_trial`, with this trial's fault (pickled by value into the Ray workers)."""
    from ray import tune

    import nas.trial as trial

    fault = _claim(tune.get_context().get_trial_id())
    if fault == "host_oom":
        import numpy as np

        np.empty(1 << 48, np.uint8)  # 256 TiB: more than any address space; raises MemoryError
    if fault == "nan":
        config = {**config, "learning_rate": 1e30}
    if fault not in ("device_oom", "killed"):
        return trial.run_trial(config, setup)

    def after_first_report():
        if fault == "killed":
            os.kill(os.getpid(), signal.SIGKILL)
        import jax.numpy as jnp

        jnp.ones((1 << 46,), jnp.float32).block_until_ready()  # 256 TiB: XLA's RESOURCE_EXHAUSTED

    real = trial.distill

    def distill(cfg, out, *, report, **kw):
        def report_then_fail(step, result, best):
            report(step, result, best)
            after_first_report()

        return real(cfg, out, report=report_then_fail, **kw)

    trial.distill = distill
    try:
        return trial.run_trial(config, setup)
    finally:
        trial.distill = real


@pytest.fixture
def fresh_ray(monkeypatch, tmp_path):
    """A local Ray started by the search itself, whose workers see the fault claims directory."""
    import ray
    import ray.cloudpickle

    if ray.is_initialized():
        ray.shutdown()
    claims = tmp_path / "claims"
    claims.mkdir()
    monkeypatch.setenv(CLAIMS, str(claims))  # inherited by the Ray processes that the search starts
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield claims
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    ray.shutdown()


def test_out_of_memory_nan_and_killed_trials_fail_and_the_search_finishes(fresh_ray, monkeypatch, tmp_path):
    import nas.tune
    from nas.config import SearchConfig

    monkeypatch.setattr(nas.tune, "run_trial", faulty_trial)
    data = write_sst2(tmp_path / "data", n_train=300, n_dev=40)
    teacher = write_task_teacher(tmp_path / "teacher", "sst2")  # fine-tuned already: no teacher training
    cfg = SearchConfig(
        task="sst2", teacher=str(teacher), data_dir=str(data), space="tiny", strategy="trials", num_samples=5,
        trial_steps=12,
        evals_per_trial=2, validation=40, algorithm="random", scheduler="none", final_steps=0, seed=0,
        latency_threads=0,  # measured in the trial's process: no child process per candidate
    )
    out = tmp_path / "out"
    summary = nas.tune.search(cfg, out)

    claimed = {p.name.split("-", 1)[1]: p.read_text() for p in fresh_ray.iterdir()}
    assert sorted(claimed) == sorted(FAULTS), "every fault went to a trial"
    with open(out / "results.csv") as fh:
        rows = {r["trial_id"]: r for r in csv.DictReader(fh)}
    assert len(rows) == 5 and summary["counts"]["failed"] == 4
    causes = {"device_oom": "RESOURCE_EXHAUSTED", "host_oom": "MemoryError", "nan": "non-finite"}
    for fault, trial_id in claimed.items():
        row = rows[trial_id]
        assert row["status"] == "failed" and row["val_metric"] == "" and row["pareto"] == "False", (fault, row)
        assert row["error"], (fault, row)
        if fault in causes:
            assert causes[fault] in row["error"], (fault, row["error"])
    (clean,) = [r for t, r in rows.items() if t not in claimed.values()]
    assert clean["status"] == "completed" and clean["pareto"] == "True" and float(clean["val_metric"]) >= 0
    assert Path(clean["export"]).is_dir() and summary["pareto"] == [clean["trial_id"]]
