"""Choosing and planning the search's final training (`nas.final`), without Ray."""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import pytest

from distill.run import Speed
from nas.config import SearchConfig
from nas.final import choose, plan_steps, steps_per_second


def _row(tid, status="completed", val=0.8, speedup=2.0, **kw):
    return {"trial_id": tid, "status": status, "val_metric": val, "speedup": speedup, **kw}


def test_choose_takes_the_most_accurate_candidate_fast_enough():
    rows = [
        _row("a", val=0.90, speedup=3.0),  # the most accurate, too slow
        _row("b", val=0.85, speedup=5.5),
        _row("c", val=0.86, speedup=5.0, status="stopped"),  # stopped early still counts
        _row("d", val=0.95, speedup=9.0, status="failed"),
        _row("e", val=None, speedup=8.0, status="rejected"),
        _row("f", val=math.nan, speedup=7.0),
    ]
    assert choose(rows, 5.0)["trial_id"] == "c"
    assert choose(rows, 2.0)["trial_id"] == "a"


def test_choose_breaks_ties_by_speed_and_falls_back_to_the_fastest():
    rows = [_row("a", val=0.85, speedup=5.0), _row("b", val=0.85, speedup=6.0)]
    assert choose(rows, 5.0)["trial_id"] == "b"
    rows = [_row("a", val=0.9, speedup=2.0), _row("b", val=0.7, speedup=3.0)]
    assert choose(rows, 5.0)["trial_id"] == "b"  # nothing is 5x faster: the fastest
    assert choose([_row("x", status="failed")], 1.0) is None
    assert choose([], 1.0) is None


def test_steps_fit_the_time_left():
    assert plan_steps(20000, 600.0, 20.0) == 10800  # 600 s at 20 steps/s, 10% margin
    assert plan_steps(5000, 600.0, 20.0) == 5000
    assert plan_steps(5000, -10.0, 20.0) == 0
    assert plan_steps(5000, 600.0, None) == 5000  # speed unknown: as configured


def test_speed_from_the_trial_or_a_lower_bound():
    assert steps_per_second({"steps_per_second": 12.5, "steps": 600, "seconds": 100.0}) == 12.5
    assert steps_per_second({"steps_per_second": None, "steps": 200, "seconds": 50.0}) == pytest.approx(4.0)
    assert steps_per_second({"steps": 0, "seconds": None}) is None


def test_pareto_front_lists_a_candidate_sampled_twice_once():
    from nas.report import pareto_front

    rows = [
        {"trial_id": "a", "status": "stopped", "arch": "3L-128", "val_metric": 0.87, "latency_ms": 0.4},
        {"trial_id": "b", "status": "stopped", "arch": "3L-128", "val_metric": 0.87, "latency_ms": 0.4},
        {"trial_id": "c", "status": "completed", "arch": "2L-384", "val_metric": 0.92, "latency_ms": 0.6},
        {"trial_id": "d", "status": "completed", "arch": "2L-256", "val_metric": 0.86, "latency_ms": 0.5},
        {"trial_id": "final", "status": "final", "arch": "2L-384", "val_metric": 0.95, "latency_ms": 0.6},
    ]
    assert [r["trial_id"] for r in pareto_front(rows)] == ["final", "a"]


