"""nas/cost.py: typical length, exact params, real latency, the latency cache, constraints."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import threading
import time
import types

import jax
import numpy as np
import pytest

import nas.cost
from distill.arch import BertArch
from distill.files import cache_root
from distill.model.bert import build_model, init_params
from nas.config import Constraints
from nas.cost import (
    Cost,
    CostModel,
    LatencyPredictor,
    device_name,
    latency_features,
    measure_latency,
    timing_params,
    typical_length,
)
from tasks.errors import UserError
from tasks.features import Features

HETERO = BertArch(
    num_layers=2, hidden_size=36, head_size=12, num_heads=(1, 3), ffn_sizes=(20, 37),
    vocab_size=101, max_position_embeddings=16,
)
TINY = BertArch.uniform(2, 36, 3, 37, vocab_size=101, max_position_embeddings=16)


def _features(lengths, max_length):
    ids = [np.ones(n, np.int32) for n in lengths]
    return Features("classification", max_length, ids, ids, np.asarray(lengths, np.int32),
                    np.arange(len(lengths), dtype=np.int32))


@pytest.fixture
def fake_measure(monkeypatch):
    """Replace the real measurement by a counter; latency grows with batch size."""
    calls = []

    def fake(arch, head, num_labels, seq_len, batch_size, **kw):
        calls.append((arch.name, head, num_labels, seq_len, batch_size))
        return 1.0 + batch_size, 2.0 + batch_size

    monkeypatch.setattr(nas.cost, "measure_latency", fake)
    return calls


def test_typical_length():
    lengths = np.arange(1, 101)
    assert typical_length(lengths) == 96  # 95th percentile 95.05 -> 96
    assert typical_length(lengths, percentile=50) == 56  # 50.5 -> 51 -> 56
    assert typical_length(lengths, multiple=1) == 96
    assert typical_length(lengths, max_length=90) == 90
    assert typical_length([3, 3, 3]) == 8
    assert typical_length(_features(list(range(1, 101)), 128)) == 96
    assert typical_length(_features(list(range(1, 101)), 90)) == 90  # clamped to features.max_length
    with pytest.raises(ValueError):
        typical_length([])


def test_params_match_built_model(fake_measure):
    cost = CostModel("classification", 3, 7, batch_size=4).cost(HETERO)
    params = init_params(build_model(HETERO, "classification", 3), jax.random.key(0), 7)
    assert cost.params == sum(x.size for x in jax.tree_util.tree_leaves(params))
    assert cost.flops == HETERO.flops(7, "classification", 3) > 0
    assert cost.arch == HETERO.name and cost.seq_len == 7
    assert (cost.latency_ms, cost.latency_ms_p95, cost.batch_latency_ms) == (2.0, 3.0, 5.0)
    assert cost.throughput == pytest.approx(4 * 1000 / 5.0)
    assert cost.speedup is None
    teacher = Cost("t", 10, 10, 7, 6.0, 7.0, 8.0, 4000.0)
    assert cost.with_speedup(teacher).speedup == pytest.approx(3.0)
    json.dumps(cost.to_dict())


def test_measure_latency_real():
    median, p95 = measure_latency(TINY, "classification", 3, 7, 2, repeats=3, warmup=1)
    assert 0 < median <= p95 and math.isfinite(p95)
    with pytest.raises(ValueError):
        measure_latency(TINY, "classification", 3, 17, 2)  # longer than max positions


def test_timing_params_have_the_models_shapes():
    """The host-drawn timing parameters have exactly the initialiser's tree, shapes and dtypes, finite
    values of the initialiser's scale, and the model runs on them."""
    model = build_model(HETERO, "classification", 3)
    real, timed = init_params(model, jax.random.key(0)), timing_params(model)
    assert jax.tree.structure(real) == jax.tree.structure(timed)
    for a, b in zip(jax.tree.leaves(real), jax.tree.leaves(timed)):
        assert (a.shape, a.dtype) == (b.shape, b.dtype)
        assert np.isfinite(np.asarray(b)).all()
    weights = np.asarray(timed["embeddings"]["word_embeddings"]["embedding"])
    assert 0.01 < weights.std() < 0.03
    ids = np.ones((2, 7), np.int32)
    out = model.apply({"params": timed}, ids, 0 * ids, ids, deterministic=True)
    assert all(np.isfinite(np.asarray(x, np.float32)).all() for x in jax.tree.leaves(out))


