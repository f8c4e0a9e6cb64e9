"""The supernet strategy's budget plan (`nas.oneshot.plan_supernet`, `supernet_plan`,
`teacher_step_seconds`), without training anything."""

from __future__ import annotations

import json

import numpy as np
import pytest

from distill.arch import BertArch
from distill.run import SubnetChoices
from nas import oneshot
from nas.config import SearchConfig
from nas.cost import Cost

TEACHER = BertArch.uniform(6, 384, 12, 1536)
CHOICES = SubnetChoices(layers=(1, 2, 3, 4), hidden=(128, 256, 384), heads=(2, 4, 6, 8, 12), ffn=(256, 768, 1536))
SEQ = 40


def _cost(batch_latency_ms: float = 100.0) -> Cost:
    return Cost("6L-384", 22_700_000, 1, SEQ, latency_ms=4.0, latency_ms_p95=4.0, batch_latency_ms=batch_latency_ms,
                throughput=320.0, speedup=1.0)


def _step_seconds(teacher_step: float) -> float:
    """What the plan charges a sandwich step: its sub-networks' padded FLOPs at the teacher's speed."""
    subs = [CHOICES.sandwich(TEACHER, i, 0, oneshot.NUM_SAMPLED) for i in range(16)]
    flops = np.mean([sum(oneshot._padded_flops(s, TEACHER, SEQ) for s in sandwich) for sandwich in subs])
    return teacher_step * oneshot.SANDWICH_OVERHEAD * flops / TEACHER.flops(SEQ)


def test_steps_fill_the_time_after_the_compilations():
    cfg = SearchConfig()
    plan = oneshot.plan_supernet(cfg, CHOICES, TEACHER, SEQ, 900.0, teacher_step_seconds=0.25)
    compilations = 4 * 3 * oneshot.LENGTH_BUCKETS  # layer counts x hidden sizes x length buckets
    assert plan["compilations"] == compilations
    assert plan["step_seconds"] == pytest.approx(_step_seconds(0.25))
    exact = int((900.0 - compilations * oneshot.COMPILE_SECONDS) / plan["step_seconds"])
    assert plan["steps"] == oneshot._two_digits(exact) and plan["steps"] <= exact < plan["steps"] * 1.1
    # a slower teacher (larger sub-network steps) plans fewer steps; the cap bounds them
    assert oneshot.plan_supernet(cfg, CHOICES, TEACHER, SEQ, 900.0, 0.5)["steps"] < plan["steps"]
    capped = SearchConfig(supernet_steps=100)
    assert oneshot.plan_supernet(capped, CHOICES, TEACHER, SEQ, 1e6, 0.25)["steps"] == 100


def test_two_significant_digits_and_the_floors():
    assert [oneshot._two_digits(n) for n in (0, 7, 42, 599, 1234, 98765)] == [0, 7, 42, 590, 1200, 98000]
    cfg = SearchConfig()
    # no time left after the teacher: a warning and a short supernet, never a negative time bound
    spent = oneshot.plan_supernet(cfg, CHOICES, TEACHER, SEQ, -300.0, 0.25)
    assert spent["seconds"] == oneshot.MIN_SECONDS and spent["steps"] == 50
    assert oneshot.plan_supernet(SearchConfig(supernet_steps=12), CHOICES, TEACHER, SEQ, 5.0, 0.25)["steps"] == 12


def test_teacher_speed_comes_from_its_fine_tuning_else_from_its_latency(tmp_path):
    assert oneshot.teacher_step_seconds(tmp_path, _cost(100.0), 32) == pytest.approx(0.3)  # three forwards
    (tmp_path / "teacher_finetune").mkdir()
    (tmp_path / "teacher_finetune" / "results.json").write_text(json.dumps({"train_examples_per_second": 128.0}))
    assert oneshot.teacher_step_seconds(tmp_path, _cost(100.0), 32) == pytest.approx(0.25)


def test_a_resumed_search_keeps_its_plan(tmp_path):
    cfg = SearchConfig()
    first = oneshot.supernet_plan(cfg, CHOICES, TEACHER, SEQ, _cost(), tmp_path, seconds=900.0, resume=False)
    assert json.loads((tmp_path / oneshot.SUPERNET_PLAN).read_text()) == first
    again = oneshot.supernet_plan(cfg, CHOICES, TEACHER, SEQ, _cost(), tmp_path, seconds=30.0, resume=True)
    assert again == first  # not planned again from the (shorter) time left
    # a search from before plans existed resumes its supernet as it was started: all its steps, no bound
    old = tmp_path / "old"
    (old / oneshot.SUPERNET).mkdir(parents=True)
    legacy = oneshot.supernet_plan(SearchConfig(supernet_steps=2000), CHOICES, TEACHER, SEQ, _cost(), old,
                                   seconds=30.0, resume=True)
    assert (legacy["steps"], legacy["seconds"]) == (2000, 0.0)
    config = oneshot.supernet_config(cfg, _base(), CHOICES, legacy)
    assert config.loop.max_steps == 2000 and config.loop.max_seconds == 0.0


def _base():
    from distill.run import DistillConfig

    return DistillConfig()