def test_quantized_copies_of_the_front_are_measured_rows(tmp_path, monkeypatch):
    """`--quantize int8`: each exported front member gets an int8 copy beside it, scored on the validation
    slice and dev, timed by the cost model (of the quantized model), sized; the front is then taken over all rows."""
    import jax
    import numpy as np
    from helpers import make_tokenizer, write_sst2

    import nas.cost
    from distill.arch import parse_arch_name
    from distill.export.hf import export_model
    from distill.export.int8 import QuantizedBert
    from distill.export.load import load_export
    from distill.model.bert import abstract_params, build_model
    from distill.run.config import DistillConfig
    from distill.run.evaluation import evaluate_dir
    from nas.config import Constraints
    from nas.final import quantized_rows
    from nas.report import leaderboard, pareto_front, write_table
    from nas.space import get_space
    from nas.trial import TrialSetup
    from tasks.features import encode
    from tasks.readers import read_split
    from tasks.registry import get_task

    task, data = get_task("sst2"), write_sst2(tmp_path / "SST-2", n_train=30, n_dev=20)
    tok = make_tokenizer(tmp_path / "vocab")
    arch = parse_arch_name("2L-36-H3-F37").replace(vocab_size=len(tok), max_position_embeddings=32)
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda x: rng.normal(0, 0.1, x.shape).astype(np.float32),
                          abstract_params(build_model(arch, task.kind, task.num_labels)))
    export = tmp_path / "export" / f"01-{arch.name}"
    export_model(export, arch, params, tok, task)
    setup = TrialSetup(
        base=DistillConfig(data_dir=str(data)), space=get_space("tiny"), teacher_arch=arch, head=task.kind,
        num_labels=task.num_labels, seq_len=8, constraints=Constraints(), metric="val_accuracy",
        task_metric="accuracy", cache_root=str(tmp_path), teacher_eval={}, latency_threads=0,
    )
    val_ex = read_split(task, "train", str(data), limit=12)
    timed = []  # the real int8 measurement is tested in tests/nas/test_cost.py
    monkeypatch.setattr(nas.cost, "measure_latency", lambda *a, **kw: timed.append((a, kw)) or (2.0, 2.5))
    row = {"trial_id": "a1", "status": "completed", "arch": arch.name, "params": 1000, "val_metric": 0.5,
           "dev_metric": 0.5, "latency_ms": 5.0, "learning_rate": 2e-4, "steps": 30, "seconds": 9.0,
           "export": str(export), "pareto": True}
    rows = quantized_rows("int8", setup, [row, {**row, "trial_id": "b", "export": None}], 10.0,
                          encode(task, val_ex, tok), val_ex)
    assert len(rows) == 1  # only what was exported
    q = rows[0]
    assert (q["trial_id"], q["status"], q["quantized"], q["from_trial"]) == ("a1-int8", "quantized", "int8", "a1")
    assert Path(q["export"]) == export.with_name(export.name + "-int8")
    model = load_export(q["export"])
    assert isinstance(model, QuantizedBert) and model.arch == arch
    assert q["dev_metric"] == evaluate_dir(q["export"], data_dir=str(data))["accuracy"]
    assert q["dev_drop"] == pytest.approx(0.5 - q["dev_metric"]) and 0 <= q["val_metric"] <= 1
    assert q["latency_ms"] == 2.0 and q["speedup"] == pytest.approx(5.0)
    assert [a[0] for a, kw in timed] == [arch, arch] and all(kw["quantize"] == "int8" for _, kw in timed)
    assert 0 < q["weight_ratio"] < 0.5 and q["learning_rate"] == 2e-4 and "steps" not in q  # not a trial

    fast = {**q, "val_metric": 0.5, "latency_ms": 1.0}  # as accurate and faster: it replaces its float32 row
    assert [r["trial_id"] for r in pareto_front([row, fast])] == ["a1-int8"]
    assert "(int8)" in leaderboard([fast], {"params": 2000, "latency_ms": 10.0, "val_metric": 0.6}, "accuracy")
    write_table(tmp_path, [row, fast], {})
    assert "quantized,weight_ratio" in (tmp_path / "results.csv").read_text().splitlines()[0]


