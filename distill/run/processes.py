"""A fine-tune as one process of several (`distill.train.multihost`): what each Ray Train worker runs.

`finetune_process(cfg, output, rank=, world=, coordinator=)` joins `jax.distributed` (when `coordinator`
is given: on CPUs; Ray's `JaxConfig` has joined it on GPUs and TPUs), fine-tunes with the mesh over all
processes' devices, and leaves; rank 0 writes `output`, the others a scratch directory removed after.
The teacher cache is not used: every process must train for the collectives to meet.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from distill.run.config import FinetuneConfig
from distill.run.finetuning import finetune
from distill.train import multihost
from distill.train.multihost import free_address

__all__ = ["finetune_process", "free_address"]


def finetune_process(cfg: FinetuneConfig, output: str | Path, *, rank: int, world: int, coordinator: str | None,
                     resume: bool = False) -> dict | None:
    """Process `rank` of `world`'s part of the fine-tune; rank 0's results (None for the others)."""
    if coordinator is not None:
        multihost.initialize(rank, world, coordinator)
    out = multihost.output_dir(output, rank)
    try:
        results = finetune(cfg, out, use_cache=False, resume=resume)
    finally:
        if rank:
            shutil.rmtree(out, ignore_errors=True)
        if coordinator is not None:
            multihost.shutdown()
    return results if rank == 0 else None
