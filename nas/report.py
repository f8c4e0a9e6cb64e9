"""What a search leaves behind: the trial table, the Pareto front, the plot and the leaderboard.

Rows are plain dicts, one per trial (see `COLUMNS`); `pareto_front` keeps the
scored candidates that no other candidate beats on both the metric (higher is
better) and the batch-1 latency (lower is better). With the supernet strategy a
row's `kind` says whether it is a supernet estimate (status `scored`: untrained
weights taken from the supernet) or a trained final, and `latency_source`
whether its latency was measured or predicted (the front's are all measured).
With `--quantize`, the int8 copies of the front's students are rows too (status
`quantized`).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from distill.files import write_json
from nas.space import KNOBS

COLUMNS = (
    "trial_id", "status", "kind", "arch", "params", "flops", "latency_ms", "batch_latency_ms", "speedup",
    "latency_source", "val_metric", "dev_metric", "steps", "steps_per_second", "seconds", "learning_rate",
    "temperature", "hard_weight", "hidden_weight", "init_layers", "pareto", "export", "quantized", "weight_ratio",
    "error",
)


TRAINED = ("completed", "stopped", "scored", "final", "quantized")
"""Rows with a score: trials, supernet estimates (`scored`), finals, int8 copies of front members (--quantize)."""


def finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


SEARCHED = ("completed", "stopped", "scored")
"""Rows of candidates the search itself scored (trials and supernet estimates; not finals or int8 copies)."""


def distinct_candidates(rows: list[dict]) -> set[tuple]:
    """The distinct candidates among the searched rows: a student and the knobs it was trained with
    (`nas.searcher` hands each to Tune once while fresh ones can be found)."""
    return {(r.get("arch"), *(r.get(k) for k in KNOBS)) for r in rows if r.get("status") in SEARCHED}


def pareto_front(rows: list[dict], metric: str = "val_metric", cost: str = "latency_ms") -> list[dict]:
    """Rows not dominated on (metric up, cost down), best metric first; rows without both values never qualify."""
    ok = [r for r in rows if r.get("status") in TRAINED and finite(r.get(metric)) and finite(r.get(cost))]

    def dominated(r):
        return any(
            o[metric] >= r[metric] and o[cost] <= r[cost] and (o[metric] > r[metric] or o[cost] < r[cost]) for o in ok
        )

    front, seen = [], set()
    # On a tie, a trained final before the supernet estimate it came from.
    order = lambda r: (-r[metric], r[cost], r["status"] != "final")  # noqa: E731
    for r in sorted((r for r in ok if not dominated(r)), key=order):
        if (r.get("arch"), r[metric], r[cost]) not in seen:  # the same candidate sampled twice: listed once
            seen.add((r.get("arch"), r[metric], r[cost]))
            front.append(r)
    return front


def write_table(out: Path, rows: list[dict], summary: dict) -> None:
    """`results.csv` (one line per trial) and `results.json` (the summary plus every row)."""
    with open(out / "results.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: _cell(r.get(k)) for k in COLUMNS})
    write_json(out / "results.json", {**summary, "trials": rows})


def _cell(v):
    if isinstance(v, float):
        return "" if not math.isfinite(v) else f"{v:.6g}"
    return "" if v is None else v


def plot(path: Path, rows: list[dict], front: list[dict], teacher: dict, metric_name: str) -> None:
    """Metric against batch-1 latency: every trained candidate, the front highlighted, the teacher marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    pts = [r for r in rows if finite(r.get("val_metric")) and finite(r.get("latency_ms"))]
    estimates = any(r.get("kind") == "supernet" for r in pts)
    ax.scatter([r["latency_ms"] for r in pts], [r["val_metric"] for r in pts], c="0.6", s=18,
               label="supernet estimates (untrained)" if estimates else "candidates")
    if front:
        ax.plot([r["latency_ms"] for r in front], [r["val_metric"] for r in front], "o-", c="C0", label="Pareto front")
        for r in front:
            ax.annotate(r["arch"], (r["latency_ms"], r["val_metric"]), fontsize=6, xytext=(3, 3), textcoords="offset points")
    final = [r for r in pts if r.get("status") == "final"]
    if final:
        ax.scatter([r["latency_ms"] for r in final], [r["val_metric"] for r in final], marker="D", s=50, c="C2",
                   label="trained finals" if estimates else "final student", zorder=3)
    quantized = [r for r in pts if r.get("quantized")]
    if quantized:
        ax.scatter([r["latency_ms"] for r in quantized], [r["val_metric"] for r in quantized], marker="x", s=40,
                   c="C1", label="int8 copies", zorder=3)
    if finite(teacher.get("latency_ms")) and finite(teacher.get("val_metric")):
        ax.scatter([teacher["latency_ms"]], [teacher["val_metric"]], marker="*", s=160, c="C3", label="teacher", zorder=3)
    ax.set_xscale("log")
    ax.set_xlabel("latency, batch 1 (ms, log scale)")
    ax.set_ylabel(f"validation {metric_name}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def leaderboard(front: list[dict], teacher: dict, metric_name: str) -> str:
    """The Pareto front as a short text table (printed at the end of a search)."""
    lines = [
        f"{'model':<34} {'params':>8} {'ms (b=1)':>9} {'speedup':>8} {'val ' + metric_name:>14} {'dev ' + metric_name:>14}",
    ]

    def line(name, r):
        speed = f"{r['speedup']:.2f}x" if finite(r.get("speedup")) else "-"
        dev = f"{r['dev_metric']:.4f}" if finite(r.get("dev_metric")) else "-"
        val = f"{r['val_metric']:.4f}" if finite(r.get("val_metric")) else "-"
        return f"{name:<34} {r['params'] / 1e6:>7.2f}M {r['latency_ms']:>9.2f} {speed:>8} {val:>14} {dev:>14}"

    lines.append(line("teacher", {**teacher, "speedup": 1.0}))
    lines += [line(r["arch"] + (" (final)" if r.get("status") == "final" else "")
                   + (" (supernet)" if r.get("kind") == "supernet" else "")
                   + (f" ({r['quantized']})" if r.get("quantized") else ""), r) for r in front]
    return "\n".join(lines)