def test_measure_latency_times_at_least_min_seconds(monkeypatch):
    """A fast model is timed for `min_seconds` (many calls), capped at `max_repeats`; `repeats` is a floor."""
    calls = []
    real = nas.cost.jax.block_until_ready
    monkeypatch.setattr(nas.cost.jax, "block_until_ready", lambda x: calls.append(1) or real(x))
    measure_latency(TINY, "classification", 3, 7, 1, repeats=3, warmup=1, min_seconds=10.0, max_repeats=40)
    assert len(calls) == 1 + 40  # warm-up + capped timed calls (10 s would take far more)
    calls.clear()
    measure_latency(TINY, "classification", 3, 7, 1, repeats=5, warmup=0, min_seconds=0.0)
    assert len(calls) == 5


def test_bigger_model_is_slower():
    small = BertArch.uniform(1, 36, 3, 37, vocab_size=101, max_position_embeddings=32)
    big = BertArch.uniform(4, 96, 3, 384, vocab_size=101, max_position_embeddings=32)
    assert big.flops(32, "classification", 2) >= 4 * small.flops(32, "classification", 2)
    small_ms, _ = measure_latency(small, "classification", 2, 32, 32, repeats=5, warmup=2)
    big_ms, _ = measure_latency(big, "classification", 2, 32, 32, repeats=5, warmup=2)
    assert big_ms > small_ms


def test_cost_model_real_measurement_writes_cache():
    model = CostModel("tagging", 5, 7, batch_size=2, repeats=2)
    cost = model.cost(TINY)
    assert cost.latency_ms > 0 and cost.batch_latency_ms > 0 and cost.throughput > 0
    assert model.cache_path == cache_root() / "latency" / f"{device_name()}.json"
    data = json.loads(model.cache_path.read_text())
    assert len(data["entries"]) == 2 and data["device"] == device_name()
    assert os.sep not in device_name()


def test_cache_reuse_and_keys(fake_measure, tmp_path):
    path = tmp_path / "lat.json"
    model = CostModel("classification", 2, 7, batch_size=4, cache_path=path)
    first = model.cost(TINY)
    assert len(fake_measure) == 2  # batch 1 and batch 4
    assert model.cost(TINY) == first and len(fake_measure) == 2
    assert CostModel("classification", 2, 7, batch_size=4, cache_path=path).cost(TINY) == first
    assert len(fake_measure) == 2  # a new model on the same file reuses it
    CostModel("classification", 2, 8, batch_size=4, cache_path=path).cost(TINY)
    assert len(fake_measure) == 4  # another length is another key
    CostModel("classification", 2, 7, batch_size=8, cache_path=path).cost(TINY)
    assert len(fake_measure) == 5  # batch 1 is shared, batch 8 is new
    CostModel("classification", 2, 7, batch_size=4, cache_path=path).cost(TINY.replace(vocab_size=102))
    assert len(fake_measure) == 7  # same name, different arch
    CostModel("regression", 0, 7, batch_size=4, cache_path=path).cost(TINY)
    assert len(fake_measure) == 9
    assert len(json.loads(path.read_text())["entries"]) == 9


