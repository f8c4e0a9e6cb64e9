"""Suite part `strategies`: the two search strategies side by side, on one task, teacher and budget.

  python -m bench.strategies --task sst2 --budget-minutes 60 --out runs/strategies   # both searches, then the table
  python -m bench.strategies --compare runs/strategies                              # the table of finished ones
  python -m bench --only strategies                                                 # the suite part (SST-2, 60 min each)

The teacher is fine-tuned first (`bertnas finetune`, through the cache) and both searches get it with
`--teacher`, so neither pays for it and their budgets buy search alone. Each search is `bertnas search` in
a process of its own (each starts its own local Ray), with the same flags except `--strategy`.

Reported per target speedup (`--targets`, 3, 5 and 10): the dev score of each strategy's best exported
student at or above it (measured batch-1 speedup, as the search measures) and what that student is (a
trained final, a trial, a supernet estimate); per strategy: the candidates scored, and how well its ranking
predicts the trained students' dev scores: Spearman's rho over its exported front between the score it
ranked each member by (a trial's validation score, a supernet estimate's; for a final, its candidate's)
and the member's dev score; whether the supernet strategy found its supernet in the cache (trained by an
earlier search with the same settings, so this budget bought more scoring and finals than a cold one).
Where both strategies have a student at a target, the two are compared on the same dev examples by a
paired bootstrap of the task's metric (`tasks.metrics.paired_bootstrap`): the difference, its 95%
interval and p-value, and the winner, or `tie` where the interval holds zero (SST-2's 872 dev sentences
put the standard error of one accuracy near a point).
"""

from __future__ import annotations

import argparse
import functools
import json
import subprocess
import sys
import time
from pathlib import Path

from bench.common import Skip
from distill.run import split_predictions
from nas.report import finite
from tasks.metrics import get_metric, paired_bootstrap

STRATEGIES = ("supernet", "trials")
ROOT = Path(__file__).resolve().parent.parent


def exported(summary: dict) -> list[dict]:
    """The search's exported rows with a dev score and a speedup (its Pareto front)."""
    return [r for r in summary["trials"] if r.get("export") and finite(r.get("dev_metric"))
            and finite(r.get("speedup"))]


def best_at(summary: dict, target: float) -> dict | None:
    """The exported student with the best dev score at or above `target` speedup (ties: the faster)."""
    fast = [r for r in exported(summary) if r["speedup"] >= target]
    return max(fast, key=lambda r: (r["dev_metric"], r["speedup"])) if fast else None


def search_score(row: dict, rows: dict[str, dict]) -> float | None:
    """The score the strategy ranked `row` by: a final's candidate's (its supernet estimate, or its trial's
    validation score), else the row's own validation score."""
    if row.get("status") == "final":
        if finite(row.get("supernet_metric")):
            return row["supernet_metric"]
        source = rows.get(row.get("from_trial"))
        return source.get("val_metric") if source else None
    return row.get("val_metric")


def ranking_quality(summary: dict) -> dict:
    """Spearman's rho between the search's scores and the dev scores of its exported students (None with
    fewer than 3 of them, or when either side is constant)."""
    from scipy import stats

    rows = {r["trial_id"]: r for r in summary["trials"]}
    pairs = [(s, r["dev_metric"]) for r in exported(summary) if finite(s := search_score(r, rows))]
    rho = None
    if len(pairs) >= 3 and len({p[0] for p in pairs}) > 1 and len({p[1] for p in pairs}) > 1:
        rho = float(stats.spearmanr([p[0] for p in pairs], [p[1] for p in pairs]).statistic)
    return {"spearman": rho, "points": len(pairs)}


