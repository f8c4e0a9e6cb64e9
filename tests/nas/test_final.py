"""Choosing and planning the search's final training (`nas.final`), without Ray."""

from __future__ import annotations

import math

import pytest

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