def test_concurrent_writers_merge(fake_measure, tmp_path):
    path = tmp_path / "lat.json"
    a = CostModel("classification", 2, 7, batch_size=4, cache_path=path)
    b = CostModel("classification", 2, 7, batch_size=4, cache_path=path)  # both read an empty file
    a.cost(TINY)
    b.cost(HETERO)
    assert len(json.loads(path.read_text())["entries"]) == 4
    b.cost(TINY)  # b finds a's entries in the file
    assert len(fake_measure) == 4


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"entries": 3}', "", '{"entries": {"k": 3}}'])
def test_corrupt_cache_is_ignored(fake_measure, tmp_path, text, caplog):
    path = tmp_path / "lat.json"
    path.write_text(text)
    with caplog.at_level("WARNING", logger="nas.cost"):
        CostModel("classification", 2, 7, batch_size=4, cache_path=path)
    assert ("ignoring unreadable latency cache" in caplog.text) == ("k" not in text)
    cost = CostModel("classification", 2, 7, batch_size=4, cache_path=path).cost(TINY)
    assert cost.latency_ms == 2.0 and len(fake_measure) == 2
    assert len(json.loads(path.read_text())["entries"]) == 2  # rewritten, valid again


def test_constraints():
    cost = Cost("4L-312", 14_500_000, 1, 7, 3.1, 3.5, 20.0, 1600.0, speedup=3.2)
    assert Constraints().violations(cost) == []
    assert Constraints(max_latency_ms=4, min_speedup=3, max_params=15_000_000).violations(cost) == []
    assert Constraints(max_latency_ms=2.0, min_speedup=5, max_params=10_000_000).violations(cost) == [
        "latency 3.1 ms > --max-latency-ms 2",
        "speedup 3.2x < --min-speedup 5",
        "params 14.5M > --max-params 10M",
    ]
    with pytest.raises(ValueError, match="--min-speedup"):
        Constraints(min_speedup=2).violations(dataclasses.replace(cost, speedup=None))
    for bad in ({"max_latency_ms": -1.0}, {"min_speedup": 0}, {"max_params": -5}, {"max_params": "10M"}):
        with pytest.raises(ValueError, match="--max|--min"):
            Constraints(**bad)


def test_cost_model_measures_on_one_thread_in_a_child(tmp_path):
    """threads=1: both batch sizes measured in one pinned child process, cached under their own keys."""
    path = tmp_path / "lat.json"
    model = CostModel("classification", 2, 7, batch_size=3, cache_path=path, repeats=3, min_seconds=0.01, threads=1)
    cost = model.cost(TINY)
    assert 0 < cost.latency_ms <= cost.latency_ms_p95 and cost.batch_latency_ms > 0
    entries = json.loads(path.read_text())["entries"]
    assert sorted(entries) == sorted([model.key(TINY, 1), model.key(TINY, 3)])
    assert all("|t1|" in k and v["threads"] == 1 for k, v in entries.items())
    in_process = CostModel("classification", 2, 7, batch_size=3, cache_path=path, repeats=3, min_seconds=0.01)
    assert in_process.key(TINY, 1) not in entries  # a different measurement: never mixed up


def _sampling_run(samples: list[list[set[int]]]):
    """A `subprocess.run` for nas.cost that records, every 20 ms while the child runs, the CPU affinity of each
    of its threads (`/proc/<pid>/task`)."""

    def run(cmd, *, capture_output, text, env, timeout):
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=text, env=env)
        result = {}
        reader = threading.Thread(target=lambda: result.update(zip(("out", "err"), proc.communicate(timeout=timeout))))
        reader.start()
        while proc.poll() is None:
            try:
                tids = os.listdir(f"/proc/{proc.pid}/task")
                samples.append([os.sched_getaffinity(int(tid)) for tid in tids])
            except (FileNotFoundError, ProcessLookupError):  # the child (or one of its threads) just ended
                pass
            time.sleep(0.02)
        reader.join(timeout)
        return subprocess.CompletedProcess(cmd, proc.returncode, result.get("out", ""), result.get("err", ""))

    return run


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs Linux and at least 2 CPUs to tell pinned from unpinned")
def test_latency_child_runs_every_thread_on_one_cpu(tmp_path, monkeypatch):
    """threads=1: once JAX runs in the child (it has several threads), every thread of it may use one CPU only."""
    samples: list[list[set[int]]] = []
    monkeypatch.setattr(nas.cost, "subprocess", types.SimpleNamespace(run=_sampling_run(samples)))
    model = CostModel("classification", 2, 7, batch_size=3, cache_path=tmp_path / "lat.json", repeats=3,
                      min_seconds=1.0, threads=1)
    assert model.cost(TINY).latency_ms > 0
    running = [s for s in samples if len(s) >= 3]  # JAX loaded: XLA's threads are up
    assert len(running) >= 10, f"only {len(running)} samples of the child running JAX"
    mine = os.sched_getaffinity(0)
    for threads in running:
        assert all(len(cpus) == 1 and cpus <= mine for cpus in threads), f"child threads on CPUs {threads}"
    assert len({frozenset(cpus) for threads in running for cpus in threads}) == 1  # all on the same one


