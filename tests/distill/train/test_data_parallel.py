"""Data parallelism over local devices (`distill.model.sharding`, `LoopConfig.devices`).

The multi-device runs need a process started with 4 virtual CPU devices
(`--xla_force_host_platform_device_count=4`), so they run in a child process
(`data_parallel_worker.py`): a fine-tune, a distillation and a supernet's
training on 4 devices follow the 1-device loss curve step by step and export
the same weights, so does a fine-tune with the parameters split too (`--fsdp`); a checkpoint
written on 4 devices, state replicated or split, resumes in a 1-device process and continues
the 4-device run's curve. Each check allows 1e-4 relative (measured: about 1e-6, from the
order of the cross-device sums).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from distill.model.sharding import data_parallel, for_batches
from distill.train.loop import LoopConfig, devices_record
from tasks.errors import UserError

WORKER = Path(__file__).with_name("data_parallel_worker.py")
TOLERANCE = 1e-4


def run_worker(mode: str, root: Path, devices: int) -> dict:
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
           "BERTNAS_CACHE": str(root / "cache")}
    proc = subprocess.run([sys.executable, str(WORKER), mode, str(root)], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def relative_gap(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(abs(a[k] - b[k]) / abs(a[k]) for k in a)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("data-parallel")
    return run_worker("compare", root, 4), run_worker("resume", root, 1)


def test_four_devices_train_as_one(runs):
    compare, _ = runs
    assert compare["device_count"] == 4
    for job in ("finetune", "distill"):
        one, four = compare[f"{job}_1"], compare[f"{job}_4"]
        assert (one["devices"], four["devices"]) == (1, 4)
        assert len(one["losses"]) == 20
        assert relative_gap(one["losses"], four["losses"]) < TOLERANCE, job
        assert one["best"]["step"] == four["best"]["step"] and one["best"]["accuracy"] == four["best"]["accuracy"]
        assert compare[f"{job}_weights_gap"] < TOLERANCE, job
    assert compare["finetune_4"]["mesh"] == {"data": 4} and compare["finetune_4"]["precision"] == "fp32"


def test_four_devices_train_a_supernet_as_one(runs):
    """Supernet training (the sandwich rule: the largest, the smallest and sampled sub-networks each step) on
    4 devices follows the 1-device curve, picks the same best step and ends with the same weights."""
    compare, _ = runs
    one, four = compare["supernet_1"], compare["supernet_4"]
    assert (one["devices"], four["devices"]) == (1, 4) and four["mesh"] == {"data": 4}
    assert len(one["losses"]) == 20 and relative_gap(one["losses"], four["losses"]) < TOLERANCE
    assert one["best"]["step"] == four["best"]["step"]
    assert one["best"]["smallest_accuracy"] == four["best"]["smallest_accuracy"]
    assert four["best"]["score"] == pytest.approx(one["best"]["score"], rel=TOLERANCE)
    assert compare["supernet_weights_gap"] < TOLERANCE


def test_fsdp_splits_the_parameters_and_trains_as_one_device(runs):
    compare, _ = runs
    fsdp = compare["finetune_fsdp"]
    assert fsdp["fsdp"] is True
    assert fsdp["replicated"] == {"kernel": False, "bias": True}  # 108 columns split in 4; 37 do not divide
    assert relative_gap(compare["finetune_1"]["losses"], fsdp["losses"]) < TOLERANCE
    assert fsdp["weights_gap"] < TOLERANCE


@pytest.mark.parametrize("name, losses", [("finetune-4", "finetune_4"), ("finetune-fsdp", "finetune_fsdp")],
                         ids=["replicated", "fsdp"])
def test_checkpoint_from_four_devices_resumes_on_one(runs, name, losses):
    """A checkpoint of a 4-device run, its state replicated or split over the devices (`--fsdp`), resumes in
    a 1-device process and continues the 4-device curve."""
    compare, resumed = runs
    assert resumed["device_count"] == 1 and resumed[name]["devices"] == 1
    after = {k: v for k, v in resumed[name]["losses"].items() if int(k) > 10}
    assert len(after) == 10
    assert relative_gap({k: compare[losses]["losses"][k] for k in after}, after) < TOLERANCE
    assert [h["step"] for h in resumed[name]["history"]] == [10, 20]


def test_a_batch_size_the_devices_do_not_divide_is_refused(monkeypatch):
    fake = [jax.local_devices()[0]] * 3  # a Mesh of one device thrice builds; only its size matters here

    monkeypatch.setattr(jax, "local_devices", lambda: fake)
    with pytest.raises(UserError, match="--batch-size: 16 does not divide over the 3 devices"):
        data_parallel(16)
    assert for_batches(16).size == 1  # inference falls back to one device
    assert data_parallel(12, grad_accum=2).size == 3
    with pytest.raises(UserError, match="in 2 micro-batches; use a multiple of 6"):
        data_parallel(15, grad_accum=2)  # each micro-batch is split over the devices


def test_asking_for_more_devices_than_there_are_is_refused():
    with pytest.raises(UserError, match="--devices"):
        data_parallel(16, devices=len(jax.local_devices()) + 1)


def test_one_device_places_nothing():
    dp = data_parallel(16, devices=1)
    batch = {"input_ids": np.zeros((16, 7), np.int32)}
    assert dp.shard(batch) is batch and dp.replicate(batch) is batch
    record = devices_record(LoopConfig(batch_size=16, devices=1, precision="bf16"))
    assert record["devices"] == 1 and record["mesh"] == {"data": 1} and record["precision"] == "bf16"
    assert record["platform"] == "cpu"
