"""The loop on packed batches (`LoopConfig.packing`): epochs of varying size, the flag's resolution, where
`auto` packs, learning.

A packed epoch has as many steps as its packing makes; the loop's epoch boundaries, evaluations, schedule
and results follow them. Fine-tuning the tiny teacher on packed batches of synthetic SST-2 learns the task
as the bucketed run does. (The SIGKILL-and-resume drill runs packed too: tests/distill/run/test_finetune_resume.py.)
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest
from helpers import write_sst2, write_tiny_teacher

from distill import cli
from distill.run.config import FinetuneConfig
from distill.run.finetuning import finetune
from distill.train.loop import Epochs, LoopConfig, devices_record
from distill.train.optim import OptimizerConfig
from tasks.errors import UserError
from tasks.features import Features
from tasks.packing import PAYS, epoch_size, pack_shape, packing_cost


def _features(n: int = 150, kind: str = "classification") -> Features:
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 30, size=n).astype(np.int32)
    return Features(kind=kind, max_length=32, input_ids=[np.ones(k, np.int32) for k in lengths],
                    token_type_ids=[np.zeros(k, np.int32) for k in lengths], lengths=lengths,
                    example_index=np.arange(n, dtype=np.int32), labels=rng.integers(0, 2, size=n).astype(np.int32))


def test_packed_epochs_follow_their_packing():
    f = _features()
    loop = LoopConfig(epochs=3, batch_size=8, packing=True, seed=5)
    epochs = loop.epochs_of(f)
    shape = pack_shape(f, 8)
    assert epochs.sizes == tuple(epoch_size(f, shape, 5, e) for e in range(3))
    assert epochs.total == sum(epochs.sizes) == loop.total_steps(f)
    assert abs(epochs.total - 3 * 150 / 8) < 0.25 * 3 * 150 / 8
    starts = epochs.starts
    assert epochs.of(0) == 0 and epochs.of(starts[1]) == 1 and epochs.of(starts[1] - 1) == 0
    assert epochs.fraction(starts[1]) == 1.0 and epochs.fraction(starts[2] + epochs.sizes[2] // 2) == pytest.approx(
        2 + (epochs.sizes[2] // 2) / epochs.sizes[2])
    capped = LoopConfig(epochs=1, max_steps=epochs.sizes[0] + 3, batch_size=8, packing=True, seed=5).epochs_of(f)
    assert capped.sizes == epochs.sizes[:2] and capped.total == epochs.sizes[0] + 3  # as many epochs as steps reach
    bucketed = LoopConfig(epochs=2, batch_size=8).epochs_of(f)
    assert len(set(bucketed.sizes)) == 1 and bucketed.total == 2 * bucketed.sizes[0]
    tagging = Features(**{**f.__dict__, "kind": "tagging", "labels": None})
    assert not loop.packs(tagging) and len(set(loop.epochs_of(tagging).sizes)) == 1  # taggers keep buckets
    assert not LoopConfig(batch_size=1, packing=True).packs(f)  # one row holds more: buckets pad less


def test_epochs_fraction_matches_the_bucketed_arithmetic():
    e = Epochs((10, 10, 10), 30)
    assert [e.fraction(s) for s in (0, 5, 10, 15, 30)] == [0.0, 0.5, 1.0, 1.5, 3.0]
    assert [e.of(s) for s in (0, 9, 10, 29, 30)] == [0, 0, 1, 2, 2]


def test_packing_flag_resolution(tmp_path):
    assert cli.packing("on") == "on" and cli.packing("off") == "off"
    one_cpu = jax.default_backend() == "cpu" and jax.local_device_count() == 1
    assert cli.packing("auto") == ("auto" if one_cpu else "off")
    assert cli.packing("auto", grad_accum=2) == "off"  # micro-batches would split rows from their examples
    assert cli.packing("auto", processes=2) == "off"  # `bertnas finetune --workers 2`: rows split over processes
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"finetune": {"loop": {"epochs": 2}}}))  # from before the flag
    assert cli.packing("auto", str(run)) == "off"
    (run / "config.json").write_text(json.dumps({"finetune": {"loop": {"packing": True}}}))  # before 'auto'
    assert cli.packing("auto", str(run)) == "on" and cli.packing("off", str(run)) == "off"
    (run / "config.json").write_text(json.dumps({"finetune": {"loop": {"packing": "auto"}}}))
    assert cli.packing("auto", str(run)) == "auto"
    with pytest.raises(UserError, match="grad-accum"):
        LoopConfig(batch_size=8, grad_accum=2, packing=True)
    with pytest.raises(UserError, match="packing: 'yes'"):
        LoopConfig(packing="yes")
    assert LoopConfig(packing=True).packing == "on" and LoopConfig(packing=False).packing == "off"
    assert [LoopConfig(packing=p).packing_key() for p in ("off", "on", "auto")] == [
        {}, {"packing": True}, {"packing": "auto"}]  # keys of runs from before 'auto' stay valid
    p = cli.Parser(prog="t")
    cli.add_run_args(p, lr=1e-4, epochs=1)
    assert cli.loop_from_args(p.parse_args(["--output", "o", "--packing", "off"])).packing == "off"
    assert cli.loop_from_args(p.parse_args(["--output", "o", "--grad-accum", "2", "--batch-size", "8"])).packing == "off"
    p.add_argument("--workers", type=int, default=1)
    assert cli.loop_from_args(p.parse_args(["--output", "o", "--workers", "2"])).packing == "off"


def _lengths(lengths) -> Features:
    lengths = np.asarray(lengths, np.int32)
    n = len(lengths)
    return Features(kind="classification", max_length=128, input_ids=[np.ones(k, np.int32) for k in lengths],
                    token_type_ids=[np.zeros(k, np.int32) for k in lengths], lengths=lengths,
                    example_index=np.arange(n, dtype=np.int32), labels=np.zeros(n, np.int32))


def test_auto_packs_where_packing_saves_compute():
    """`--packing auto` packs short sentences of varied length (SST-2-like) and keeps buckets for long-tailed
    pairs (STS-B-like: rows as long as the longest pair cost more attention than buckets pad) and for
    sentences of one length (no padding to save); `on` packs them all."""
    rng = np.random.default_rng(0)
    short = _lengths(np.clip(rng.gamma(3.0, 4.5, 4000).astype(int) + 3, 3, 66))  # mean ~16, longest 66
    long_tail = _lengths(np.r_[np.clip(rng.normal(28, 8, 4000).astype(int), 8, 80), [125]])  # one 125-token pair
    uniform = _lengths([7] * 400)
    assert packing_cost(short, pack_shape(short, 32), 32) < PAYS < packing_cost(long_tail, pack_shape(long_tail, 32), 32)
    auto, on = LoopConfig(batch_size=32, packing="auto", devices=1), LoopConfig(batch_size=32, packing="on", devices=1)
    one_cpu = jax.default_backend() == "cpu" and jax.local_device_count() == 1
    assert [auto.packs(f) for f in (short, long_tail, uniform)] == [one_cpu, False, False]
    assert [on.packs(f) for f in (short, long_tail, uniform)] == [True, True, True]
    assert devices_record(auto, long_tail)["packing"] is False and devices_record(on, long_tail)["packing"] is True
    # a run saves, keys and resumes what auto decided for its features
    assert auto.resolved(short).packing == ("on" if one_cpu else "off") and auto.resolved(long_tail).packing == "off"
    assert on.resolved(long_tail) is on and auto.resolved(short).packing_key() == ({"packing": True} if one_cpu else {})


def test_packed_finetuning_learns_and_records_it(tmp_path):
    """The tiny teacher on synthetic SST-2, packed: dev accuracy >= 0.9 (the bucketed run's bar in
    tests/distill/run/test_finetune.py), about 200 / 16 steps an epoch, results say it packed."""
    teacher = write_tiny_teacher(tmp_path / "teacher")
    data = write_sst2(tmp_path / "data", n_train=200, n_dev=40)
    cfg = FinetuneConfig(task="sst2", teacher=str(teacher), data_dir=str(data),
                         optimizer=OptimizerConfig(learning_rate=3e-3),
                         loop=LoopConfig(epochs=6, batch_size=16, packing=True, devices=1))
    results = finetune(cfg, tmp_path / "out", use_cache=False)
    assert results["packing"] is True
    assert results["best"]["accuracy"] >= 0.9, results["history"]
    assert 0.75 * 6 * 200 / 16 <= results["steps"] <= 1.25 * 6 * 200 / 16
    assert [round(h["epoch"], 3) for h in results["history"]] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    assert json.loads((Path(tmp_path / "out") / "config.json").read_text())["total_steps"] == results["steps"]