def test_child_measurement_failure_names_the_model():
    with pytest.raises(RuntimeError, match=r"latency measurement of .* failed .*longer|latency measurement of .* failed"):
        nas.cost.measure_in_child(TINY, "classification", 2, 17, [1], threads=1)  # longer than max positions


def test_latency_threads_validated():
    with pytest.raises(ValueError, match="threads"):
        CostModel("classification", 2, 7, threads=-1)


def test_quantized_latency_is_its_own_measurement(tmp_path):
    """quantize='int8': the int8 model (distill.export.int8) timed in the pinned child, cached under its own keys."""
    path = tmp_path / "lat.json"
    model = CostModel("classification", 2, 7, batch_size=3, cache_path=path, repeats=3, min_seconds=0.01, threads=1,
                      quantize="int8")
    cost = model.cost(TINY)
    assert 0 < cost.latency_ms <= cost.latency_ms_p95 and cost.batch_latency_ms > 0
    assert cost.params == TINY.num_params("classification", 2)  # the same parameters, stored smaller
    entries = json.loads(path.read_text())["entries"]
    assert sorted(entries) == sorted([model.key(TINY, 1), model.key(TINY, 3)]) and all("|int8|" in k for k in entries)
    plain = CostModel("classification", 2, 7, batch_size=3, cache_path=path, threads=1)
    assert plain.key(TINY, 1) not in entries
    median, _ = measure_latency(TINY, "classification", 2, 7, 1, repeats=2, warmup=1, min_seconds=0.0, quantize="int8")
    assert median > 0
    with pytest.raises(UserError, match="int4"):
        measure_latency(TINY, "classification", 2, 7, 1, quantize="int4")


