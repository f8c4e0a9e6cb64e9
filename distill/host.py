"""The host machine's CPU, as the tools' automatic settings read it: its feature flags (Linux's
/proc/cpuinfo) and the flags that mark fast bfloat16 matmuls. Imports nothing of ours."""

from __future__ import annotations

from pathlib import Path

BF16_CPU_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})
"""CPU flags under which `--precision auto` picks bf16: AMX (Intel Sapphire Rapids and later) or AVX512-BF16
(AMD Zen 4 and later, Intel Cooper Lake): XLA's bfloat16 matmuls with float32 results beat float32 there."""


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux's /proc/cpuinfo; empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((v for k, _, v in (ln.partition(":") for ln in text.splitlines()) if k.strip() == "flags"), "")
    return set(line.split())
