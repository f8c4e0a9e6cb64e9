"""Child process of test_data_parallel.py: runs on as many (virtual CPU) devices as XLA_FLAGS gives it.

  python data_parallel_worker.py compare ROOT   fine-tune, distil and train a supernet on 1 and on 4 devices,
                                                in ROOT
  python data_parallel_worker.py resume ROOT    resume, on this process's devices, the fine-tunes that
                                                `compare` checkpointed on 4 devices (replicated, FSDP)

Prints one JSON line (the last line of stdout) for the test to read.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[3])]  # the repository root
sys.path.append(str(Path(__file__).resolve().parents[2]))  # tests/, for helpers (after it: tests/distill is no package)

import jax  # noqa: E402
import numpy as np  # noqa: E402
from helpers import write_sst2, write_tiny_teacher  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402

from distill.kd.objective import LossConfig  # noqa: E402
from distill.kd.supernet import SubnetChoices  # noqa: E402
from distill.model.sharding import data_parallel  # noqa: E402
from distill.run.config import DistillConfig, FinetuneConfig, SupernetConfig  # noqa: E402
from distill.run.distillation import distill  # noqa: E402
from distill.run.finetuning import finetune  # noqa: E402
from distill.run.supernet import train_supernet  # noqa: E402
from distill.train.loop import LoopConfig  # noqa: E402
from distill.train.optim import OptimizerConfig  # noqa: E402

STEPS = 20  # 160 training sentences / batch 16 = 10 steps per epoch, 2 epochs


def train_losses(out: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {r["step"]: r["train_loss"] for r in records if "train_loss" in r}


def weights_gap(a: Path, b: Path) -> float:
    """The largest relative difference between two exports' tensors: max |a - b| / max(max |a|, 0.01) per
    tensor (the floor for the attention keys' biases, whose gradient is zero in exact arithmetic: they stay
    near 1e-9, pure rounding)."""
    ta, tb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert ta.keys() == tb.keys()
    return max(float(np.abs(ta[k] - tb[k]).max() / max(np.abs(ta[k]).max(), 0.01)) for k in ta)


def loop(devices: int, fsdp: bool = False) -> LoopConfig:
    return LoopConfig(epochs=2, batch_size=16, log_every=1, checkpoint_every=10, devices=devices, fsdp=fsdp)


def finetune_config(root: Path, devices: int, fsdp: bool = False) -> FinetuneConfig:
    return FinetuneConfig(task="sst2", teacher=str(root / "raw"), data_dir=str(root / "data"),
                          optimizer=OptimizerConfig(learning_rate=3e-3), loop=loop(devices, fsdp))


def fsdp_split() -> dict:
    """How `--fsdp` lays out a kernel (split) and a bias of an odd size (replicated) over 4 devices."""
    dp = data_parallel(16, 4, fsdp=True)
    placed = dp.place_state({"kernel": np.zeros((36, 108), np.float32), "bias": np.zeros((37,), np.float32)})
    return {name: a.sharding.is_fully_replicated for name, a in placed.items()}


def compare(root: Path) -> dict:
    write_sst2(root / "data", n_train=160, n_dev=24)
    write_tiny_teacher(root / "raw")
    out = {"device_count": jax.device_count()}
    for n in (1, 4):
        r = finetune(finetune_config(root, n), root / f"finetune-{n}", use_cache=False)
        out[f"finetune_{n}"] = {"losses": train_losses(root / f"finetune-{n}"), "best": r["best"],
                                "devices": r["devices"], "mesh": r["mesh"], "precision": r["precision"]}
    out["finetune_weights_gap"] = weights_gap(root / "finetune-1" / "teacher", root / "finetune-4" / "teacher")
    r = finetune(finetune_config(root, 4, fsdp=True), root / "finetune-fsdp", use_cache=False)
    out["finetune_fsdp"] = {"losses": train_losses(root / "finetune-fsdp"), "fsdp": r["fsdp"],
                            "weights_gap": weights_gap(root / "finetune-1" / "teacher", root / "finetune-fsdp" / "teacher"),
                            "replicated": fsdp_split()}
    teacher = root / "finetune-1" / "teacher"
    for n in (1, 4):
        cfg = DistillConfig(task="sst2", teacher=str(teacher), student="2L-24-H3-F30-D8", data_dir=str(root / "data"),
                            optimizer=OptimizerConfig(learning_rate=3e-3), loop=loop(n),
                            loss=LossConfig(hard_weight=0.5, hidden_weight=1.0))
        r = distill(cfg, root / f"distill-{n}")
        out[f"distill_{n}"] = {"losses": train_losses(root / f"distill-{n}"), "best": r["best"],
                               "devices": r["devices"]}
    out["distill_weights_gap"] = weights_gap(root / "distill-1" / "export", root / "distill-4" / "export")
    out.update(supernets(root, teacher))
    return out


def supernets(root: Path, teacher: Path) -> dict:
    """The sandwich rule on 1 and on 4 devices: every step's sub-networks trained on the whole batch, split."""
    out, dirs = {}, {}
    for n in (1, 4):
        cfg = SupernetConfig(task="sst2", teacher=str(teacher), data_dir=str(root / "data"),
                             choices=SubnetChoices(layers=(1, 2), hidden=(24, 36), heads=(1, 3), ffn=(7, 37)),
                             optimizer=OptimizerConfig(learning_rate=3e-3), loop=loop(n))
        r = train_supernet(cfg, root / f"supernet-{n}", use_cache=False)
        out[f"supernet_{n}"] = {"losses": train_losses(root / f"supernet-{n}"), "best": r["best"],
                                "devices": r["devices"], "mesh": r["mesh"]}
        dirs[n] = Path(r["supernet_dir"])
    out["supernet_weights_gap"] = weights_gap(dirs[1], dirs[4])
    return out


def resume(root: Path) -> dict:
    """Resume `finetune-4` (saved on 4 devices, state replicated) and `finetune-fsdp` (state split over the
    4 devices) from their step-10 checkpoints, here."""
    out = {"device_count": jax.device_count()}
    for name, fsdp in (("finetune-4", False), ("finetune-fsdp", True)):
        run = root / f"resumed-{name}"
        shutil.copytree(root / name, run)
        shutil.rmtree(run / "checkpoints" / str(STEPS))
        (run / "results.json").unlink()
        r = finetune(finetune_config(root, 0, fsdp), run, use_cache=False, resume=True)
        out[name] = {"losses": train_losses(run), "best": r["best"], "history": r["history"],
                     "devices": r["devices"]}
    return out


if __name__ == "__main__":
    os.environ.setdefault("BERTNAS_CACHE", str(Path(sys.argv[2]) / "cache"))
    result = {"compare": compare, "resume": resume}[sys.argv[1]](Path(sys.argv[2]))
    print(json.dumps(result))