def test_latency_predictor_recovers_a_linear_cost_and_reports_its_error():
    """On latencies that are exactly linear in the features, the fit is exact (leave-one-out error ~0);
    on noisy ones its leave-one-out error is about the noise."""
    rng = np.random.default_rng(0)
    archs = [BertArch(num_layers=n, hidden_size=h, head_size=12, num_heads=tuple(rng.integers(1, h // 12 + 1, n)),
                      ffn_sizes=tuple(rng.integers(8, 64, n)), vocab_size=101, max_position_embeddings=16)
             for n, h in [(1, 24), (2, 36), (3, 36), (2, 24), (1, 36), (3, 24), (2, 48), (4, 48)]]
    coef = np.array([0.05, 0.02, 0.3, 0.1, 0.2, 0.01])
    exact = [float(latency_features(a, 16) @ coef) for a in archs]
    fitted = LatencyPredictor.fit(archs, exact, 16)
    assert fitted.error < 1e-6 and fitted.measured == 8
    for a, y in zip(archs, exact):
        assert fitted.predict(a) == pytest.approx(y, rel=1e-6)
    noisy = LatencyPredictor.fit(archs, [y * (1 + 0.1 * rng.standard_normal()) for y in exact], 16)
    assert 0.01 < noisy.error < 0.5
    with pytest.raises(ValueError, match=">= 3"):
        LatencyPredictor.fit(archs[:2], exact[:2], 16)


@pytest.fixture
def child_requests(monkeypatch) -> list[dict]:
    """The requests `nas.cost` sends to latency child processes (which still run), in order."""
    calls = []
    real_run = subprocess.run

    def counting_run(cmd, **kw):
        calls.append(json.loads(cmd[-1]))
        return real_run(cmd, **kw)

    monkeypatch.setattr(nas.cost, "subprocess", types.SimpleNamespace(run=counting_run))
    return calls


def test_costs_measure_many_students_in_one_child(tmp_path, child_requests):
    """`CostModel.costs`: the students not cached yet go to one child process (JAX starts once), each gets
    its own entries, a repeat measures nothing, and the figures are what `cost` reads back."""
    calls = child_requests
    model = CostModel("classification", 2, 7, batch_size=3, cache_path=tmp_path / "lat.json", repeats=3,
                      min_seconds=0.01, threads=1)
    small = TINY.replace(num_layers=1, num_heads=(3,), ffn_sizes=(37,))
    wide = TINY.replace(ffn_sizes=(64, 64))
    costs = model.costs([TINY, small, wide, small])
    assert len(calls) == 1 and len(calls[0]["archs"]) == 3 and calls[0]["batches"] == [1, 3]
    assert all(c.latency_ms > 0 and c.batch_latency_ms > 0 for c in costs) and costs[1] == costs[3]
    assert model.costs([small, wide]) == [costs[1], costs[2]] and len(calls) == 1  # cached: no child
    assert model.cost(TINY) == costs[0]
    entries = json.loads((tmp_path / "lat.json").read_text())["entries"]
    assert len(entries) == 6 and all(e["threads"] == 1 for e in entries.values())


def test_costs_beside_measure_the_reference_again_around_the_students(tmp_path, monkeypatch, child_requests):
    """`CostModel.costs_beside`: the reference (the search's teacher) is measured at batch 1 before and after
    the students not cached yet, in their one child process, and never cached; a later call measures it
    again (and only it, the students being cached); without a thread count it is measured in this process."""
    calls = child_requests
    path = tmp_path / "lat.json"
    model = CostModel("classification", 2, 7, batch_size=3, cache_path=path, repeats=3, min_seconds=0.01, threads=1)
    small = TINY.replace(num_layers=1, num_heads=(3,), ffn_sizes=(37,))
    wide = TINY.replace(ffn_sizes=(64, 64))
    costs, again = model.costs_beside([small, wide], TINY)
    assert len(calls) == 1 and calls[0]["archs"] == [a.to_dict() for a in (TINY, small, wide, TINY)]
    assert calls[0]["arch_batches"] == [[1], [1, 3], [1, 3], [1]]
    assert len(again) == 2 and all(ms > 0 for ms in again)
    entries = json.loads(path.read_text())["entries"]
    assert sorted(entries) == sorted(model.key(a, b) for a in (small, wide) for b in (1, 3))  # no teacher
    assert model.costs([small, wide]) == costs and len(calls) == 1
    costs_later, later = model.costs_beside([wide], TINY)
    assert costs_later == costs[1:] and len(later) == 2 and len(calls) == 2
    assert calls[1]["archs"] == [TINY.to_dict()] * 2 and calls[1]["arch_batches"] == [[1], [1]]
    here = CostModel("classification", 2, 7, batch_size=3, cache_path=tmp_path / "here.json", repeats=3,
                     min_seconds=0.01, threads=0)
    order = []
    measure_here = here._measure_here
    monkeypatch.setattr(here, "_measure_here", lambda arch, batch: order.append(arch.name) or measure_here(arch, batch))
    _, measured_here = here.costs_beside([small], TINY)
    assert len(measured_here) == 2 and all(ms > 0 for ms in measured_here) and len(calls) == 2
    assert order == [TINY.name, small.name, small.name, TINY.name]  # the student's two batches between