def test_targets_pick_the_same_candidate_whatever_the_row_order():
    """TPE samples some architectures twice: two rows with the same score and speedup. A resumed search
    rebuilds its rows in another order and must pick the candidate whose final it planned before."""
    rows = [{"trial_id": tid, "status": "scored", "latency_source": "measured", "val_metric": val, "speedup": sp}
            for tid, val, sp in [("aa", 0.91, 5.1), ("bb", 0.91, 5.1), ("cc", 0.93, 3.2), ("dd", 0.80, 11.0)]]
    first = oneshot.pick_targets(rows, (3.0, 5.0, 10.0))
    assert first == {"cc": [3.0], "bb": [5.0], "dd": [10.0]}
    assert oneshot.pick_targets(rows[::-1], (3.0, 5.0, 10.0)) == first
    assert oneshot.pick_targets(rows, (20.0,)) == {}  # no measured candidate that fast: skipped


def test_finals_share_time_by_their_distance_from_the_teacher():
    """Session 17's SST-2 picks: the 10x candidate, furthest below the teacher, gets the largest share; a
    candidate at or above the teacher still gets half the mean; no teacher score: equal shares."""
    rows = [{"trial_id": tid, "val_metric": val} for tid, val in [("x3", 0.92), ("x5", 0.896), ("x10", 0.844)]]
    picks = {"x3": [3.0], "x5": [5.0], "x10": [10.0]}
    weights = oneshot.final_weights(rows, picks, 0.9755)
    shares = np.asarray(weights) / sum(weights)
    np.testing.assert_allclose(shares, [0.0555 / 0.2665, 0.0795 / 0.2665, 0.1315 / 0.2665], rtol=1e-6)
    rows[0]["val_metric"] = 0.99  # above the teacher
    weights = oneshot.final_weights(rows, picks, 0.9755)
    assert weights[0] == pytest.approx(0.5 * (0.0795 + 0.1315) / 3) and weights[1:] == pytest.approx([0.0795, 0.1315])
    assert oneshot.final_weights(rows, picks, None) == [1.0, 1.0, 1.0]
    assert oneshot.final_weights(rows, {}, 0.9755) == []


def test_teacher_latencies_a_resumed_search_starts_from(tmp_path):
    """A new search measures the teacher again; a resumed one reuses the latencies it recorded on this device
    and measures nothing; one from before the record that planned finals keeps the one latency it divided
    by; a record from another device is ignored."""
    from nas.cost import device_name

    out = tmp_path / "search"
    out.mkdir()
    assert oneshot.teacher_samples(out, 11.0, resume=False) == ([11.0], True)
    assert oneshot.teacher_samples(out, 11.0, resume=True) == ([11.0], True)  # killed before the record
    latency = oneshot.record_teacher_latency(out, [11.0, 9.5, 10.25])
    assert latency == {"latency_ms": 10.25, "samples_ms": [11.0, 9.5, 10.25]}
    assert json.loads((out / oneshot.TEACHER_LATENCY).read_text())["device"] == device_name()
    assert oneshot.teacher_samples(out, 12.0, resume=True) == ([11.0, 9.5, 10.25], False)
    assert oneshot.teacher_samples(out, 12.0, resume=False) == ([12.0], True)
    record = json.loads((out / oneshot.TEACHER_LATENCY).read_text())
    (out / oneshot.TEACHER_LATENCY).write_text(json.dumps({**record, "device": "another-machine"}))
    assert oneshot.teacher_samples(out, 12.0, resume=True) == ([12.0], True)
    # a search from before the record that scored candidates: its scored rows' speedups divide by its latency
    assert oneshot.teacher_samples(out, 12.0, resume=True, scored=True) == ([12.0], False)
    (out / "final" / "1a2b3c4d").mkdir(parents=True)
    (out / "final" / "1a2b3c4d" / "plan.json").write_text("{}")  # ... or planned finals (another device's too)
    assert oneshot.teacher_samples(out, 12.0, resume=True) == ([12.0], False)
    (out / oneshot.TEACHER_LATENCY).unlink()
    assert oneshot.teacher_samples(out, 12.0, resume=True) == ([12.0], False)
    (out / "final" / "1a2b3c4d" / "plan.json").unlink()
    (out / "final" / "plan.json").write_text("{}")  # the trials strategy's one final
    assert oneshot.teacher_samples(out, 12.0, resume=True) == ([12.0], False)


@pytest.mark.parametrize("text", [
    b"\xff\xfe garbage", "{\"latency_ms\": 10.2, \"samples_ms\": [11.0, 9.", "[11.0, 9.5]", "{}",
    "{\"samples_ms\": []}", "{\"samples_ms\": [11.0, NaN]}", "{\"samples_ms\": [11.0, -1]}",
    "{\"samples_ms\": \"11\"}", "{\"samples_ms\": [true]}",
])
def test_a_damaged_teacher_latency_record_counts_as_missing(tmp_path, caplog, text):
    """A resumed search whose teacher latency record cannot be read (hand-edited, truncated) warns, naming
    the file, and goes on as without one: measured again where nothing was divided by it yet, else the one
    latency its speedups used; a new record then replaces the damaged one."""
    out = tmp_path / "search"
    out.mkdir()
    path = out / oneshot.TEACHER_LATENCY
    path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text)
    with caplog.at_level("WARNING", logger="nas.oneshot"):
        assert oneshot.teacher_samples(out, 12.0, resume=True) == ([12.0], True)
        assert oneshot.teacher_samples(out, 12.0, resume=True, scored=True) == ([12.0], False)
    assert f"{path}: damaged teacher latency record" in caplog.text
    oneshot.record_teacher_latency(out, [12.0, 11.0, 10.0])
    assert oneshot.teacher_samples(out, 13.0, resume=True) == ([12.0, 11.0, 10.0], False)
