"""One training process of several (`jax.distributed`): one per host, or several on one CPU.

`initialize(rank, world, coordinator)` joins process `rank` of `world` to the
run coordinated at `coordinator` (host:port, served by rank 0), with CPU
collectives (gloo) so that CPU processes can sum across each other too.
Ray Train's `JaxConfig` does this itself on GPUs and TPUs; `nas.multihost`
calls it on CPUs.

After it, `distill.model.sharding.data_parallel` builds its mesh over every
process's devices: each process runs the same `fit` on the same data order and
places only its own rows of each global batch, the parameters replicated, so
the N processes compute what one process does. Each process evaluates and
checkpoints its own copy; only rank 0's output directory is the run's
(`output_dir`): the others write to scratch directories that their caller
removes.
"""

from __future__ import annotations

import socket
import tempfile
from pathlib import Path

import jax
import numpy as np
from jax.experimental import multihost_utils

CPU_COLLECTIVES = "gloo"


def initialize(rank: int, world: int, coordinator: str) -> None:
    """Join this process, `rank` of `world`, to the run that `coordinator` (rank 0's host:port) serves."""
    if jax.distributed.is_initialized():
        return
    jax.config.update("jax_cpu_collectives_implementation", CPU_COLLECTIVES)
    jax.distributed.initialize(coordinator, num_processes=world, process_id=rank)


def rank_zero_values(tree):
    """`tree` (host arrays) as process 0 holds it, in every process; `tree` itself in a one-process run. For
    what each process computes apart but must agree on exactly (importance scores decide the rewiring and the
    students' first weights, and GPUs need not reduce in the same order on every host)."""
    if jax.process_count() == 1:
        return tree
    return jax.tree.map(np.asarray, multihost_utils.broadcast_one_to_all(tree))


def shutdown() -> None:
    if jax.distributed.is_initialized():
        jax.distributed.shutdown()


def free_address() -> str:
    """host:port for rank 0 to coordinate on: this host's address and a port free now."""
    host = socket.gethostbyname(socket.gethostname())
    with socket.socket() as s:
        s.bind(("", 0))
        return f"{host}:{s.getsockname()[1]}"


def output_dir(output: str | Path, rank: int) -> Path:
    """Where process `rank` writes: the run's directory for rank 0, a fresh scratch directory for the others."""
    return Path(output) if rank == 0 else Path(tempfile.mkdtemp(prefix=f"bertnas-rank{rank}-"))
