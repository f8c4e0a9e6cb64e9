"""Fine-tuning, distillation and supernet training across processes (`distill.train.multihost`,
`nas.multihost`): two JAX processes launched as Ray Train workers (`JaxTrainer`) on the local CPU, joined by
`jax.distributed` with gloo collectives, each placing its half of every batch, follow the one-process loss
curve step by step (1e-4 relative; the same tolerance as the 4-device runs of `test_data_parallel.py`) and
reach the same dev accuracy.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest
from helpers import write_sst2, write_task_teacher, write_tiny_teacher

from distill.kd.objective import LossConfig
from distill.model.store import load_bert
from distill.run import DistillConfig, FinetuneConfig, SubnetChoices, SupernetConfig, distill, finetune, train_supernet
from distill.train.loop import LoopConfig
from distill.train.optim import OptimizerConfig
from nas.multihost import run_on_workers

TOLERANCE = 1e-4
pytestmark = pytest.mark.slow


def train_losses(out: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {r["step"]: r["train_loss"] for r in records if "train_loss" in r}


def assert_runs_match(one: dict, two: dict, out_one: Path, out_two: Path, metric: str = "accuracy") -> None:
    """The two-worker run (`two`) trained as the one-process run (`one`): on 2 devices, the same 20-step loss
    curve (to `TOLERANCE` relative) and the same best step and dev `metric`."""
    assert (one["devices"], two["devices"]) == (1, 2) and two["mesh"] == {"data": 2}
    a, b = train_losses(out_one), train_losses(out_two)
    assert len(a) == 20 and a.keys() == b.keys()
    assert max(abs(a[k] - b[k]) / abs(a[k]) for k in a) < TOLERANCE
    assert one["best"]["step"] == two["best"]["step"] and one["best"][metric] == two["best"][metric]


def test_two_ray_train_workers_fine_tune_as_one_process(tmp_path, monkeypatch):
    monkeypatch.setenv("BERTNAS_CACHE", str(tmp_path / "cache"))
    write_sst2(tmp_path / "data", n_train=160, n_dev=24)
    write_tiny_teacher(tmp_path / "raw")
    cfg = FinetuneConfig(task="sst2", teacher=str(tmp_path / "raw"), data_dir=str(tmp_path / "data"),
                         optimizer=OptimizerConfig(learning_rate=3e-3),
                         loop=LoopConfig(epochs=2, batch_size=16, log_every=1, checkpoint_every=10))
    assert jax.process_count() == 1 and jax.device_count() == 1
    one = finetune(cfg, tmp_path / "one", use_cache=False)
    two = run_on_workers(cfg, tmp_path / "two", workers=2)
    assert_runs_match(one, two, tmp_path / "one", tmp_path / "two")
    assert [h["step"] for h in two["history"]] == [10, 20]
    assert (tmp_path / "two" / "teacher" / "model.safetensors").is_file()
    assert sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir() if p.name.isdigit()) == ["10", "20"]


def test_two_ray_train_workers_distil_as_one_process(tmp_path, monkeypatch):
    """Each worker labels the data with the teacher itself (no cache across processes), then trains its half
    of every batch; the student's curve and dev score are the one-process run's."""
    monkeypatch.setenv("BERTNAS_CACHE", str(tmp_path / "cache"))
    write_sst2(tmp_path / "data", n_train=160, n_dev=24)
    teacher = write_task_teacher(tmp_path / "teacher", "sst2")
    cfg = DistillConfig(task="sst2", teacher=str(teacher), student="2L-24-H3-F30-D8", data_dir=str(tmp_path / "data"),
                        loss=LossConfig(hard_weight=0.5), optimizer=OptimizerConfig(learning_rate=3e-3),
                        loop=LoopConfig(epochs=2, batch_size=16, log_every=1, checkpoint_every=10))
    one = distill(cfg, tmp_path / "one", use_cache=False)
    two = run_on_workers(cfg, tmp_path / "two", workers=2)
    assert_runs_match(one, two, tmp_path / "one", tmp_path / "two")
    assert (tmp_path / "two" / "export" / "model.safetensors").is_file()
    assert not (tmp_path / "cache" / "outputs").exists()  # no labels cached: every process labelled for itself


def test_two_ray_train_workers_train_a_supernet_as_one_process(tmp_path, monkeypatch):
    """The sandwich rule across processes: every step's sampled sub-networks are the same in both workers (and
    in one process), so the supernet's curve, its best evaluation of the largest and smallest sub-networks,
    and its weights are the one-process run's."""
    monkeypatch.setenv("BERTNAS_CACHE", str(tmp_path / "cache"))
    write_sst2(tmp_path / "data", n_train=160, n_dev=24)
    teacher = write_task_teacher(tmp_path / "teacher", "sst2")
    cfg = SupernetConfig(task="sst2", teacher=str(teacher), data_dir=str(tmp_path / "data"),
                         choices=SubnetChoices(layers=(1, 2), hidden=(24, 36), heads=(1, 3), ffn=(7, 37)),
                         optimizer=OptimizerConfig(learning_rate=3e-3),
                         loop=LoopConfig(epochs=2, batch_size=16, log_every=1, checkpoint_every=10))
    one = train_supernet(cfg, tmp_path / "one", use_cache=False)
    two = run_on_workers(cfg, tmp_path / "two", workers=2)
    assert_runs_match(one, two, tmp_path / "one", tmp_path / "two", metric="score")
    assert two["best"]["smallest_accuracy"] == one["best"]["smallest_accuracy"]
    a, b = load_bert(one["supernet_dir"]).params, load_bert(two["supernet_dir"]).params
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-3, atol=1e-5), a, b)
    assert not (tmp_path / "cache" / "supernets").exists()  # nothing cached across processes
