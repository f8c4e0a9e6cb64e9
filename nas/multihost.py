"""Teacher fine-tuning, distillation and supernet training across processes with Ray Train's `JaxTrainer`: one
worker per host (or several CPU processes on one machine), each feeding its rows of every global batch
(`distill.train.multihost`).

`run_on_workers(cfg, output, workers)` runs `distill.run.finetune` (a `FinetuneConfig`), `distill.run.distill`
(a `DistillConfig`) or `distill.run.train_supernet` (a `SupernetConfig`) in `workers` Ray Train workers and
returns rank 0's results; the run's files are rank 0's, in `output`. On GPUs and TPUs (`use_gpu` /
`use_tpu`) Ray's `JaxConfig` initialises `jax.distributed`; on CPUs each worker does, from its rank and the
address rank 0 broadcasts. The run cache is not used across processes (every process must train, and label
its teacher's outputs; a teacher that is not fine-tuned yet is fine-tuned again), the compilation cache is;
importance scores are rank 0's in every process (`distill.train.multihost.rank_zero_values`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import ray
import ray.train
from ray.train import RunConfig, ScalingConfig
from ray.train.collective import broadcast_from_rank_zero
from ray.train.v2.jax import JaxConfig, JaxTrainer

from distill.run import RUNS, DistillConfig, FinetuneConfig, SupernetConfig, free_address, run_process
from nas.tune import ray_kwargs, start_ray, worker_host_env

ROOT = Path(__file__).resolve().parents[1]


def _worker(config: dict) -> None:
    """One Ray Train worker: its part of the run (joining `jax.distributed` itself on CPUs)."""
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    on_cpu = not (config["use_gpu"] or config["use_tpu"])
    coordinator = broadcast_from_rank_zero(free_address() if rank == 0 else None) if on_cpu else None
    run_process(config["cfg"], config["output"], rank=rank, world=world, coordinator=coordinator,
                resume=config["resume"])


def run_on_workers(cfg: FinetuneConfig | DistillConfig | SupernetConfig, output: str | Path, workers: int, *,
                   use_gpu: bool = False, use_tpu: bool = False, resume: bool = False) -> dict:
    """Fine-tune, distil or train a supernet (`cfg`'s type) across `workers` Ray Train workers (local Ray
    unless $RAY_ADDRESS); rank 0's results."""
    if type(cfg) not in RUNS:  # before Ray starts
        raise TypeError(f"run_on_workers: one of {', '.join(c.__name__ for c in RUNS)}, not {type(cfg).__name__}")
    output = Path(output).absolute()
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    if not (use_gpu or use_tpu):
        env.update(JAX_PLATFORMS="cpu", **worker_host_env(False))
    started = not ray.is_initialized()
    if started:  # a local Ray bound to 127.0.0.1, as a search's (`nas.tune.ray_kwargs`), or the cluster's
        cpus = None if os.environ.get("RAY_ADDRESS") else max(workers, os.cpu_count() or 1)
        start_ray(ray_kwargs(None, env, num_cpus=cpus, log_to_driver=True))
    storage = tempfile.mkdtemp(prefix="bertnas-ray-train-")
    try:
        trainer = JaxTrainer(
            _worker,
            train_loop_config={"cfg": cfg, "output": str(output), "resume": resume, "use_gpu": use_gpu,
                               "use_tpu": use_tpu},
            jax_config=JaxConfig(use_tpu=use_tpu, use_gpu=use_gpu),
            scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu, use_tpu=use_tpu,
                                         resources_per_worker=None if (use_gpu or use_tpu) else {"CPU": 1}),
            run_config=RunConfig(name=RUNS[type(cfg)].__name__, storage_path=storage),
        )
        trainer.fit()
    finally:
        shutil.rmtree(storage, ignore_errors=True)
        if started:
            ray.shutdown()
    return json.loads((output / "results.json").read_text())
