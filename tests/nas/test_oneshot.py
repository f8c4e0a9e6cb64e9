"""The supernet strategy end to end on a tiny teacher: a supernet trained once, every candidate scored with
its weights through Ray Tune, the front measured, the best candidate at each target trained further from
its supernet weights, estimates and finals told apart in the results."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from helpers import sst2_training_left, write_sst2, write_tiny_teacher

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    import ray

    from nas.config import SearchConfig
    from nas.tune import search

    root = tmp_path_factory.mktemp("oneshot")
    data = write_sst2(root / "data", n_train=300, n_dev=40)
    teacher = write_tiny_teacher(root / "teacher")
    cfg = SearchConfig(
        task="sst2", teacher=str(teacher), data_dir=str(data), space="tiny", strategy="supernet", num_samples=16,
        supernet_steps=12, latency_design=4, targets=(1.2, 1.5), validation=40, teacher_epochs=1,
        algorithm="random", seed=0, final_steps=16, final_augment=1,
    )
    try:
        with pytest.MonkeyPatch.context() as mp:  # its own cache (ROOT/cache), which a resume test reuses
            mp.setenv("BERTNAS_CACHE", str(root / "cache"))
            summary = search(cfg, root / "out")
    finally:
        ray.shutdown()
    return root / "out", summary, data


def test_every_candidate_is_scored_with_the_supernet(searched):
    out, summary, _ = searched
    near = summary["local_search"]["scored"]  # the local search's around the targets (`nas.local`)
    assert summary["strategy"] == "supernet" and summary["counts"]["scored"] == 16 + near
    with open(out / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    estimates = [r for r in rows if r["kind"] == "supernet"]
    assert len(estimates) == 16 + near and all(r["status"] == "scored" and r["steps"] == "0" for r in estimates)
    assert sum(r["trial_id"].startswith("local-") for r in estimates) == near
    assert len({r["arch"] for r in estimates}) == 16 + near == summary["distinct_candidates"]  # none scored twice
    # architectures only: the tiny space's temperatures (1, 2) are not sampled, every row has the first
    assert {(float(r["temperature"]), float(r["learning_rate"])) for r in estimates} == {(1.0, 0.001)}
    assert {float(r["learning_rate"]) for r in rows if r["kind"] == "final"} == {5e-5}  # `final_lr`
    sn = summary["supernet"]
    assert sn["steps"] == 12 and Path(sn["supernet_dir"]) == out / "supernet" / "supernet"
    predictor = summary["latency_predictor"]
    assert predictor["design"] == 4 and np.isfinite(predictor["loo_error"]) and predictor["front_measured"] >= 1


def test_the_front_is_measured_and_exported(searched):
    from distill.export.load import load_export
    from distill.model.store import load_bert

    out, summary, _ = searched
    trials = json.loads((out / "results.json").read_text())["trials"]
    front = [t for t in trials if t["pareto"]]
    assert [t["trial_id"] for t in front] == summary["pareto"]
    assert all(Path(t["export"]).is_dir() for t in trials if t["status"] == "final")  # every target's student
    assert summary["exported"][:len(front)] == summary["pareto"]
    for t in front:
        assert t["latency_source"] == "measured" and Path(t["export"]).is_dir()
        assert load_export(t["export"]).arch.name == t["arch"]
        assert t["dev_metric"] is not None
    supernet = load_bert(summary["supernet"]["supernet_dir"])
    for t in front:
        if t["kind"] == "supernet":  # an estimate's export holds its supernet weights, sliced
            exported = load_export(t["export"])
            words = np.asarray(supernet.params["embeddings"]["word_embeddings"]["embedding"])
            np.testing.assert_array_equal(exported.params["embeddings"]["word_embeddings"]["embedding"],
                                          words[:, :exported.arch.hidden_size])


def test_targets_are_trained_further_from_the_supernet(searched):
    out, summary, data = searched
    trials = json.loads((out / "results.json").read_text())["trials"]
    finals = summary["finals"]
    assert finals, "a measured candidate at 1.2x or faster is trained further"
    measured = [t for t in trials if t["kind"] == "supernet" and t["latency_source"] == "measured"
                and t["status"] == "scored"]
    for f in finals:
        source = next(t for t in trials if t["trial_id"] == f["from_trial"])
        target = min(f["targets"])
        best = max((t for t in measured if t["speedup"] >= target), key=lambda t: (t["val_metric"], t["speedup"]))
        assert source["trial_id"] == best["trial_id"] and f["arch"] == source["arch"]
        assert f["kind"] == "final" and f["steps"] == 16 and f["latency_ms"] == source["latency_ms"]
        run = out / "final" / source["trial_id"] / "run"
        config = json.loads((run / "config.json").read_text())
        assert config["distill"]["init"]["source"] == summary["supernet"]["supernet_dir"]
        assert config["distill"]["optimizer"]["learning_rate"] == 5e-5 == f["learning_rate"]  # `final_lr`
        assert json.loads((run / "results.json").read_text())["augmented_examples"] == sst2_training_left(data, 30)
        plan = json.loads((run.parent / "plan.json").read_text())  # its steps planned from its measured speed
        assert plan["steps_per_second"] > 0 and plan["eval_seconds"] > 0 and plan["estimated_steps_per_second"] > 0
        assert sorted(p.name for p in run.parent.iterdir()) == ["plan.json", "run", "student.json"]


def test_speedups_divide_by_the_median_of_the_teachers_measurements(searched):
    """The teacher is measured again before and after the latency design set, in its child process: every
    speedup (scored, measured, finals), the teacher's row and `teacher_latency.json` use the median of its
    latencies."""
    from nas.cost import device_name

    out, summary, _ = searched
    latency = summary["teacher_latency"]
    assert len(latency["samples_ms"]) >= 3 and latency["latency_ms"] == float(np.median(latency["samples_ms"]))
    assert json.loads((out / "teacher_latency.json").read_text()) == {**latency, "device": device_name()}
    results = json.loads((out / "results.json").read_text())
    assert results["teacher"]["latency_ms"] == latency["latency_ms"]
    assert results["teacher"]["latency_samples_ms"] == latency["samples_ms"]
    rows = [t for t in results["trials"] if t.get("latency_ms")]
    assert rows and all(t["speedup"] == pytest.approx(latency["latency_ms"] / t["latency_ms"]) for t in rows)


def test_a_space_the_supernet_cannot_hold_is_refused_before_any_training(tmp_path):
    import subprocess
    import sys

    teacher = write_tiny_teacher(tmp_path / "teacher")
    data = write_sst2(tmp_path / "data", n_train=20, n_dev=8)
    space = tmp_path / "space.json"
    space.write_text(json.dumps({"layers": [1, 2], "hidden": [36], "heads": [3], "ffn": [37], "share": [1, 2]}))
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, str(root / "scripts" / "search.py"), "--task", "sst2", "--teacher", str(teacher),
         "--data-dir", str(data), "--space", str(space), "--strategy", "supernet", "--output", str(tmp_path / "o")],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "share: the supernet strategy cannot share layers" in done.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "o").exists()


def test_an_estimates_export_loads_and_is_no_supernet(searched, tmp_path):
    """A supernet estimate exported as an ordinary student: it loads, scores like its slice, and is not
    mistaken for a supernet (`--init-from` refuses it)."""
    import dataclasses

    from distill.export.load import load_export
    from distill.model.store import load_bert, read_config
    from distill.run import DistillConfig, InitConfig
    from distill.run.distillation import check_supernet_init
    from nas import oneshot
    from nas.space import get_space
    from tasks.errors import UserError
    from tasks.registry import get_task

    out, summary, _ = searched
    supernet_dir = summary["supernet"]["supernet_dir"]
    supernet = load_bert(supernet_dir)
    space = get_space("tiny")
    choices = space.subnet_choices(supernet.arch)
    arch = choices.smallest(supernet.arch).arch(supernet.arch)
    dest = tmp_path / "estimate"
    oneshot.export_candidate(supernet_dir, choices, arch, get_task("sst2"), dest)
    loaded = load_export(dest)
    assert loaded.arch.name == arch.name
    meta = read_config(dest)["bertnas"]
    assert meta["kind"] == "supernet_estimate" and meta["from_supernet"] == supernet_dir and "supernet" not in meta
    cfg = dataclasses.replace(DistillConfig(), init=InitConfig(source=str(dest)))
    with pytest.raises(UserError, match="not a supernet"):
        check_supernet_init(cfg, get_task("sst2"), supernet.arch, arch)


def test_a_front_member_whose_export_fails_costs_only_itself(searched, tmp_path):
    """One member's export raising (the cold search's failure mode before estimates' exports were fixed):
    the others are exported and scored, the failed row keeps its error, nothing partial is left."""
    from distill.run import DistillConfig
    from nas.tune import TrialHandle, _export_front
    from tasks.registry import get_task

    out, summary, data = searched
    final = next(t for t in json.loads((out / "results.json").read_text())["trials"] if t.get("kind") == "final")

    def broken(dest):
        (dest / "half").mkdir(parents=True)
        raise ValueError("damaged")

    front = [{"trial_id": "x", "arch": "1L-36"}, {"trial_id": final["trial_id"], "arch": final["arch"],
                                                  "export_dir": final["export_dir"], "speedup": 2.5,
                                                  "latency_ms": 1.25}]
    _export_front(tmp_path, front, {"x": TrialHandle(config={}, export=broken)}, get_task("sst2"),
                  DistillConfig(data_dir=str(data)), None, latency_device="cpu")
    assert front[0]["export"] is None and front[0]["export_error"] == "ValueError: damaged"
    assert not (tmp_path / "export" / "01-1L-36").exists()
    assert Path(front[1]["export"]).is_dir() and front[1]["dev_metric"] is not None
    card = (Path(front[1]["export"]) / "README.md").read_text()  # with what the search measured
    assert "2.50x faster than the teacher" in card and "1.25 ms per example at batch 1" in card


def test_a_resumed_search_divides_by_the_same_teacher_latency_and_trains_nothing_again(searched, monkeypatch):
    """A finished supernet search resumed (last: it writes the fixture's output again): the teacher is not
    measured again (its samples come from `teacher_latency.json`), no local candidate is scored again (they
    come from `local_search.json`), the targets pick the same candidates and no final trains again."""
    import ray

    import nas.cost
    import nas.local
    from nas.tune import search

    out, summary, _ = searched
    runs = sorted((out / "final").glob("*/run/results.json"))
    before = {p: p.stat().st_mtime for p in runs}
    monkeypatch.setenv("BERTNAS_CACHE", str(out.parent / "cache"))  # the search's own: its latencies, teacher
    monkeypatch.setattr(nas.cost.CostModel, "costs_beside", lambda *a, **k: pytest.fail("teacher measured again"))
    monkeypatch.setattr(nas.local, "score_candidate", lambda *a, **k: pytest.fail("local candidate scored again"))
    try:
        again = search(None, out, resume=True)
    finally:
        ray.shutdown()
    assert again["teacher_latency"] == summary["teacher_latency"]
    saved = {k: v for k, v in summary["local_search"].items() if not k.startswith("front_")}
    assert {k: v for k, v in again["local_search"].items() if not k.startswith("front_")} == saved
    assert [f["from_trial"] for f in again["finals"]] == [f["from_trial"] for f in summary["finals"]]
    assert [f["val_metric"] for f in again["finals"]] == [f["val_metric"] for f in summary["finals"]]
    assert runs and {p: p.stat().st_mtime for p in runs} == before
