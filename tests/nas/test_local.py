"""The local search around each target (`nas.local`): neighbours one step away in the space, a beam that
only scores unscored neighbours predicted within the target's band, scores equal to a scoring trial's,
and a record a resumed search reuses."""

from __future__ import annotations

import dataclasses
import json

import pytest
from helpers import write_sst2, write_task_teacher

from distill.arch import BertArch, parse_arch_name
from distill.model.store import load_bert
from nas import local, oneshot
from nas.config import Constraints
from nas.cost import LatencyPredictor
from nas.space import PRESETS
from tasks.readers import load_task, read_split

SPACE = PRESETS["tiny"].architecture_only()  # layers 1,2; hidden 24,36; heads 1,2,3 of 12; FFN 16,37
TEACHER = BertArch.uniform(2, 36, 3, 37, vocab_size=64)
PREDICTOR = LatencyPredictor(seq_len=7, coef=(1e-3, 1e-3, 10.0, 10.0, 10.0, 1e-2), error=0.0, measured=0)
TARGET = 2.0


def _moves(a: BertArch, b: BertArch) -> int:
    """How many single mutations (`local.neighbours`) lead from `a` to `b`: 1 where b is one, else 0."""
    return int(b.name in {n.name for n in local.neighbours(SPACE, TEACHER, a)})


def test_neighbours_are_one_step_away_in_the_space():
    a = parse_arch_name("2L-24-H2,1-F37,16", TEACHER)
    names = sorted(n.name for n in local.neighbours(SPACE, TEACHER, a))
    # heads: layer 0 2 -> 1 (3 heads of 12 do not fit 24), layer 1 1 -> 2; FFN: layer 0 37 -> 16, layer 1
    # 16 -> 37; one layer fewer: either; hidden 24 -> 36 (its heads fit)
    expected = ["2L-24-H1-F37,16", "2L-24-H2-F37,16", "2L-24-H2,1-F16", "2L-24-H2,1-F37",
                "1L-24-H1-F16", "1L-24-H2-F37", "2L-36-H2,1-F37,16"]
    assert names == sorted(parse_arch_name(f"{n}-D12", TEACHER).name for n in expected)  # heads of 12
    for n in local.neighbours(SPACE, TEACHER, a):  # each a student of the space, its config round-trips
        assert SPACE.arch(local.config_of(SPACE, n), TEACHER) == n
    wide = parse_arch_name("1L-36-H3-F16", TEACHER)  # down to hidden 24 caps its 3 heads at 2
    assert "1L-24-H2-F16" in {n.name for n in local.neighbours(SPACE, TEACHER, wide)}


def test_neighbours_stay_in_spaces_with_gaps_and_uniform_ones():
    """Layer counts with a gap (4 -> 2: each run of two layers kept, not a 3-layer student the supernet never
    trained) and a uniform space (every layer's heads or FFN at once: its students stay uniform)."""
    teacher = BertArch.uniform(4, 36, 3, 37, vocab_size=64)
    gaps = dataclasses.replace(SPACE, layers=(2, 4))
    a = parse_arch_name("4L-36-H1,2,3,1-F16,37,16,37", teacher)
    moved = local.neighbours(gaps, teacher, a)
    assert {n.num_layers for n in moved} == {2, 4}
    assert sorted((n.num_heads, n.ffn_sizes) for n in moved if n.num_layers == 2) == [
        ((1, 2), (16, 37)), ((2, 3), (37, 16)), ((3, 1), (16, 37))]
    uniform = dataclasses.replace(SPACE, layers=(1, 2), heterogeneous=False)
    b = parse_arch_name("2L-36-H2-F16-D12", TEACHER)
    names = sorted(n.name for n in local.neighbours(uniform, TEACHER, b))
    assert all(n.is_uniform for n in local.neighbours(uniform, TEACHER, b))
    assert names == sorted(parse_arch_name(f"{n}-D12", TEACHER).name
                           for n in ["2L-36-H1-F16", "2L-36-H3-F16", "2L-36-H2-F37", "1L-36-H2-F16", "2L-24-H2-F16"])


