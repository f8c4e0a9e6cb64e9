"""Stage 4b of the supernet strategy: a local search around each target speedup.

TPE spreads its candidates over the whole space, so a target's pick is the best of the few candidates it
happened to sample near that speedup (SST-2, session 24: none of 240 was a 2- or 3-layer student between
9x and 10.4x; the 10x pick scored 85.2 where a 3-layer, 320-wide neighbour of a 9x candidate scores 87.5).
Around each target `t` this stage runs a beam of single mutations, as HAT's evolutionary search mutates
the best of its population, on the supernet's scores:

  - the beam starts from the most accurate measured candidates within `BAND` of `t` (either side);
  - each round scores the beam's neighbours (`neighbours`: one layer's heads or FFN one choice up or down,
    one layer fewer, the next hidden size) whose predicted speedup lies in [t, BAND * t] and were not
    scored yet, with the supernet's weights, as a scoring trial does (`nas.oneshot.score_candidate`);
  - the next beam is the most accurate scored candidates predicted at or above `t`.

Latencies are predicted by a `LatencyPredictor` fitted on every latency the search measured so far (the
front's, which lie where the targets are), not only on the design set. The caller adds the rows (trial ids
`local-...`, `kind` 'supernet') to the search's and measures the front again (`measure_front`), so a
target only ever picks a candidate whose speedup was measured. OUTPUT/local_search.json keeps the
stage's rows and configs: a resumed search reuses them and scores nothing again.

May import what `nas.oneshot` does, and `nas.oneshot` itself.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from pathlib import Path

from distill.arch import BertArch, parse_arch_name
from distill.files import write_json
from nas.cost import LatencyPredictor
from nas.oneshot import ScoreSetup, score_candidate
from nas.space import KNOBS, SearchSpace

log = logging.getLogger(__name__)

LOCAL_SEARCH = "local_search.json"
BAND = 1.3
"""A target's neighbourhood: speedups within this factor of it (the beam's seeds on both sides, the
scored neighbours above it)."""
BEAM = 3
"""Candidates per target whose neighbours a round scores (SST-2 probe, session 25: beams of 4 scored
49-82 neighbours a target in 3 rounds)."""
MIN_FIT = 8
"""Measured latencies below which the stage keeps the design set's predictor."""


def neighbours(space: SearchSpace, teacher: BertArch, arch: BertArch) -> list[BertArch]:
    """The students one step from `arch` in `space`: one layer's heads or FFN size to the next smaller or
    larger choice, one layer dropped (each in turn, down to the space's fewest), the hidden size to the
    next choice (heads capped at what fits it). Distinct, in a fixed order, `arch` itself excluded."""
    head_size = space.resolved_head_size(teacher)
    out: dict[str, BertArch] = {}

    def add(a: BertArch) -> None:
        if a.name != arch.name:
            out.setdefault(a.name, a)

    fit = [h for h in space.heads if h * head_size <= arch.hidden_size]
    for i in range(arch.num_layers):
        for h in _adjacent(fit, arch.num_heads[i]):
            add(arch.replace(num_heads=_put(arch.num_heads, i, h)))
        for f in _adjacent(space.ffn, arch.ffn_sizes[i]):
            add(arch.replace(ffn_sizes=_put(arch.ffn_sizes, i, f)))
    if arch.num_layers > min(space.layers):
        for i in range(arch.num_layers):
            add(arch.replace(num_layers=arch.num_layers - 1, num_heads=_drop(arch.num_heads, i),
                             ffn_sizes=_drop(arch.ffn_sizes, i)))
    for hidden in _adjacent(space.hidden, arch.hidden_size):
        most = max((h for h in space.heads if h * head_size <= hidden), default=None)
        if most is not None:
            add(arch.replace(hidden_size=hidden, num_heads=tuple(min(h, most) for h in arch.num_heads)))
    return list(out.values())


def _adjacent(choices, value) -> list:
    """The choices next to `value` below and above it (none past either end; `value` need not be one)."""
    below, above = [c for c in choices if c < value], [c for c in choices if c > value]
    return ([max(below)] if below else []) + ([min(above)] if above else [])


def _put(values: tuple, i: int, v) -> tuple:
    return values[:i] + (v,) + values[i + 1:]


def _drop(values: tuple, i: int) -> tuple:
    return values[:i] + values[i + 1:]


def local_predictor(rows: list[dict], teacher: BertArch, seq_len: int, fallback: LatencyPredictor) -> LatencyPredictor:
    """A predictor fitted on the search's measured latencies (`MIN_FIT` of them at least, else `fallback`)."""
    measured = [r for r in rows if r.get("latency_source") == "measured" and r.get("kind") == "supernet"
                and r.get("latency_ms") and r.get("arch")]
    if len(measured) < MIN_FIT:
        return fallback
    return LatencyPredictor.fit([parse_arch_name(r["arch"], teacher) for r in measured],
                                [r["latency_ms"] for r in measured], seq_len)


def config_of(space: SearchSpace, arch: BertArch) -> dict:
    """A sampled config for `arch` as the supernet strategy's Tune trials carry one (each knob at the
    space's first choice): what `SearchSpace.arch`, the finals and the exports read."""
    return {"layers": arch.num_layers, "hidden": arch.hidden_size, "share": 1, "heads": list(arch.num_heads),
            "ffn": list(arch.ffn_sizes), **{k: getattr(space, k)[0] for k in KNOBS}}


