"""A run as one process of several (`distill.train.multihost`): what each Ray Train worker runs.

`run_process(cfg, output, rank=, world=, coordinator=)` joins `jax.distributed` (when `coordinator` is given:
on CPUs; Ray's `JaxConfig` has joined it on GPUs and TPUs), runs the fine-tune (a `FinetuneConfig`), the
distillation (a `DistillConfig`) or the supernet training (a `SupernetConfig`) with the mesh over all
processes' devices, and leaves; rank 0 writes `output`, the others a scratch directory removed after. The
cache is not used: every process must train (and label) for the collectives to meet.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from distill.files import enable_compilation_cache
from distill.run.config import DistillConfig, FinetuneConfig, SupernetConfig
from distill.run.distillation import distill
from distill.run.finetuning import finetune
from distill.run.supernet import train_supernet
from distill.train import multihost
from distill.train.multihost import free_address

__all__ = ["RUNS", "free_address", "run_process"]

RUNS = {FinetuneConfig: finetune, DistillConfig: distill, SupernetConfig: train_supernet}
"""The run of each config type that can go across processes."""


def run_process(cfg: FinetuneConfig | DistillConfig | SupernetConfig, output: str | Path, *, rank: int, world: int,
                coordinator: str | None, resume: bool = False) -> dict | None:
    """Process `rank` of `world`'s part of the run; rank 0's results (None for the others)."""
    if type(cfg) not in RUNS:
        raise TypeError(f"run_process: one of {', '.join(c.__name__ for c in RUNS)}, not {type(cfg).__name__}")
    run = RUNS[type(cfg)]
    enable_compilation_cache()  # this worker's, under the same cache root: shapes compile once per machine
    if coordinator is not None:
        multihost.initialize(rank, world, coordinator)
    out = multihost.output_dir(output, rank)
    try:
        results = run(cfg, out, use_cache=False, resume=resume)
    finally:
        if rank:
            shutil.rmtree(out, ignore_errors=True)
        if coordinator is not None:
            multihost.shutdown()
    return results if rank == 0 else None
