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
import logging
import time
from pathlib import Path
from typing import Any

from distill.arch import BertArch, parse_arch_name
from distill.files import read_record, write_json
from nas.cost import LatencyPredictor
from nas.oneshot import MEASURE_SECONDS, ScoreSetup, estimate_row, score_candidate
from nas.space import KNOBS, SearchSpace
from nas.trial import error_line

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
LOCAL_SHARE = 0.12
"""The stage's share of the time left after the front's first measurement (the finals get the rest; the
front's second measurement comes out of it too, `measure_reserve`)."""


def neighbours(space: SearchSpace, teacher: BertArch, arch: BertArch) -> list[BertArch]:
    """The students one step from `arch` in `space`: one layer's heads or FFN size to the next smaller or
    larger choice (every layer's at once in a space that is not `heterogeneous`), the next smaller layer
    count (each layer's widths left out in turn, or, several layers fewer, each run of layers kept: which
    supernet layers a depth runs is the space's layer map's, not the mutation's), the hidden size to the
    next choice (heads capped at what fits it). Distinct, in a fixed order, `arch` itself excluded."""
    head_size = space.resolved_head_size(teacher)
    out: dict[str, BertArch] = {}

    def add(a: BertArch) -> None:
        if a.name != arch.name:
            out.setdefault(a.name, a)

    fit = [h for h in space.heads if h * head_size <= arch.hidden_size]
    n = arch.num_layers
    for layers in [(i,) for i in range(n)] if space.heterogeneous else [tuple(range(n))]:
        for h in _adjacent(fit, arch.num_heads[layers[0]]):
            add(arch.replace(num_heads=_put(arch.num_heads, layers, h)))
        for f in _adjacent(space.ffn, arch.ffn_sizes[layers[0]]):
            add(arch.replace(ffn_sizes=_put(arch.ffn_sizes, layers, f)))
    fewer = max((c for c in space.layers if c < n), default=None)
    if fewer is not None:
        kept = ([[j for j in range(n) if j != i] for i in range(n)] if fewer == n - 1
                else [list(range(s, s + fewer)) for s in range(n - fewer + 1)])
        for keep in kept:
            add(arch.replace(num_layers=fewer, num_heads=tuple(arch.num_heads[j] for j in keep),
                             ffn_sizes=tuple(arch.ffn_sizes[j] for j in keep)))
    for hidden in _adjacent(space.hidden, arch.hidden_size):
        most = max((h for h in space.heads if h * head_size <= hidden), default=None)
        if most is not None:
            add(arch.replace(hidden_size=hidden, num_heads=tuple(min(h, most) for h in arch.num_heads)))
    return list(out.values())


def _adjacent(choices, value) -> list:
    """The choices next to `value` below and above it (none past either end; `value` need not be one)."""
    below, above = [c for c in choices if c < value], [c for c in choices if c > value]
    return ([max(below)] if below else []) + ([min(above)] if above else [])


def _put(values: tuple, layers: tuple[int, ...], v) -> tuple:
    return tuple(v if i in layers else x for i, x in enumerate(values))


def local_predictor(rows: list[dict], teacher: BertArch, seq_len: int, fallback: LatencyPredictor,
                    fallback_error: float | None = None) -> LatencyPredictor:
    """A predictor fitted on the search's measured latencies, where there are `MIN_FIT` of them and its
    leave-one-out error is below `fallback_error` (the design set's predictor's error on the same
    measurements, `measure_front`'s), else `fallback`."""
    measured = [r for r in rows if r.get("latency_source") == "measured" and r.get("kind") == "supernet"
                and r.get("latency_ms") and r.get("arch")]
    if len(measured) < MIN_FIT:
        return fallback
    fitted = LatencyPredictor.fit([parse_arch_name(r["arch"], teacher) for r in measured],
                                  [r["latency_ms"] for r in measured], seq_len)
    return fitted if fallback_error is None or fitted.error < fallback_error else fallback


def measure_reserve(targets: tuple[float, ...]) -> float:
    """Seconds the stage leaves for measuring what it adds to the front: a beam's worth a target."""
    return MEASURE_SECONDS * BEAM * len(targets)


def config_of(space: SearchSpace, arch: BertArch) -> dict:
    """A sampled config for `arch` as the supernet strategy's Tune trials carry one (each knob at the
    space's first choice): what `SearchSpace.arch`, the finals and the exports read."""
    return {"layers": arch.num_layers, "hidden": arch.hidden_size, "share": 1, "heads": list(arch.num_heads),
            "ffn": list(arch.ffn_sizes), **{k: getattr(space, k)[0] for k in KNOBS}}


