"""A fine-tuning run killed with SIGKILL resumes with --resume and finishes like an uninterrupted run."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import write_sst2, write_tiny_teacher

REPO = Path(__file__).resolve().parents[3]


def _cmd(teacher, data, out, *extra):
    return [
        sys.executable,
        str(REPO / "scripts" / "finetune_teacher.py"),
        "--task", "sst2",
        "--teacher", str(teacher),
        "--data-dir", str(data),
        "--output", str(out),
        "--epochs", "3",
        "--batch-size", "8",
        "--lr", "1e-3",
        "--checkpoint-every", "5",
        "--no-cache",
        *extra,
    ]


def _steps_logged(out: Path) -> list[int]:
    f = out / "metrics.jsonl"
    if not f.is_file():
        return []
    return [json.loads(line)["step"] for line in f.read_text().splitlines() if line.strip()]


@pytest.mark.slow
def test_sigkill_then_resume_finishes_and_matches(tmp_path):
    teacher = write_tiny_teacher(tmp_path / "teacher", max_position_embeddings=128)
    data = write_sst2(tmp_path / "data", n_train=160, n_dev=32)
    out = tmp_path / "run"

    proc = subprocess.Popen(_cmd(teacher, data, out), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    ckpts = out / "checkpoints"
    deadline = time.time() + 240
    # Kill once at least one checkpoint is complete and training is under way.
    while time.time() < deadline and proc.poll() is None:
        done = [p for p in ckpts.iterdir() if p.name.isdigit()] if ckpts.is_dir() else []
        if done:
            break
        time.sleep(0.05)
    assert proc.poll() is None, f"run finished before it could be killed:\n{proc.stdout.read().decode()[-2000:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "results.json").exists()

    # Without --resume the same output directory is refused, and nothing is lost.
    refused = subprocess.run(_cmd(teacher, data, out), capture_output=True, text=True)
    assert refused.returncode == 2
    assert "--resume" in refused.stderr.strip().splitlines()[-1]
    assert ckpts.is_dir() and any(ckpts.iterdir())

    resumed = subprocess.run(_cmd(teacher, data, out, "--resume"), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["steps"] == 3 * 20  # 160 examples / batch 8 per epoch, 3 epochs

    # The uninterrupted run gives the same final model: same data order and learning rate.
    ref_out = tmp_path / "ref"
    ref = subprocess.run(_cmd(teacher, data, ref_out), capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr[-3000:]
    ref_results = json.loads((ref_out / "results.json").read_text())
    assert ref_results["steps"] == results["steps"]
    final = [h for h in results["history"] if h["step"] == results["steps"]][0]
    ref_final = [h for h in ref_results["history"] if h["step"] == ref_results["steps"]][0]
    assert final["accuracy"] == ref_final["accuracy"]
    assert results["best"]["accuracy"] == ref_results["best"]["accuracy"]
