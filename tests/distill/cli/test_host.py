"""`distill.cli.host`: with glibc keeping freed memory, a process that allocates the same large block
step after step (as XLA:CPU does for a train step's temporaries) stops faulting its pages in again; the CPU
record runs keep (`cpu_info`) is read from /proc/cpuinfo."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from distill.cli.host import cpu_flags, cpu_info, cpu_threads, retain_freed_memory

ROOT = Path(__file__).resolve().parents[3]

CHILD = """
import json, resource, sys
from distill.cli.host import cpu_flags, cpu_info, cpu_threads, retain_freed_memory
changed = retain_freed_memory() if sys.argv[1] == "retain" else False
import jax, jax.numpy as jnp
fill = jax.jit(lambda x: jnp.full((4096, 4096), x) * 2)  # a fresh 64 MiB result per call
fill(1.0).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for i in range(30):
    fill(float(i)).block_until_ready()  # the previous result is freed before the next is written
print(json.dumps({"changed": changed, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def _faults(mode: str) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, mode], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_retained_memory_is_not_faulted_in_again():
    plain, retained = _faults("plain"), _faults("retain")
    assert retained["changed"] and not plain["changed"]
    pages = 30 * 64 * 2**20 // 4096  # thirty 64 MiB blocks
    assert plain["faults"] > pages / 2  # each block mapped afresh (measured: about one fault per page)
    assert retained["faults"] < plain["faults"] / 5  # the heap grows to its peak once (measured: 1-3 blocks)


def test_the_users_own_malloc_settings_win():
    assert not retain_freed_memory(environ={"MALLOC_ARENA_MAX": "8"})


CPUINFO_TEXT = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9B45
flags\t\t: fpu sse2 avx2 fma avx512f avx512_bf16 avx512_vnni
bugs\t\t: sysret_ss_attrs

processor\t: 1
model name\t: some other name
flags\t\t: fpu amx_bf16
"""


def test_cpu_info_reads_the_first_processors_model_and_the_flags_that_pick_kernels():
    info = cpu_info(CPUINFO_TEXT)
    assert info["model"] == "AMD EPYC 9B45"
    assert info["flags"] == ["avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16"]  # CPU_FLAGS' order, none else
    assert info["threads"] == cpu_threads() >= 1
    assert cpu_flags(CPUINFO_TEXT) == {"fpu", "sse2", "avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni"}


def test_cpu_info_without_a_model_or_flags_says_so():
    assert cpu_info("processor\t: 0\n") == {"model": None, "flags": [], "threads": cpu_threads()}
    assert cpu_flags("") == set()