def test_a_predictor_of_the_measured_latencies_where_enough_were_measured():
    archs = [parse_arch_name(n, TEACHER) for n in ("1L-24-H1-F16", "1L-24-H2-F37", "1L-36-H3-F37", "2L-24-H1-F16",
                                                   "2L-24-H2-F37", "2L-36-H3-F37", "2L-36-H1-F16", "1L-36-H1-F16")]
    rows = [{"arch": a.name, "kind": "supernet", "latency_source": "measured", "latency_ms": PREDICTOR.predict(a)}
            for a in archs]
    fitted = local.local_predictor(rows, TEACHER, 7, PREDICTOR)
    assert fitted.measured == 8 and fitted.error < 1e-6
    assert local.local_predictor(rows[:7], TEACHER, 7, PREDICTOR) is PREDICTOR
    assert local.local_predictor(rows, TEACHER, 7, PREDICTOR, fallback_error=0.05) is not PREDICTOR
    worse = [dict(r, latency_ms=r["latency_ms"] * (1.5 if i % 2 else 0.7)) for i, r in enumerate(rows)]
    noisy = local.local_predictor(worse, TEACHER, 7, PREDICTOR)  # fitted, but worse than the design set's
    assert local.local_predictor(worse, TEACHER, 7, PREDICTOR, fallback_error=noisy.error / 2) is PREDICTOR
    predicted = [dict(r, latency_source="predicted") for r in rows]
    assert local.local_predictor(predicted, TEACHER, 7, PREDICTOR) is PREDICTOR


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("local")
    teacher, data = write_task_teacher(tmp / "teacher", "sst2"), write_sst2(tmp / "data", n_train=40, n_dev=24)
    task, _ = load_task("sst2", str(data))
    arch = load_bert(teacher).arch  # a teacher is its own untrained supernet
    latency = PREDICTOR.predict(arch)
    return oneshot.ScoreSetup(
        space=SPACE, choices=SPACE.subnet_choices(arch), teacher_arch=arch, supernet_dir=str(teacher), task="sst2",
        val_examples=tuple(read_split(task, "dev", str(data))), constraints=Constraints(), metric="val_accuracy",
        task_metric="accuracy", predictor=PREDICTOR, teacher_latency_ms=latency, head="classification",
        num_labels=2, seq_len=7, eval_batch_size=16, cache_root=str(tmp / "cache"))


def _seed(setup, name: str, val: float) -> dict:
    a = parse_arch_name(name, setup.teacher_arch)
    return {"trial_id": name, "arch": a.name, "status": "scored", "kind": "supernet", "latency_source": "measured",
            "val_metric": val, "speedup": setup.teacher_latency_ms / PREDICTOR.predict(a)}


SEEDS = (("2L-36-H3-F16", 0.6), ("2L-24-H2-F37", 0.55), ("1L-36-H3-F37", 0.5), ("1L-24-H1-F16", 0.9))


def test_the_beam_scores_unscored_neighbours_within_the_targets_band(setup, tmp_path):
    rows = [_seed(setup, n, v) for n, v in SEEDS]
    near = [r for r in rows if TARGET / local.BAND <= r["speedup"] <= local.BAND * TARGET]
    assert 2 <= len(near) < len(rows)  # the 1-layer, 24-wide seed is too fast to be near 2x
    found, configs, summary = local.search_around_targets(rows, setup, (TARGET,), rounds=3, seconds=600,
                                                          out=tmp_path, resume=False)
    assert found and summary["scored"] == len(found) == len({r["arch"] for r in found})
    assert not {r["arch"] for r in found} & {r["arch"] for r in rows}  # nothing scored twice
    reached = {r["arch"] for r in near}
    for r in found:  # each a neighbour of a seed near the target or of a candidate found before it
        a = parse_arch_name(r["arch"], setup.teacher_arch)
        assert any(_moves(parse_arch_name(n, setup.teacher_arch), a) for n in reached)
        reached.add(r["arch"])
        assert TARGET <= r["speedup"] <= local.BAND * TARGET + 1e-9 and r["latency_source"] == "predicted"
        assert r["trial_id"] == local.trial_id(a) and setup.space.arch(configs[r["trial_id"]], setup.teacher_arch) == a
    for r in found[:3]:  # the score a scoring trial gives the same candidate
        report = oneshot.score_candidate(configs[r["trial_id"]], setup)
        assert r["val_metric"] == report["val_accuracy"] and r["status"] == "scored"
    best = max(found + [r for r in near if r["speedup"] >= TARGET], key=lambda r: (r["val_metric"], r["arch"]))
    assert summary["targets"]["2"]["best_val"] == best["val_metric"]
    assert summary["targets"]["2"]["seeds"] == [r["arch"] for r in sorted(near, key=lambda r: -r["val_metric"])]
    saved = json.loads((tmp_path / local.LOCAL_SEARCH).read_text())
    assert saved["rows"] == found and saved["configs"] == configs


