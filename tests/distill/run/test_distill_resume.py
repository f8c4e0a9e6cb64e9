"""A distillation run killed with SIGKILL resumes with --resume and ends with the same student as an uninterrupted run
(its moving average of the weights, which the export holds, included)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import write_sst2, write_task_teacher

from distill.export.load import load_export

REPO = Path(__file__).resolve().parents[3]
TIMEOUT = 300  # seconds for any one run


def _cmd(teacher, data, out, *extra):
    return [
        sys.executable, str(REPO / "scripts" / "distill_student.py"),
        "--task", "sst2", "--teacher", str(teacher), "--data-dir", str(data), "--output", str(out),
        "--student", "2L-24-H3-F30-D8", "--epochs", "3", "--batch-size", "8", "--lr", "1e-3",
        "--hard-weight", "0.5", "--hidden-weight", "1", "--checkpoint-every", "5", "--eval-every", "10",
        "--packing", "on", "--devices", "1", "--ema", "0.9", *extra,
    ]


@pytest.mark.slow
def test_sigkill_then_resume_gives_the_same_student(tmp_path):
    teacher = write_task_teacher(tmp_path / "teacher", "sst2")
    data = write_sst2(tmp_path / "data", n_train=160, n_dev=32)
    out = tmp_path / "run"

    proc = subprocess.Popen(_cmd(teacher, data, out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpts = out / "checkpoints"
    deadline = time.time() + TIMEOUT
    try:
        # Kill once a checkpoint is complete and training goes on (maybe in the middle of the next save).
        while time.time() < deadline and proc.poll() is None:
            if ckpts.is_dir() and [p for p in ckpts.iterdir() if p.name.isdigit()]:
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"run finished before it could be killed:\n{proc.stderr.read().decode()[-2000:]}"
        assert time.time() < deadline, "no checkpoint in time"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    assert not (out / "results.json").exists()

    refused = subprocess.run(_cmd(teacher, data, out), capture_output=True, text=True, timeout=TIMEOUT)
    assert refused.returncode == 2
    assert "--resume" in refused.stderr.strip().splitlines()[-1]

    resumed = subprocess.run(_cmd(teacher, data, out, "--resume"), capture_output=True, text=True, timeout=TIMEOUT)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["steps"] == json.loads((out / "config.json").read_text())["total_steps"]
    assert results["packing"] and 0.7 * 3 * 20 <= results["steps"] <= 1.3 * 3 * 20  # packed: ~8 sentences a step

    ref_out = tmp_path / "ref"
    ref = subprocess.run(_cmd(teacher, data, ref_out), capture_output=True, text=True, timeout=TIMEOUT)
    assert ref.returncode == 0, ref.stderr[-3000:]
    ref_results = json.loads((ref_out / "results.json").read_text())
    assert [h["accuracy"] for h in results["history"]][-3:] == [h["accuracy"] for h in ref_results["history"]][-3:]
    assert results["best"]["step"] == ref_results["best"]["step"]

    # Same data order and learning rate: the exported best students are identical.
    a, b = load_export(out / "export"), load_export(ref_out / "export")
    for x, y in zip(*(sorted(_flat(m.params).items()) for m in (a, b))):
        assert x[0] == y[0]
        np.testing.assert_allclose(x[1], y[1], rtol=0, atol=1e-6, err_msg=x[0])


def _flat(tree, prefix=""):
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}/"))
        else:
            out[prefix + k] = np.asarray(v)
    return out
