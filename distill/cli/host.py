"""The host the tools run on: its CPU as runs record it (`cpu_info`), and its memory allocator in the tools'
processes (keep freed memory for the next train step).

Imports nothing of ours.

Every figure a search takes (training steps in its budget, batch-1 latencies, so the speedups its targets pick
by) depends on the CPU: the same command gave a 5x student 7,042 training steps on a 2-core AMD EPYC (Zen 5)
and 3,110 on a 2-core Intel Xeon (session 26 and 25). `cpu_info()` is what a search's results.json and the
benchmarks record of it.

XLA:CPU allocates each execution's buffers anew (one block for all of a train step's temporaries: about
200 MB for the teacher at batch 32) through glibc's `posix_memalign`, from the worker thread that runs it.
glibc serves a block that large from `mmap` (always, in a thread's own arena), and the next step's block is
a fresh mapping whose every page the kernel faults in again: 50,000 page faults a step, 208 million in a
12-minute SST-2 fine-tuning on 2 cores, a quarter of its CPU time spent in the kernel. With one arena,
no `mmap` and no trimming, a step's block comes back from the heap the last step freed: the teacher's
train step went from 165 to 137 ms (2-core Xeon, bf16, packed SST-2 rows).

`retain_freed_memory()` sets that with `mallopt` in this process; it must run before JAX starts its
threads (glibc fixes the arena limit once threads have created arenas), which the `bertnas` command
does first thing. `RETAIN_FREED_MEMORY_ENV` is the same as environment variables, which glibc reads when a
process starts: the search's Ray workers get them. The cost is resident memory: the process keeps its
peak heap until it exits (at most `TRIM_THRESHOLD` of free memory at the heap's top is handed back).
Other C libraries (musl, macOS) are left as they are.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path

CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_int8", "amx_tile")
"""The CPU features `cpu_info` reports: the vector and matrix extensions that decide which kernels XLA and
PyTorch run."""
CPUINFO = Path("/proc/cpuinfo")


def cpu_flags(text: str | None = None) -> set[str]:
    """The CPU's feature flags (Linux's /proc/cpuinfo, or its `text`; empty elsewhere)."""
    return _cpuinfo(text)[1]


def cpu_info(text: str | None = None) -> dict:
    """The CPU's model name (None where unknown), the `CPU_FLAGS` it has, and the CPUs this process may run
    on (`cpu_threads`): what a run records of its host. `text`: /proc/cpuinfo's, read when None."""
    model, flags = _cpuinfo(text)
    return {"model": model, "flags": [f for f in CPU_FLAGS if f in flags], "threads": cpu_threads()}


def cpu_threads() -> int:
    """CPUs this process may run on (what XLA's CPU client uses by default)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _cpuinfo(text: str | None) -> tuple[str | None, set[str]]:
    """The first processor's model name and flags in /proc/cpuinfo's `text` (read when None)."""
    if text is None:
        try:
            text = CPUINFO.read_text()
        except OSError:
            return None, set()
    model, flags = None, None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and model is None:
            model = value.strip() or None
        elif key.strip() == "flags" and flags is None:
            flags = set(value.split())
        if model is not None and flags is not None:
            break
    return model, flags or set()

M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8  # glibc's malloc.h
TRIM_THRESHOLD = 2**31 - 1
"""Free memory at the top of the heap beyond which glibc hands it back (its largest setting, 2 GiB)."""

RETAIN_FREED_MEMORY_ENV = {
    "MALLOC_ARENA_MAX": "1",
    "MALLOC_MMAP_MAX_": "0",
    "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD),
}


def retain_freed_memory_env(environ=os.environ) -> dict[str, str]:
    """`RETAIN_FREED_MEMORY_ENV` for a child process, or nothing where `environ` (the user's) sets any of
    its variables: the user's malloc settings win."""
    if any(name in environ for name in RETAIN_FREED_MEMORY_ENV):
        return {}
    return dict(RETAIN_FREED_MEMORY_ENV)


def retain_freed_memory(environ=os.environ) -> bool:
    """Set glibc's malloc to one arena, no `mmap` and no trimming below `TRIM_THRESHOLD` in this process;
    True if all three took. False where the C library is not glibc or where `environ` (the user's) sets
    any of `RETAIN_FREED_MEMORY_ENV`'s variables (glibc has read those, and they win): nothing changed."""
    if not retain_freed_memory_env(environ):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    settings = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return all(mallopt(option, value) == 1 for option, value in settings)
