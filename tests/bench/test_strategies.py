"""The strategies comparison (`bench.strategies`) on two hand-made search summaries: which student each
strategy exports at each target, candidates scored, and Spearman's rho of its ranking against dev."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bench import strategies
from bench.common import Skip


def _row(tid, *, speedup, val, dev, status="completed", export=True, **kw):
    return {"trial_id": tid, "status": status, "speedup": speedup, "val_metric": val, "dev_metric": dev,
            "export": f"export/{tid}" if export else None, "arch": f"arch-{tid}", **kw}


SUPERNET = {
    "candidates": 240, "seconds": {"total": 3500.0}, "teacher": {"dev_metric": 0.90}, "metric": "accuracy",
    "supernet": {"cached": "cache/supernets/sst2-0123"},
    "trials": [
        _row("a", speedup=3.5, val=0.86, dev=0.85, status="scored", kind="supernet"),
        _row("b", speedup=6.0, val=0.80, dev=0.79, status="scored", kind="supernet"),
        _row("c", speedup=11.0, val=0.70, dev=0.70, status="scored", kind="supernet"),
        _row("final-b", speedup=6.0, val=0.89, dev=0.88, status="final", kind="final", supernet_metric=0.80),
        _row("final-c", speedup=11.0, val=0.86, dev=0.86, status="final", kind="final", supernet_metric=0.70),
        _row("d", speedup=20.0, val=0.60, dev=None, status="scored", kind="supernet", export=False),
    ],
}
TRIALS = {
    "candidates": 14, "seconds": {"total": 3400.0}, "teacher": {"dev_metric": 0.90}, "metric": "accuracy",
    "trials": [
        _row("t1", speedup=3.2, val=0.87, dev=0.86),
        _row("t2", speedup=8.0, val=0.83, dev=0.82),
        _row("final", speedup=8.0, val=0.86, dev=0.85, status="final", from_trial="t2"),
    ],
}


def test_each_target_gets_the_best_exported_student_at_or_above_it():
    result = strategies.compare({"supernet": SUPERNET, "trials": TRIALS}, (3.0, 5.0, 10.0))
    by_target = {row["target"]: row for row in result["targets"]}
    assert by_target[3.0]["supernet"]["arch"] == "arch-final-b" and by_target[3.0]["supernet"]["dev"] == 0.88
    assert by_target[5.0]["supernet"]["kind"] == "final" and by_target[10.0]["supernet"]["dev"] == 0.86
    assert by_target[3.0]["trials"]["dev"] == 0.86 and by_target[5.0]["trials"]["kind"] == "final"
    assert by_target[10.0]["trials"] is None  # no trials student reaches 10x: no ratio either
    ratio = {r["name"]: r for r in result["ratios"]}
    assert ratio["dev at >= 5x: supernet vs trials"]["ratio"] == pytest.approx(0.88 / 0.85)
    assert ratio["dev at >= 10x: supernet vs trials"]["ratio"] is None


def test_ranking_quality_ranks_finals_by_their_candidates_scores():
    sn = strategies.compare({"supernet": SUPERNET}, (3.0,))["strategies"]["supernet"]
    # exported with a dev score: a, b, c and the two finals (ranked by 0.80 and 0.70); d has no export
    assert sn["points"] == 5 and sn["candidates"] == 240 and sn["supernet_cached"]
    # scores 0.86, 0.80, 0.70, 0.80, 0.70 against dev 0.85, 0.79, 0.70, 0.88, 0.86: rho from scipy
    from scipy import stats

    expected = stats.spearmanr([0.86, 0.80, 0.70, 0.80, 0.70], [0.85, 0.79, 0.70, 0.88, 0.86]).statistic
    assert sn["spearman"] == pytest.approx(expected)
    tr = strategies.compare({"trials": TRIALS}, (3.0,))["strategies"]["trials"]
    # the final is ranked by its trial's score (0.83), so three points: 0.87, 0.83, 0.83 vs 0.86, 0.82, 0.85
    assert tr["points"] == 3
    assert tr["spearman"] == pytest.approx(stats.spearmanr([0.87, 0.83, 0.83], [0.86, 0.82, 0.85]).statistic)
    two = {**TRIALS, "trials": TRIALS["trials"][:2]}
    assert strategies.ranking_quality(two) == {"spearman": None, "points": 2}


def test_paired_tests_compare_each_targets_two_students_on_the_same_examples():
    refs = np.arange(300) % 2
    wrong = {"export/final-b": 15, "export/t1": 30, "export/final": 60}  # errors on the first N examples

    class Task:
        kind = "classification"

    predicted = []

    def predict(export):
        predicted.append(export)
        preds = refs.copy()
        preds[: wrong.get(export, 0)] ^= 1
        return Task(), preds, refs

    result = strategies.compare({"supernet": SUPERNET, "trials": TRIALS}, (3.0, 5.0, 10.0))
    strategies.paired_tests(result, {"supernet": SUPERNET, "trials": TRIALS}, predict, samples=300)
    paired = {row["target"]: row["paired"] for row in result["targets"]}
    # 3x: final-b (95% right) against t1 (90%): 5 points on the same 300 examples, beyond chance
    assert paired[3.0]["difference"] == pytest.approx(0.05) and paired[3.0]["winner"] == "supernet"
    assert paired[3.0]["low"] > 0 and paired[3.0]["p_value"] < 0.05 and paired[3.0]["metric"] == "accuracy"
    assert paired[5.0]["difference"] == pytest.approx(0.15) and paired[10.0] is None  # no trials student at 10x
    assert sorted(predicted) == ["export/final", "export/final-b", "export/t1"]  # each student predicted once
    table = strategies.table(result)
    assert "supernet (+0.0500" in table and "its supernet from the cache" in table
    assert result["strategies"]["trials"]["supernet_cached"] is False


def test_compare_reads_finished_searches_and_the_suite_part_skips_in_quick(tmp_path, capsys):
    for name, summary in (("supernet", SUPERNET), ("trials", TRIALS)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(summary))
    strategies.main(["--compare", str(tmp_path)])
    saved = json.loads((tmp_path / "strategies.json").read_text())
    assert [row["target"] for row in saved["targets"]] == [3.0, 5.0, 10.0]
    assert "paired tests skipped: 4 export directories are gone" in capsys.readouterr().out  # hand-made rows
    with pytest.raises(Skip, match="no finished search"):
        strategies.load(tmp_path / "nothing")

    class Ctx:
        quick, data_root, out = True, tmp_path, tmp_path

    with pytest.raises(Skip, match="two full searches"):
        strategies.part(Ctx())
