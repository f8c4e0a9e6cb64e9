"""A fine-tuning run killed with SIGKILL resumes with --resume and finishes like an uninterrupted run.

"Like" means the same final weights (to 1e-6) and the same training loss at every step, at a learning
rate where the tiny teacher learns the task (dev accuracy >= 0.9), so a resume that skipped, repeated or
reordered a step, or restored the wrong optimizer state, shows. Packed batches (`--packing on`, the default
on one CPU device) make each epoch as many steps as its packing makes; `--packing off` runs the bucketed
batches' exact 3 x 20 steps.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from helpers import write_sst2, write_tiny_teacher

from distill.model.store import load_bert
from distill.train.checkpoint import Checkpointer

REPO = Path(__file__).resolve().parents[3]
STEPS = 3 * 20  # 160 examples / batch 8 per epoch, 3 epochs (bucketed batches)
TIMEOUT = 300  # seconds for any one run

# `scripts/finetune_teacher.py` with a training loss logged at every step (the CLI logs every 50).
CHILD = """
import dataclasses, sys
from distill import cli
cli.setup_logging()  # before an import configures logging first
import distill.run.finetuning as ft
_fit = ft.fit
ft.fit = lambda state, steps, data, loop, *a, **k: _fit(state, steps, data, dataclasses.replace(loop, log_every=1),
                                                        *a, **k)
from nas.cli import main
main(["finetune", *sys.argv[1:]])
"""


def _cmd(teacher, data, out, *extra):
    return [
        sys.executable, "-c", CHILD,
        "--task", "sst2",
        "--teacher", str(teacher),
        "--data-dir", str(data),
        "--output", str(out),
        "--epochs", "3",
        "--batch-size", "8",
        "--lr", "3e-3",
        "--checkpoint-every", "5",
        "--no-cache",
        *extra,
    ]


def _run(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(*args, cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT, **kw)


def _losses(out: Path) -> dict[int, float]:
    """{step: training loss}, the last one logged for each step (a resumed run logs its replayed steps again)."""
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {r["step"]: r["train_loss"] for r in records if "train_loss" in r}


def _final_params(out: Path, steps: int) -> dict[str, np.ndarray]:
    like = load_bert(out / "teacher").params
    ckpt = Checkpointer(out / "checkpoints")
    try:
        assert ckpt.latest_step() == steps
        params = ckpt.restore_params(steps, like)
    finally:
        ckpt.close()
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(params)}


@pytest.mark.slow
@pytest.mark.parametrize("packing", ["on", "off"])
def test_sigkill_then_resume_finishes_and_matches(tmp_path, packing):
    teacher = write_tiny_teacher(tmp_path / "teacher", max_position_embeddings=128)
    data = write_sst2(tmp_path / "data", n_train=160, n_dev=32)
    out = tmp_path / "run"
    cmd = lambda *a: _cmd(teacher, data, *a, "--packing", packing, "--devices", "1")  # noqa: E731

    proc = subprocess.Popen(cmd(out), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    ckpts = out / "checkpoints"
    try:
        deadline = time.time() + TIMEOUT
        # Kill once at least one checkpoint is complete and training is under way.
        while time.time() < deadline and proc.poll() is None:
            done = [p for p in ckpts.iterdir() if p.name.isdigit()] if ckpts.is_dir() else []
            if done:
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"run finished before it could be killed:\n{proc.stdout.read().decode()[-2000:]}"
        assert time.time() < deadline, "no checkpoint in time"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    assert not (out / "results.json").exists()
    killed_at = max(_losses(out), default=0)

    # Without --resume the same output directory is refused, and nothing is lost.
    refused = _run(cmd(out))
    assert refused.returncode == 2
    assert "--resume" in refused.stderr.strip().splitlines()[-1]
    assert ckpts.is_dir() and any(ckpts.iterdir())

    resumed = _run(cmd(out, "--resume"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr
    results = json.loads((out / "results.json").read_text())
    steps = results["steps"]
    assert killed_at < steps
    assert results["packing"] is (packing == "on")
    if packing == "off":
        assert steps == STEPS
    else:  # about 8 sentences a step: each epoch's packing makes about 20 steps
        assert 0.7 * STEPS <= steps <= 1.3 * STEPS

    # The uninterrupted run: same data order and learning rate, and the tiny teacher learns the task.
    ref_out = tmp_path / "ref"
    ref = _run(cmd(ref_out))
    assert ref.returncode == 0, ref.stderr[-3000:]
    ref_results = json.loads((ref_out / "results.json").read_text())
    assert ref_results["steps"] == results["steps"]
    assert ref_results["best"]["accuracy"] >= 0.9, ref_results["history"]

    # Every step's loss, before the kill and after the resume, is the uninterrupted run's.
    losses, ref_losses = _losses(out), _losses(ref_out)
    assert sorted(ref_losses) == list(range(1, steps + 1))
    assert sorted(losses) == sorted(ref_losses)
    # it learns: the last 10 steps' loss is under 0.7x the first 10's (measured 0.56-0.58, in bf16 where
    # `--precision auto` picks it, and fp32)
    assert np.mean([ref_losses[s] for s in range(steps - 9, steps + 1)]) < 0.7 * np.mean([ref_losses[s] for s in range(1, 11)])
    for step in ref_losses:
        assert losses[step] == pytest.approx(ref_losses[step], rel=1e-6, abs=1e-6), f"training loss at step {step}"

    # The final weights (the step-60 checkpoint) and the saved best teacher are the uninterrupted run's.
    final, ref_final = _final_params(out, steps), _final_params(ref_out, steps)
    assert final.keys() == ref_final.keys()
    for name in ref_final:
        np.testing.assert_allclose(final[name], ref_final[name], rtol=0, atol=1e-6, err_msg=name)
    best, ref_best = (load_bert(d / "teacher").params for d in (out, ref_out))
    for (path, a), (_, b) in zip(jax.tree_util.tree_leaves_with_path(best), jax.tree_util.tree_leaves_with_path(ref_best)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-6, err_msg=jax.tree_util.keystr(path))
    assert [h["accuracy"] for h in results["history"]] == [h["accuracy"] for h in ref_results["history"]]
    assert (results["best"]["step"], results["best"]["accuracy"]) == (ref_results["best"]["step"],
                                                                      ref_results["best"]["accuracy"])
