"""Where a profiled run's time went: the XLA ops of a JAX profiler trace, summed per op and per kind.

`summarize(trace_dir, steps)` reads the newest `*.xplane.pb` under `trace_dir` (what `jax.profiler.trace`
or `--profile N` writes) and sums the time of each XLA op the trace recorded:

- on a GPU or TPU, the device plane's "XLA Ops" line (else its busiest line), with the op's HLO category
  as its kind;
- on the CPU, every host thread's events that name an HLO op (XLA:CPU runs its thunks on a pool of
  threads, one or several at a time): their times are summed over the threads, so with two threads at
  work the busy time can exceed the wall-clock time. An op's kind is its name without the number
  (`ynn_fusion.465` -> `ynn_fusion`: XLA:CPU's YNNPACK matmuls; `*_fusion`: elementwise loops named after
  their ops; `copy`, `concatenate`, `dot`, `while`).

An op is named within its XLA module (its program: the train step, an evaluation), and counted for its
own time, less that of the ops inside it (a `while` loop's body). A trace with a device plane but no op on
it (a GPU without kernel tracing) gives an error, not the host's launch times.

The result is plain JSON: the busy milliseconds per step, the kinds and the `top` ops, each with its
milliseconds per step and share of the busy time. The training loop writes it next to the trace as
`profile/ops.json` and logs the biggest kinds; `bench.accelerator --profile` prints it.
"""

from __future__ import annotations

import collections
import re
from pathlib import Path

from jax.profiler import ProfileData

OP_STAT = "hlo_op"
"""The event statistic by which XLA marks an event as the run of one HLO op (CPU thunks carry it)."""

DETAIL_STATS = ("long_name", "hlo_op", "hlo_category", "tf_op", "bytes_accessed", "flops", "kernel_details")
"""Statistics copied (cut to 240 characters) into an op's row where the trace has them (GPU traces)."""


def summarize(trace_dir: str | Path, steps: int, top: int = 25) -> dict:
    """The ops of the newest trace under `trace_dir`, summed and divided by `steps` (the steps traced):
    {"source", "threads" (host threads with ops; None for a device), "busy_ms_per_step", "kinds": [{"kind",
    "ms_per_step", "share"}], "ops": [{"name", "module", "kind", "ms_per_step", "calls_per_step", "share",
    ...}]}, biggest first, `top` ops at most. An op is
    named within its XLA module (program), and its time is its own: an op that runs others inside it (a
    `while` loop and its body) counts only what the others do not. A trace without any XLA op, or with a
    device plane that recorded none, gives {"source": None, "error": ...}."""
    files = sorted(Path(trace_dir).rglob("*.xplane.pb"), key=lambda p: p.stat().st_mtime)
    if not files:
        return {"source": None, "error": f"no *.xplane.pb under {trace_dir}"}
    data = ProfileData.from_file(str(files[-1]))
    device = any(plane.name.startswith("/device:") for plane in data.planes)
    found = _device_ops(data) if device else _host_ops(data)
    if found is None:  # a device plane without ops (no kernel tracing): host times would mislead
        return {"source": None, "error": "no XLA op in the trace", "trace": str(files[-1])}
    source, threads, times, calls, details = found
    busy = sum(times.values()) or 1
    steps = max(1, steps)
    kinds = collections.Counter()
    for key, ns in times.items():
        kinds[_kind(key, details)] += ns
    return {
        "source": source,
        "threads": threads,
        "trace": str(files[-1]),
        "steps": steps,
        "busy_ms_per_step": busy / steps / 1e6,
        "kinds": [{"kind": k, "ms_per_step": ns / steps / 1e6, "share": ns / busy} for k, ns in kinds.most_common()],
        "ops": [{"name": key[1], "module": key[0], "kind": _kind(key, details), "ms_per_step": ns / steps / 1e6,
                 "calls_per_step": calls[key] / steps, "share": ns / busy,
                 **{k: v for k, v in details[key].items() if k != OP_STAT}}
                for key, ns in times.most_common(top)],
    }


def op_kind(name: str) -> str:
    """An op's name without XLA's number: `ynn_fusion.465` -> `ynn_fusion`."""
    return re.sub(r"\.\d+$", "", name)


def _kind(key: tuple[str, str], details: dict) -> str:
    return details[key].get("hlo_category") or op_kind(key[1])


def _device_ops(data: ProfileData):
    """(source, None, times, calls, details) of the device planes' op line, or None if it recorded no op."""
    by_line = {}
    for plane in data.planes:
        if plane.name.startswith("/device:"):
            for line in plane.lines:
                by_line[f"{plane.name} {line.name}"] = own_times(line.events, ops_only=False)
    by_line = {k: v for k, v in by_line.items() if v[0]}
    if not by_line:
        return None
    ops = [k for k in by_line if k.endswith(" XLA Ops")]
    name = ops[0] if ops else max(by_line, key=lambda k: sum(by_line[k][0].values()))
    return (name, None, *by_line[name])


def _host_ops(data: ProfileData):
    """(source, threads, times, calls, details) of the host threads' XLA op events (`threads`: how many
    threads ran them), or None if there are none."""
    times, calls, details, threads = collections.Counter(), collections.Counter(), {}, set()
    for plane in data.planes:
        if not plane.name.startswith("/host:"):
            continue
        for line in plane.lines:
            t, c, d = own_times(line.events, ops_only=True)
            if t:
                threads.add(line.name)
                times.update(t)
                calls.update(c)
                details.update(d)
    if not times:
        return None
    return f"XLA ops on {len(threads)} host thread(s), summed", len(threads), times, calls, details


def own_times(events, ops_only: bool) -> tuple[collections.Counter, collections.Counter, dict]:
    """(times, calls, details) of one timeline's events (`ops_only`: those that carry `OP_STAT`, XLA:CPU's
    ops among the host's other events), keyed by (module, name): each event's own time, its duration less
    that of the counted events inside it (XLA:CPU traces a `while` op from its start to its end, its body's
    ops inside it on the same thread)."""
    times, calls, details = collections.Counter(), collections.Counter(), {}
    enclosing: list[tuple[int, tuple[str, str]]] = []  # (end, key) of the events open at this point
    spans = []
    for e in events:
        stats = dict(e.stats)
        if OP_STAT in stats or not ops_only:
            spans.append((e.start_ns, e.start_ns + e.duration_ns, e.name, stats))
    for start, end, name, stats in sorted(spans, key=lambda span: (span[0], -span[1])):
        key = (str(stats.get("hlo_module", "")), name)
        while enclosing and enclosing[-1][0] <= start:
            enclosing.pop()
        if enclosing and end <= enclosing[-1][0]:
            times[enclosing[-1][1]] -= end - start
        times[key] += end - start
        calls[key] += 1
        if key not in details:
            details[key] = {k: str(v)[:240] for k, v in stats.items() if k in DETAIL_STATS}
        enclosing.append((end, key))
    return times, calls, details