def test_the_final_run_takes_its_candidate_from_the_configs_beside_the_rows(tmp_path, monkeypatch):
    """Rows hold plain values: the chosen trial's sampled config comes from `configs` (by trial id), goes into
    plan.json, and a resumed search trains it from the plan alone. Labelling and training are stubbed."""
    import json

    import nas.final
    from distill.arch import BertArch
    from distill.run.config import DistillConfig
    from nas.config import Constraints
    from nas.final import train_final
    from nas.space import get_space
    from nas.trial import TrialSetup

    teacher = BertArch.uniform(6, 384, 12, 1536)
    setup = TrialSetup(
        base=DistillConfig(), space=get_space("default"), teacher_arch=teacher, head="classification",
        num_labels=2, seq_len=40, constraints=Constraints(), metric="val_accuracy", task_metric="accuracy",
        cache_root=str(tmp_path), teacher_eval={},
    )
    sample = {"layers": 2, "hidden": 256, "heads": [4, 4], "ffn": [512, 512], "learning_rate": 3e-4,
              "temperature": 2.0, "hard_weight": 0.5, "hidden_weight": 0.0, "init_layers": "uniform"}
    rows = [_row("a", val=0.9, speedup=6.0, arch="2L-256", steps_per_second=10.0),
            _row("b", val=0.8, speedup=7.0, arch="1L-128", steps_per_second=10.0)]
    configs = {"a": sample, "b": {**sample, "layers": 1}}
    trained = []
    monkeypatch.setattr(nas.final, "label_copies", lambda dcfg, root: (1.5, 7))
    speeds = []
    monkeypatch.setattr(nas.final, "training_speed", lambda dcfg, root: speeds.append(dcfg) or Speed(2.0, 0.5, 30))
    monkeypatch.setattr(nas.final, "distill", lambda dcfg, run, **kw: trained.append(dcfg) or {
        "best": {"accuracy": 0.91}, "student": "2L-256", "steps": dcfg.loop.max_steps,
        "train_examples_per_second": 100.0, "augmented_examples": 0, "train_features": 30,
    })
    cfg = SearchConfig(final_steps=200)
    final = train_final(cfg, setup, rows, configs, tmp_path, deadline=time.time() + 100, resume=False)
    plan = json.loads((tmp_path / "final" / "plan.json").read_text())
    assert (plan["trial_id"], plan["config"], plan["labelled_features"]) == ("a", sample, 7)
    # 100 s less 30 for the exports and 10 evaluations of 0.5 s, at the measured 2 steps/s (not the trial's
    # 10) with a 0.9 margin: 117 steps
    assert 110 <= plan["steps"] <= 117 and plan["steps_per_second"] == 2.0 and plan["trial_steps_per_second"] == 10.0
    assert speeds[0].augment.copies == 0 and speeds[0].optimizer.learning_rate == 3e-4
    assert (final["from_trial"], final["config"], final["val_metric"]) == ("a", sample, 0.91)
    assert trained[0].optimizer.learning_rate == 3e-4 and trained[0].loop.max_steps == plan["steps"]
    assert json.loads((tmp_path / "final" / "student.json").read_text())["num_layers"] == 2

    again = train_final(cfg, setup, rows, {}, tmp_path, deadline=time.time() + 100, resume=True)  # from the plan
    assert again["config"] == sample and trained[1] == trained[0]
    speeds.clear()  # too little time left even to measure the speed: skipped, nothing run
    assert train_final(cfg, setup, rows, configs, tmp_path / "late", deadline=time.time() + 80, resume=False) is None
    assert not speeds and len(trained) == 2


def test_copies_are_planned_to_the_steps_that_use_them():
    """A final run labels augmented copies only when its steps outrun the originals (SST-2's 67k originals
    and a 600-step final: none); their labelling time comes out of the steps."""
    from nas.final import plan_copies, plan_run

    assert plan_copies(600, 32, 67_000, 4) == 0  # 19,200 examples: less than an epoch of originals
    assert plan_copies(3000, 32, 67_000, 4) == 1  # 96,000: the originals and part of one copy each
    assert plan_copies(40_000, 32, 67_000, 4) == 4  # capped at --final-augment
    assert plan_copies(10, 32, 0, 4) == 0 and plan_copies(10, 32, 100, 0) == 0

    @dataclasses.dataclass
    class Setup:
        train_features: int
        label_rate: float | None

    cfg = SearchConfig(final_steps=100_000, final_augment=4, batch_size=32)
    # 100 s at 10 steps/s: 900 steps want 4 copies of 1,000 originals; labelling them (40 s) leaves 540 steps
    assert plan_run(cfg, Setup(1000, 100.0), 100.0, 10.0) == (540, 4)
    # labelling so slow that any copy would leave too few steps to reach it: none, all the time to steps
    assert plan_run(cfg, Setup(1000, 1.0), 100.0, 10.0) == (900, 0)
    # 10,000 originals: 2 copies (20 s of labelling) leave 720 steps = 23,040 examples, which reach them
    assert plan_run(cfg, Setup(10_000, 1000.0), 100.0, 10.0) == (720, 2)
    assert plan_run(cfg, Setup(1000, 100.0), 100.0, None) == (100_000, 4)  # unknown speed: as configured