def trial_id(arch: BertArch) -> str:
    """A local candidate's trial id: `local-` and a digest of its name (Tune's ids are 8 hex digits)."""
    return "local-" + hashlib.sha1(arch.name.encode()).hexdigest()[:8]


def search_around_targets(rows: list[dict], setup: ScoreSetup, targets: tuple[float, ...], *, rounds: int,
                          seconds: float, out: Path, resume: bool,
                          design_error: float | None = None) -> tuple[list[dict], dict[str, dict], dict]:
    """Stage 4b: the rows and sampled configs of the candidates scored around each target, `rounds` rounds
    at most, scoring for `seconds` (shared by the targets in turn, what one leaves going to the next), and
    the stage's summary. A resumed search reuses OUTPUT/local_search.json; one that planned finals with no
    such file (from before the stage) runs none, so that its targets pick as they did."""
    path = out / LOCAL_SEARCH
    if resume and (saved := _saved(path)) is not None:
        return saved["rows"], saved["configs"], saved["summary"]
    if rounds == 0 or (resume and not path.exists() and any((out / "final").glob("*/plan.json"))):
        return [], {}, {"scored": 0, "rounds": 0, "targets": {}}
    t0 = time.perf_counter()
    predictor = local_predictor(rows, setup.teacher_arch, setup.seq_len, setup.predictor, design_error)
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


ROW_KEYS = frozenset({"trial_id", "arch", "status", "kind", "latency_source", "latency_ms", "speedup", "val_metric"})


def _saved(path: Path) -> dict | None:
    """OUTPUT/local_search.json as written, or None where there is none or it cannot be read (warned: the
    stage runs again and replaces it)."""
    return read_record(path, _check_saved, "local search record", "the local search runs again")


def _check_saved(saved: Any) -> None:
    rows, configs = saved["rows"], saved["configs"]
    if not (isinstance(rows, list) and isinstance(configs, dict) and isinstance(saved["summary"], dict)
            and "scored" in saved["summary"]
            and all(isinstance(r, dict) and ROW_KEYS <= r.keys() and r["trial_id"] in configs for r in rows)):
        raise ValueError("rows, configs or summary missing or inconsistent")


def _around(target: float, rows: list[dict], setup: ScoreSetup, seen: set[str], *, rounds: int,
            until: float) -> tuple[list[dict], dict]:
    """One target's beam: its rows (scored, rejected or failed) and a summary (seeds, candidates scored,
    the best estimate at or above the target, seeds included)."""
    space, teacher = setup.space, setup.teacher_arch

    def speedup(a: BertArch) -> float:
        return setup.teacher_latency_ms / setup.predictor.predict(a)

    near = {r["arch"]: r for r in sorted(rows, key=lambda r: (-(r.get("val_metric") or 0.0), r.get("arch") or ""))
            if r["status"] == "scored" and r.get("latency_source") == "measured"
            and target / BAND <= r["speedup"] <= BAND * target}  # one row an architecture: TPE's repeats
    ranked = list(near.values())[:BEAM]
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
            found.append(_score(b, setup))
            if found[-1]["status"] == "scored":
                pool.append((found[-1]["val_metric"], b))
        beam = sorted(pool, key=lambda p: (-p[0], p[1].name))[:BEAM]
        if not todo or time.time() > until or not beam:
            break
    best = min(pool, key=lambda p: (-p[0], p[1].name), default=None)
    return found, {"seeds": [a.name for _, a in seeds], "scored": sum(r["status"] == "scored" for r in found),
                   "rejected": sum(r["status"] == "rejected" for r in found),
                   "failed": sum(r["status"] == "failed" for r in found),
                   "best": best and best[1].name, "best_val": best and best[0]}


def _score(arch: BertArch, setup: ScoreSetup) -> dict:
    """A local candidate's row (`nas.oneshot.estimate_row`, as a scoring trial's): scored, rejected by a
    constraint, or failed (the error's line; the search goes on, as it does past a failed Tune trial)."""
    config = config_of(setup.space, arch)
    try:
        report = score_candidate(config, setup)
    except Exception as e:  # one candidate's failure (XLA, memory) costs only itself
        log.warning("local search: scoring %s failed: %s", arch.name, error_line(e))
        return estimate_row(trial_id(arch), {"arch": arch.name}, config, status="failed", error=error_line(e),
                            metric=setup.metric, seconds=None)
    scored = report["status"] == "scored"
    return estimate_row(trial_id(arch), report, config, status=report["status"],
                        error=None if scored else report.get("reason"), metric=setup.metric,
                        seconds=report.get("score_seconds"))