def compare(summaries: dict[str, dict], targets: tuple[float, ...]) -> dict:
    """The table: per target, each strategy's best exported student; per strategy, candidates and ranking."""
    per_target = []
    for t in targets:
        row = {"target": t}
        for name, summary in summaries.items():
            best = best_at(summary, t)
            row[name] = None if best is None else {
                "arch": best["arch"], "speedup": best["speedup"], "dev": best["dev_metric"],
                "kind": best.get("kind") or ("final" if best.get("status") == "final" else "trial"),
                "export": best["export"],
            }
        per_target.append(row)
    strategies = {name: {"candidates": s["candidates"], "distinct": s.get("distinct_candidates"),
                         "seconds": s["seconds"].get("total"),
                         "teacher_dev": s["teacher"]["dev_metric"], **ranking_quality(s),
                         "supernet_cached": bool((s.get("supernet") or {}).get("cached"))}
                  for name, s in summaries.items()}
    ratios = []
    for row in per_target:
        a, b = row.get("supernet"), row.get("trials")
        ratios.append({"name": f"dev at >= {row['target']:g}x: supernet vs trials", "ours": a and a["dev"],
                       "reference": b and b["dev"], "unit": "", "ratio": a["dev"] / b["dev"] if a and b else None,
                       "ratio_is": "supernet / trials"})
    return {"targets": per_target, "strategies": strategies, "ratios": ratios}


def paired_tests(result: dict, summaries: dict[str, dict], predict, *, samples: int = 1000) -> dict:
    """`result` (`compare`) with each target's two students compared on the same dev examples: `predict`
    maps an export directory to (task, predictions, references) (`distill.run.split_predictions`); the
    metric is the searches' own (results.json `metric`). Each target row gains `paired`: difference
    (supernet - trials), low, high, p_value, winner ('supernet', 'trials' or 'tie'); None where a strategy
    has no student there."""
    metric_name = next(iter(summaries.values()))["metric"]
    predict = functools.cache(predict)  # a student may serve several targets
    for row in result["targets"]:
        a, b = row.get("supernet"), row.get("trials")
        row["paired"] = None
        if not (a and b):
            continue
        (task, pa, refs), (_, pb, _) = predict(a["export"]), predict(b["export"])
        test = paired_bootstrap(get_metric(task.kind, metric_name), pa, pb, refs, samples=samples)
        winner = {"a": "supernet", "b": "trials", "tie": "tie"}[test.winner()]
        row["paired"] = {"metric": metric_name, "difference": test.difference, "low": test.low, "high": test.high,
                         "p_value": test.p_value, "winner": winner}
    return result


def run_searches(task: str, out: Path, *, budget_minutes: float, data_dir: str | None, seed: int,
                 extra: list[str]) -> dict[str, dict]:
    """The teacher (`bertnas finetune`, cached), then one search per strategy; their results.json."""
    common = ["--task", task, "--seed", str(seed), *(["--data-dir", data_dir] if data_dir else [])]
    teacher_run = out / "teacher"
    if not (teacher_run / "teacher" / "config.json").is_file():
        _bertnas(["finetune", *common, "--epochs", "2", "--output", str(teacher_run)])
    summaries = {}
    for strategy in STRATEGIES:
        dest = out / strategy
        if not (dest / "results.json").is_file():
            _bertnas(["search", *common, "--teacher", str(teacher_run / "teacher"), "--strategy", strategy,
                      "--budget-minutes", f"{budget_minutes:g}", *extra, "--output", str(dest)])
        summaries[strategy] = json.loads((dest / "results.json").read_text())
    return summaries


def _bertnas(args: list[str]) -> None:
    t0 = time.time()
    print(f"bertnas {' '.join(args)}", flush=True)
    done = subprocess.run([sys.executable, "-m", "nas.cli", *args], cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"bertnas {args[0]} exited {done.returncode}")
    print(f"  done in {time.time() - t0:.0f} s", flush=True)


def load(out: Path) -> dict[str, dict]:
    found = {s: out / s / "results.json" for s in STRATEGIES}
    missing = [str(p) for p in found.values() if not p.is_file()]
    if missing:
        raise Skip(f"no finished search at {', '.join(missing)}")
    return {s: json.loads(p.read_text()) for s, p in found.items()}


