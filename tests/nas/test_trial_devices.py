"""Trials on accelerators: a fraction of a GPU per trial caps each trial's JAX memory pool at its share
(`trial_device_env`, given to every Ray worker through `ray.init`'s runtime_env), whole GPUs or TPU chips
are the trial's Ray resources (its data-parallel mesh is then every device the trial sees)."""

from __future__ import annotations

import pytest

from distill.cli.host import RETAIN_FREED_MEMORY_ENV
from nas.config import SearchConfig
from nas.tune import MEMORY_HEADROOM, init_ray, ray_init_kwargs, trial_device_env, tune_trainable, worker_host_env


def test_a_fraction_of_a_gpu_caps_the_trials_memory_pool_at_its_share():
    env = trial_device_env(0.25, environ={})
    assert env["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
    assert float(env["XLA_CLIENT_MEM_FRACTION"]) == pytest.approx(0.25 * MEMORY_HEADROOM, abs=1e-3)
    assert env["XLA_PYTHON_CLIENT_MEM_FRACTION"] == env["XLA_CLIENT_MEM_FRACTION"]  # the old name too
    four = [float(trial_device_env(0.25, environ={})["XLA_CLIENT_MEM_FRACTION"])] * 4
    assert sum(four) < 1  # four trials sharing a GPU fit in it together


def test_whole_gpus_allocate_on_demand_and_a_cpu_search_sets_only_the_host_allocator(monkeypatch):
    assert trial_device_env(2, environ={}) == {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    assert trial_device_env(0, environ={}) == {}
    for name in RETAIN_FREED_MEMORY_ENV:
        monkeypatch.delenv(name, raising=False)
    # CPU trials keep freed memory (`distill.cli.host`); GPU trials leave the host allocator alone
    assert ray_init_kwargs(SearchConfig())["runtime_env"] == {"env_vars": RETAIN_FREED_MEMORY_ENV}
    assert ray_init_kwargs(SearchConfig(gpus_per_trial=1))["runtime_env"] == {
        "env_vars": {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"}}
    assert "runtime_env" not in ray_init_kwargs(SearchConfig(tpus_per_trial=1))  # nor do TPU trials
    assert worker_host_env(False, environ={"MALLOC_ARENA_MAX": "4"}) == {}  # the user's own malloc settings win


def test_the_users_own_settings_win():
    env = trial_device_env(0.5, environ={"XLA_CLIENT_MEM_FRACTION": "0.3"})
    assert "XLA_CLIENT_MEM_FRACTION" not in env and env["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.450"


def test_trial_resources_name_the_gpus_or_tpu_chips():
    def fn(config, setup):
        return None

    gpu = tune_trainable(SearchConfig(cpus_per_trial=2, gpus_per_trial=0.5), fn, None)
    tpu = tune_trainable(SearchConfig(cpus_per_trial=2, tpus_per_trial=4), fn, None)
    assert gpu._resources.required_resources == {"CPU": 2, "GPU": 0.5}  # what Tune schedules the trial by
    assert tpu._resources.required_resources == {"CPU": 2, "TPU": 4}


def test_every_ray_worker_of_a_gpu_search_gets_the_memory_settings(monkeypatch):
    """The settings reach the processes trials run in: a task in the Ray that a search with
    --gpus-per-trial 0.25 starts reads them from its environment (no GPU is needed to check that)."""
    import ray

    for name in ("XLA_CLIENT_MEM_FRACTION", "XLA_PYTHON_CLIENT_MEM_FRACTION", "XLA_PYTHON_CLIENT_PREALLOCATE",
                 "RAY_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    init_ray(SearchConfig(gpus_per_trial=0.25))
    try:
        @ray.remote(num_cpus=1)
        def read_env():
            import os

            return {k: os.environ.get(k) for k in ("XLA_CLIENT_MEM_FRACTION", "XLA_PYTHON_CLIENT_PREALLOCATE")}

        seen = ray.get(read_env.remote(), timeout=120)
    finally:
        ray.shutdown()
    assert seen == {"XLA_CLIENT_MEM_FRACTION": trial_device_env(0.25, environ={})["XLA_CLIENT_MEM_FRACTION"],
                    "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}


@pytest.mark.parametrize("where", [{"address": "auto"}, {"gpus_per_trial": 0.5}, {"tpus_per_trial": 4}])
def test_trials_on_other_devices_divide_by_their_own_teacher_latency(tmp_path, monkeypatch, where):
    """Trials on a cluster or on accelerators measure the teacher on their own device: the driver's CPU
    median would mix devices in one speedup, so it is neither measured nor handed to them."""
    import nas.cost
    from nas import tune

    monkeypatch.setattr(nas.cost.CostModel, "costs_beside", lambda *a, **k: pytest.fail("teacher measured"))
    setup = object()  # returned as it came: no teacher latency set on it
    cfg = SearchConfig(strategy="trials", **where)
    assert tune._trials_teacher_latency(cfg, setup, None, tmp_path, resume=False) == (setup, None)
    assert not any(tmp_path.iterdir())  # no teacher_latency.json either