def test_a_resumed_search_reuses_its_local_search(setup, tmp_path, monkeypatch, caplog):
    rows = [_seed(setup, n, v) for n, v in SEEDS]
    first = local.search_around_targets(rows, setup, (TARGET,), rounds=1, seconds=600, out=tmp_path, resume=False)
    scored = []
    monkeypatch.setattr(local, "score_candidate", lambda c, s: scored.append(c) or oneshot.score_candidate(c, s))
    assert local.search_around_targets(rows, setup, (TARGET,), rounds=1, seconds=600, out=tmp_path,
                                       resume=True) == first and not scored
    (tmp_path / local.LOCAL_SEARCH).write_text('{"rows": [{"trial_id": "local-1"}], "configs": {}, "summary"')
    with caplog.at_level("WARNING", logger="nas.local"):  # damaged: warned, run again, the same candidates
        again = local.search_around_targets(rows, setup, (TARGET,), rounds=1, seconds=600, out=tmp_path, resume=True)
    same = lambda found: [(r["arch"], r["val_metric"]) for r in found]  # noqa: E731 (not its scoring seconds)
    assert "damaged local search record" in caplog.text and same(again[0]) == same(first[0]) and scored
    (tmp_path / local.LOCAL_SEARCH).unlink()
    (tmp_path / "final" / "1a2b3c4d").mkdir(parents=True)
    (tmp_path / "final" / "1a2b3c4d" / "plan.json").write_text("{}")  # a search from before the stage
    assert local.search_around_targets(rows, setup, (TARGET,), rounds=1, seconds=600, out=tmp_path,
                                       resume=True)[0] == []
    assert local.search_around_targets(rows, setup, (TARGET,), rounds=0, seconds=600, out=tmp_path / "new",
                                       resume=False)[0] == []
    (tmp_path / "spent").mkdir()
    budget = local.search_around_targets(rows, setup, (TARGET,), rounds=3, seconds=0, out=tmp_path / "spent",
                                         resume=False)
    assert budget[0] == [] and budget[2]["scored"] == 0


def test_a_rejected_neighbour_is_a_row_with_its_reason(setup, tmp_path):
    rows = [_seed(setup, n, v) for n, v in SEEDS]
    strict = dataclasses.replace(setup, constraints=Constraints(max_params=1))
    found, _, summary = local.search_around_targets(rows, strict, (TARGET,), rounds=2, seconds=600, out=tmp_path,
                                                    resume=False)
    assert found and all(r["status"] == "rejected" and r["val_metric"] is None and "param" in r["error"]
                         for r in found)
    above = [r for r in rows if TARGET <= r["speedup"] <= local.BAND * TARGET]  # seeds: the only candidates
    assert summary["scored"] == 0 and summary["targets"]["2"]["best"] == max(
        above, key=lambda r: r["val_metric"], default={"arch": None})["arch"]


def test_targets_share_the_time_and_never_score_one_candidate_twice(setup, tmp_path):
    rows = [_seed(setup, n, v) for n, v in SEEDS]
    found, _, summary = local.search_around_targets(rows, setup, (1.6, TARGET), rounds=3, seconds=600,
                                                    out=tmp_path, resume=False)
    assert len({r["arch"] for r in found}) == len(found) and set(summary["targets"]) == {"1.6", "2"}
    assert sum(t["scored"] for t in summary["targets"].values()) == summary["scored"] == len(found)


def test_a_candidate_whose_scoring_fails_costs_only_itself(setup, tmp_path, monkeypatch, caplog):
    rows = [_seed(setup, n, v) for n, v in SEEDS]
    calls = []

    def flaky(config, s):
        calls.append(config)
        if len(calls) == 1:
            raise RuntimeError("RESOURCE_EXHAUSTED: out of memory while compiling")
        return oneshot.score_candidate(config, s)

    monkeypatch.setattr(local, "score_candidate", flaky)
    with caplog.at_level("WARNING", logger="nas.local"):
        found, _, summary = local.search_around_targets(rows, setup, (TARGET,), rounds=1, seconds=600,
                                                        out=tmp_path, resume=False)
    assert found[0]["status"] == "failed" and "RESOURCE_EXHAUSTED" in found[0]["error"]
    assert found[0]["val_metric"] is None and "scoring" in caplog.text and len(found) == len(calls) > 1
    assert summary["targets"]["2"]["failed"] == 1 and summary["scored"] == len(found) - 1
