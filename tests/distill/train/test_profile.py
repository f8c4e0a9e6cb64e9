"""`distill.train.profile`: a JAX profiler trace summed per XLA op and per kind."""

import time
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import pytest

from distill.train.profile import op_kind, own_times, summarize


def _trace(tmp_path, calls: int, f=None, args=None):
    """(trace directory, wall-clock ms) of `calls` calls of the jitted `f` on `args`, compiled before the
    trace; by default a function of odd tiny shapes: a matmul, then elementwise work."""
    if f is None:
        f = jax.jit(lambda a, b: jnp.tanh(a @ b) * 3.0 + jnp.exp(a @ b))
        args = (jax.random.normal(jax.random.key(0), (35, 36)), jax.random.normal(jax.random.key(1), (36, 7)))
    jax.block_until_ready(f(*args))
    with jax.profiler.trace(str(tmp_path / "trace")):
        t0 = time.perf_counter()
        for _ in range(calls):
            jax.block_until_ready(f(*args))
        wall_ms = 1e3 * (time.perf_counter() - t0)
    return tmp_path / "trace", wall_ms


def test_the_summary_adds_up_to_the_traced_ops(tmp_path):
    summary = summarize(_trace(tmp_path, 3)[0], steps=3, top=1000)
    assert summary["source"] and summary["steps"] == 3 and summary["busy_ms_per_step"] > 0
    ops = summary["ops"]
    assert ops and all(op["calls_per_step"] >= 1.0 for op in ops)  # every op ran in each of the 3 calls
    # the ops and the kinds each account for all of the busy time, biggest first
    assert sum(op["ms_per_step"] for op in ops) == pytest.approx(summary["busy_ms_per_step"], rel=1e-9)
    assert sum(k["share"] for k in summary["kinds"]) == pytest.approx(1.0)
    assert [op["ms_per_step"] for op in ops] == sorted((op["ms_per_step"] for op in ops), reverse=True)
    assert {op["kind"] for op in ops} == {k["kind"] for k in summary["kinds"]}
    assert all(op["module"] for op in ops)  # each op named within its program (XLA:CPU records it)
    # per step: the same trace divided by more steps gives proportionally less
    half = summarize(tmp_path / "trace", steps=6, top=1000)
    assert half["busy_ms_per_step"] == pytest.approx(summary["busy_ms_per_step"] / 2)


def test_top_keeps_the_biggest_ops_and_all_kinds(tmp_path):
    trace, _ = _trace(tmp_path, 2)
    full, one = summarize(trace, 2, top=1000), summarize(trace, 2, top=1)
    assert one["ops"] == full["ops"][:1] and one["kinds"] == full["kinds"]


def test_no_trace_is_an_answer_not_an_error(tmp_path):
    summary = summarize(tmp_path, steps=3)
    assert summary["source"] is None and "no *.xplane.pb" in summary["error"]


def test_op_kind_drops_the_number_only():
    assert op_kind("ynn_fusion.465") == "ynn_fusion"
    assert op_kind("select_select_fusion") == "select_select_fusion"
    assert op_kind("dynamic-update-slice_convert_fusion.2") == "dynamic-update-slice_convert_fusion"


def _event(name, start, end, module="jit_step"):
    return SimpleNamespace(name=name, start_ns=start, duration_ns=end - start,
                           stats=[("hlo_op", name), ("hlo_module", module)])


def test_an_op_counts_its_own_time_without_the_ops_inside_it():
    """A `while` loop traced from its start to its end with its body's ops inside it on the same thread:
    the loop keeps only its own time, the body's ops theirs, and the total is the timeline's busy time."""
    events = [
        _event("while.1", 0, 100),
        _event("fusion.2", 10, 40),  # the body, twice
        _event("fusion.2", 50, 80),
        _event("dot.3", 100, 130),  # after the loop, not inside it
        _event("fusion.2", 130, 140, module="jit_eval"),  # another program's op of the same name
        SimpleNamespace(name="end: dot.3", start_ns=130, duration_ns=0, stats=[]),
    ]
    times, calls, details = own_times(events, ops_only=True)
    assert times == {("jit_step", "while.1"): 40, ("jit_step", "fusion.2"): 60, ("jit_step", "dot.3"): 30,
                     ("jit_eval", "fusion.2"): 10}
    assert sum(times.values()) == 140 and calls[("jit_step", "fusion.2")] == 2
    assert details[("jit_step", "dot.3")] == {"hlo_op": "dot.3"}


def test_a_real_loop_is_not_counted_twice(tmp_path):
    """A jitted `fori_loop` of matmuls: whatever XLA:CPU records for the loop and its body, their own times
    add up to no more than the traced calls took, times the threads XLA ran them on."""
    f = jax.jit(lambda a: jax.lax.fori_loop(0, 9, lambda i, x: jnp.tanh(x @ a), a))
    trace, wall_ms = _trace(tmp_path, 3, f, (jax.random.normal(jax.random.key(0), (35, 35)),))
    summary = summarize(trace, steps=3, top=1000)
    assert 0 < summary["busy_ms_per_step"] * 3 <= wall_ms * summary["threads"]
    assert all(op["ms_per_step"] >= 0 for op in summary["ops"])
