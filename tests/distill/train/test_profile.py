"""`distill.train.profile`: a JAX profiler trace summed per XLA op and per kind."""

import jax
import jax.numpy as jnp
import pytest

from distill.train.profile import op_kind, summarize


def _trace(tmp_path, calls: int):
    """A trace of `calls` calls of a jitted function of odd tiny shapes: a matmul, then elementwise work."""
    f = jax.jit(lambda a, b: jnp.tanh(a @ b) * 3.0 + jnp.exp(a @ b))
    a = jax.random.normal(jax.random.key(0), (35, 36))
    b = jax.random.normal(jax.random.key(1), (36, 7))
    jax.block_until_ready(f(a, b))  # compiled before the trace
    with jax.profiler.trace(str(tmp_path / "trace")):
        for _ in range(calls):
            jax.block_until_ready(f(a, b))
    return tmp_path / "trace"


def test_the_summary_adds_up_to_the_traced_ops(tmp_path):
    summary = summarize(_trace(tmp_path, 3), steps=3, top=1000)
    assert summary["source"] and summary["steps"] == 3 and summary["busy_ms_per_step"] > 0
    ops = summary["ops"]
    assert ops and all(op["calls_per_step"] >= 1.0 for op in ops)  # every op ran in each of the 3 calls
    # the ops and the kinds each account for all of the busy time, biggest first
    assert sum(op["ms_per_step"] for op in ops) == pytest.approx(summary["busy_ms_per_step"], rel=1e-9)
    assert sum(k["share"] for k in summary["kinds"]) == pytest.approx(1.0)
    assert [op["ms_per_step"] for op in ops] == sorted((op["ms_per_step"] for op in ops), reverse=True)
    assert {op["kind"] for op in ops} == {k["kind"] for k in summary["kinds"]}
    # per step: the same trace divided by more steps gives proportionally less
    half = summarize(tmp_path / "trace", steps=6, top=1000)
    assert half["busy_ms_per_step"] == pytest.approx(summary["busy_ms_per_step"] / 2)


def test_top_keeps_the_biggest_ops_and_all_kinds(tmp_path):
    trace = _trace(tmp_path, 2)
    full, one = summarize(trace, 2, top=1000), summarize(trace, 2, top=1)
    assert one["ops"] == full["ops"][:1] and one["kinds"] == full["kinds"]


def test_no_trace_is_an_answer_not_an_error(tmp_path):
    summary = summarize(tmp_path, steps=3)
    assert summary["source"] is None and "no *.xplane.pb" in summary["error"]


def test_op_kind_drops_the_number_only():
    assert op_kind("ynn_fusion.465") == "ynn_fusion"
    assert op_kind("select_select_fusion") == "select_select_fusion"
    assert op_kind("dynamic-update-slice_convert_fusion.2") == "dynamic-update-slice_convert_fusion"