def part(ctx) -> dict:
    """The suite part: two 60-minute searches on SST-2 (never in --quick: that is two searches' time)."""
    if ctx.quick:
        raise Skip("two full searches: run `python -m bench --only strategies` (about 2.5 hours on 2 cores)")
    data = Path(ctx.data_root) / "glue" / "SST-2"
    if not data.is_dir():
        raise Skip(f"no SST-2 data at {data}")
    summaries = run_searches("sst2", Path(ctx.out) / "strategies", budget_minutes=60, data_dir=str(data), seed=0,
                             extra=[])
    return with_paired_tests(compare(summaries, (3.0, 5.0, 10.0)), summaries, str(data))


def with_paired_tests(result: dict, summaries: dict[str, dict], data_dir: str | None) -> dict:
    """`paired_tests` on the exports' dev predictions (`distill.run.split_predictions` from `data_dir`), or
    `result` as it is, saying why, where an export directory is gone (moved or deleted since the search)."""
    students = {row[s]["export"] for row in result["targets"] for s in STRATEGIES if row.get(s)}
    missing = sorted(d for d in students if not Path(d).is_dir())
    if missing:
        print(f"paired tests skipped: {len(missing)} export directories are gone, e.g. {missing[0]}")
        return result
    return paired_tests(result, summaries, lambda d: split_predictions(d, data_dir=data_dir))


def search_data_dir(out: Path) -> str | None:
    """The data directory the finished searches in `out` read (their search_config.json), if recorded."""
    for strategy in STRATEGIES:
        config = out / strategy / "search_config.json"
        if config.is_file():
            return json.loads(config.read_text()).get("data_dir")
    return None


def table(result: dict) -> str:
    lines = [f"{'target':>7}  " + "  ".join(f"{s + ' dev (student, kind)':<44}" for s in STRATEGIES)
             + "  paired (supernet - trials)"]
    for row in result["targets"]:
        cells = []
        for s in STRATEGIES:
            r = row.get(s)
            cells.append(f"{'-':<44}" if r is None else
                         f"{r['dev']:.4f} ({r['arch'][:22]} {r['speedup']:.1f}x, {r['kind']})".ljust(44))
        paired = row.get("paired")
        if paired:
            cells.append(f"{paired['winner']} ({paired['difference']:+.4f}, 95% [{paired['low']:+.4f}, "
                         f"{paired['high']:+.4f}], p {paired['p_value']:.2f})")
        lines.append(f"{row['target']:>6g}x  " + "  ".join(cells))
    for s, info in result["strategies"].items():
        rho = "-" if info["spearman"] is None else f"{info['spearman']:.2f}"
        cached = " (its supernet from the cache: trained by an earlier search, not in this budget)" \
            if info.get("supernet_cached") else ""
        distinct = "" if info.get("distinct") is None else f" ({info['distinct']} distinct)"
        lines.append(f"{s}: {info['candidates']} candidates scored{distinct}, Spearman {rho} over {info['points']} "
                     f"exported students, teacher dev {info['teacher_dev']:.4f}, {info['seconds'] or 0:.0f} s{cached}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="sst2")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--budget-minutes", type=float, default=60.0, help="each search's budget")
    p.add_argument("--targets", default="3,5,10")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs/strategies"))
    p.add_argument("--compare", type=Path, default=None, help="only compare the finished searches in this folder")
    args, extra = p.parse_known_args(argv)
    targets = tuple(float(t) for t in args.targets.split(","))
    if args.compare:
        summaries = load(args.compare)
    else:
        summaries = run_searches(args.task, args.out, budget_minutes=args.budget_minutes, data_dir=args.data_dir,
                                 seed=args.seed, extra=[*extra, "--targets", args.targets])
    result = with_paired_tests(compare(summaries, targets), summaries,
                               args.data_dir or search_data_dir(args.compare or args.out))
    print(table(result))
    (args.compare or args.out).joinpath("strategies.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
