"""Latency measured in a child process on a fixed number of CPU threads (`nas.cost.measure_in_child`).

  python -m nas.latency_child '{"archs": [{...}, ...], "head": "classification", "num_labels": 2,
                               "seq_len": 40, "batches": [1, 32], "threads": 1, "repeats": 20,
                               "min_seconds": 0.25}'

Before JAX loads, the process pins itself to `threads` of its CPUs and, for
one thread, turns off XLA's multi-threaded CPU kernels; then it measures
each batch size of each architecture with `nas.cost.measure_latency` (with
"arch_batches", one list of batch sizes per architecture, each at its own)
and prints one JSON line: [{"<batch>": [median_ms, p95_ms], ...}, ...], one
entry per architecture (a request with a single "arch" prints that entry
alone). One child measures many architectures, so the search pays JAX's
start once per batch of measurements, not once per student. XLA sizes its
CPU thread pools when the backend starts, so a thread count cannot be set
for one call in a process that is already running JAX (a search trial,
which trains on all CPUs).
"""

from __future__ import annotations

import json
import os
import sys


def pin(threads: int, *, cpu_only: bool = True) -> None:
    """Run this process (and the XLA backend it starts later) on `threads` CPUs; `cpu_only`: JAX on the CPU
    even where an accelerator is (latency on the serving CPU)."""
    if hasattr(os, "sched_setaffinity"):
        cpus = sorted(os.sched_getaffinity(0))[:threads]
        os.sched_setaffinity(0, cpus)
    if threads == 1:
        flags = os.environ.get("XLA_FLAGS", "")
        os.environ["XLA_FLAGS"] = f"{flags} --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1".strip()
    if cpu_only:
        os.environ["JAX_PLATFORMS"] = "cpu"


def main(argv: list[str]) -> None:
    request = json.loads(argv[0])
    pin(int(request["threads"]))
    from distill.arch import BertArch
    from distill.model.bert import build_model
    from nas.cost import measure_latency, timing_params

    def measured(spec: dict, batches: list[int]) -> dict:
        arch = BertArch.from_dict(spec)
        params = timing_params(build_model(arch, request["head"], request["num_labels"]))  # one set, every batch
        return {
            str(b): measure_latency(arch, request["head"], request["num_labels"], request["seq_len"], b,
                                    repeats=request["repeats"], min_seconds=request["min_seconds"],
                                    quantize=request.get("quantize"), params=params)
            for b in batches
        }

    if "archs" in request:
        batches = request.get("arch_batches") or [request["batches"]] * len(request["archs"])
        print(json.dumps([measured(a, b) for a, b in zip(request["archs"], batches)]), flush=True)
    else:
        print(json.dumps(measured(request["arch"], request["batches"])), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
