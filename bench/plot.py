"""Student speedup against accuracy for a finished search, teacher marked: `python -m bench.plot`.

    python -m bench.plot --search runs/search-sst2 [--students bench/results/students.json] --out speedup.png

Left panel: every candidate of the search, speedup (the search's cost
model: teacher latency / student latency, batch 1) against held-out
validation accuracy (what the search ranked on), the Pareto front joined,
the final student and the teacher (1x) marked. Right panel: the exported
front on the task's dev set, with the speedup the `students` bench part
measured on real dev sentences when its JSON is given (else the search's),
the teacher at 1x and its score minus 1.5 points dashed (the search's
target). The suite writes this plot next to its JSON when it ran `students`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def load(search: Path, students: Path | None = None) -> dict:
    """The points to plot: {'teacher', 'candidates', 'front', 'metric', 'measured'} from a search's results.json."""
    res = json.loads((search / "results.json").read_text())
    rows = [t for t in res.get("trials", []) if t.get("speedup") and t.get("val_metric") is not None]
    final = res.get("final") or {}
    if final.get("speedup") and final.get("val_metric") is not None and not any(r.get("trial_id") == "final" for r in rows):
        rows.append({**final, "trial_id": "final"})
    measured = {}
    if students is not None:
        for s in json.loads(students.read_text()).get("students", []):
            measured[s["arch"]] = s["vs_teacher"]["speedup"]
    front = [r for r in rows if r.get("pareto") or r.get("trial_id") == "final"]
    # Measured speedups are the float32 students'; an int8 copy (--quantize, same arch name) keeps its own.
    front = [dict(r, dev_speedup=r["speedup"] if r.get("quantized") else measured.get(r["arch"], r["speedup"]))
             for r in front if r.get("dev_metric") is not None]
    teacher = res.get("teacher") or {}
    if not rows or teacher.get("val_metric") is None or teacher.get("dev_metric") is None:
        raise ValueError(f"{search}/results.json: no candidates with a speedup and a validation score, "
                         "or no teacher scores: nothing to plot")
    return {"teacher": teacher, "candidates": rows, "front": front, "metric": res.get("metric", "metric"),
            "task": res.get("task", ""), "measured": bool(measured)}


def plot(points: dict, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric, teacher = points["metric"], points["teacher"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    cand = points["candidates"]
    trials = [r for r in cand if r.get("trial_id") != "final"]
    left.scatter([r["speedup"] for r in trials], [100 * r["val_metric"] for r in trials], s=18, c="0.6",
                 label="candidates (short training)")
    front = sorted((r for r in cand if r.get("pareto")), key=lambda r: r["speedup"])
    left.plot([r["speedup"] for r in front], [100 * r["val_metric"] for r in front], "o-", c="tab:blue", ms=5,
              label="Pareto front")
    for r in cand:
        if r.get("trial_id") == "final":
            left.scatter([r["speedup"]], [100 * r["val_metric"]], marker="D", s=50, c="tab:green", zorder=3,
                         label=f"final student {r['arch']}")
    left.scatter([1.0], [100 * teacher["val_metric"]], marker="*", s=160, c="tab:red", zorder=3,
                 label=f"teacher {teacher['arch']}")
    left.set(xscale="log", xlabel="speedup over the teacher (batch 1, search cost model)",
             ylabel=f"validation {metric} (%)", title=f"{points['task']}: {len(trials)} candidates, then the final run")
    left.legend(fontsize=7, loc="lower left")

    dev = sorted(points["front"], key=lambda r: r["dev_speedup"])
    right.scatter([r["dev_speedup"] for r in dev], [100 * r["dev_metric"] for r in dev], c="tab:blue", s=25,
                  label="exported front")
    for i, r in enumerate(dev):  # alternate the label side so neighbours do not overlap
        right.annotate(r["arch"], (r["dev_speedup"], 100 * r["dev_metric"]), fontsize=6,
                       xytext=(5, 3) if i % 2 else (5, -9), textcoords="offset points")
    right.scatter([1.0], [100 * teacher["dev_metric"]], marker="*", s=160, c="tab:red", zorder=3, label="teacher")
    right.axhline(100 * teacher["dev_metric"] - 1.5, ls="--", c="tab:red", lw=0.8, label="teacher - 1.5")
    how = "measured on real dev lengths" if points["measured"] else "search cost model"
    right.set(xscale="log", xlabel=f"speedup over the teacher (batch 1, {how})", ylabel=f"dev {metric} (%)",
              title="the front on the dev set")
    right.legend(fontsize=7, loc="lower left")
    for ax in (left, right):
        ax.grid(alpha=0.3, which="both")
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:g}x"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xticks([1, 2, 5, 10, 20])
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.plot", description=__doc__.splitlines()[0])
    p.add_argument("--search", type=Path, required=True, help="a finished search's output directory")
    p.add_argument("--students", type=Path, help="students.json of the bench suite (measured speedups)")
    p.add_argument("--out", type=Path, default=Path("speedup_vs_accuracy.png"))
    args = p.parse_args(argv)
    if not (args.search / "results.json").is_file():
        print(f"error: {args.search}/results.json: not found (not a finished search)", file=sys.stderr)
        return 2
    try:
        points = load(args.search, args.students)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(plot(points, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