def trial_id(arch: BertArch) -> str:
    return "local-" + hashlib.sha1(arch.name.encode()).hexdigest()[:8]


LOCAL_SHARE = 0.12
"""The stage's share of the time left after the front's first measurement (the finals get the rest)."""


def search_around_targets(rows: list[dict], setup: ScoreSetup, targets: tuple[float, ...], *, rounds: int,
                          seconds: float, out: Path, resume: bool) -> tuple[list[dict], dict[str, dict], dict]:
    """Stage 4b: the rows and sampled configs of the candidates scored around each target, `rounds` rounds
    at most and `seconds` in all (shared by the targets in turn, what one leaves going to the next), and the
    stage's summary. A resumed search reuses OUTPUT/local_search.json; one that planned finals without it
    (from before the stage) runs none, so that its targets pick as they did."""
    path = out / LOCAL_SEARCH
    if resume and (saved := _saved(path)) is not None:
        return saved["rows"], saved["configs"], saved["summary"]
    if rounds == 0 or (resume and any((out / "final").glob("*/plan.json"))):
        return [], {}, {"scored": 0, "rounds": 0, "targets": {}}
    t0 = time.perf_counter()
    predictor = local_predictor(rows, setup.teacher_arch, setup.seq_len, setup.predictor)
    setup = dataclasses.replace(setup, predictor=predictor)
    seen = {r["arch"] for r in rows if r.get("arch")}
    deadline, found, per_target = time.time() + seconds, [], {}
    for i, target in enumerate(sorted(targets)):
        until = time.time() + (deadline - time.time()) / (len(targets) - i)
        new, per_target[f"{target:g}"] = _around(target, rows + found, setup, seen, rounds=rounds, until=until)
        found += new
    summary = {"scored": sum(r["status"] == "scored" for r in found), "rounds": rounds, "targets": per_target,
               "predictor": {"measured": predictor.measured, "loo_error": predictor.error},
               "seconds": time.perf_counter() - t0}
    configs = {r["trial_id"]: config_of(setup.space, parse_arch_name(r["arch"], setup.teacher_arch)) for r in found}
    write_json(path, {"rows": found, "configs": configs, "summary": summary})
    log.info("local search: %d candidates scored around %s in %.0f s", summary["scored"],
             ", ".join(f"{t:g}x" for t in sorted(targets)), summary["seconds"])
    return found, configs, summary


def _saved(path: Path) -> dict | None:
    """OUTPUT/local_search.json as written, or None where there is none or it cannot be read (warned: the
    stage runs again and replaces it)."""
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text())
        if not (isinstance(saved["rows"], list) and isinstance(saved["configs"], dict)
                and all(r["trial_id"] in saved["configs"] for r in saved["rows"]) and "scored" in saved["summary"]):
            raise ValueError("rows, configs or summary missing or inconsistent")
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        log.warning("%s: damaged local search record (%s); the local search runs again", path,
                    str(e)[:200] or type(e).__name__)
        return None
    return saved


def _around(target: float, rows: list[dict], setup: ScoreSetup, seen: set[str], *, rounds: int,
            until: float) -> tuple[list[dict], dict]:
    """One target's beam: its scored rows and a summary (seeds, candidates scored, the best found)."""
    space, teacher = setup.space, setup.teacher_arch
    speedup = lambda a: setup.teacher_latency_ms / setup.predictor.predict(a)  # noqa: E731
    near = [r for r in rows if r["status"] == "scored" and r.get("latency_source") == "measured"
            and target / BAND <= r["speedup"] <= BAND * target]
    ranked = sorted(near, key=lambda r: (-r["val_metric"], r["arch"]))[:BEAM]
    seeds = [(r["val_metric"], parse_arch_name(r["arch"], teacher)) for r in ranked]
    pool = [(v, a) for (v, a), r in zip(seeds, ranked) if r["speedup"] >= target]
    beam, found = seeds, []
    for _ in range(rounds):
        todo = {b.name: b for _, a in beam for b in neighbours(space, teacher, a)
                if b.name not in seen and target <= speedup(b) <= BAND * target}
        for b in todo.values():
            if time.time() > until:
                break
            seen.add(b.name)
            found.append(_row(b, score_candidate(config_of(space, b), setup), setup))
            if found[-1]["status"] == "scored":
                pool.append((found[-1]["val_metric"], b))
        beam = sorted(pool, key=lambda p: (-p[0], p[1].name))[:BEAM]
        if not todo or time.time() > until or not beam:
            break
    best = beam[0] if beam else None
    return found, {"seeds": [a.name for _, a in seeds], "scored": len(found),
                   "best": best and best[1].name, "best_val": best and best[0]}


def _row(arch: BertArch, report: dict, setup: ScoreSetup) -> dict:
    """A local candidate's row, as `nas.oneshot.score_rows` makes a scoring trial's."""
    scored = report["status"] == "scored"
    return {"trial_id": trial_id(arch), "kind": "supernet", "latency_source": "predicted", "steps": 0,
            "seconds": report.get("score_seconds"), "pareto": False,
            **{k: report.get(k) for k in ("arch", "params", "flops", "latency_ms", "speedup")},
            **{k: getattr(setup.space, k)[0] for k in KNOBS},
            "status": report["status"], "error": None if scored else report.get("reason"),
            "val_metric": report[setup.metric] if scored else None}
