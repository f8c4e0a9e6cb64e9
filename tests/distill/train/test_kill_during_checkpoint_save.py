"""SIGKILL in the middle of a checkpoint save: the previous step stays restorable and `--resume` finishes the run.

Orbax writes each step into a temporary directory and renames it into place
once complete. The run (teacher fine-tuning through its script) is started
with that commit held back for one step: its files are written, the rename
never comes. The test kills the run right then, checks that the last complete
step is what a restart sees, and resumes. (`test_finetune_resume.py` shows
that a resumed run ends with the same model as an uninterrupted one.)
"""

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

STALL = '''
"""Run a script (argv[3:]) with Orbax's commit of checkpoint step argv[2] held back; argv[1] marks the moment."""
import asyncio, runpy, sys
from pathlib import Path
from orbax.checkpoint._src.path import atomicity

marker, step, script, *args = sys.argv[1:]
finalize = atomicity.AtomicRenameTemporaryPath.finalize


async def held_back(self):
    if self.get_final().name == step:  # the step's files are in its temporary directory: stop before the rename
        Path(marker).write_text(str(self.get()))
        await asyncio.sleep(3600)
    await finalize(self)


atomicity.AtomicRenameTemporaryPath.finalize = held_back
sys.argv = [script, *args]
sys.path.insert(0, str(Path(script).parent))
runpy.run_path(script, run_name="__main__")
'''


def _args(teacher, data, out, *extra):
    return [
        str(REPO / "scripts" / "finetune_teacher.py"), "--task", "sst2", "--teacher", str(teacher),
        "--data-dir", str(data), "--output", str(out), "--epochs", "2", "--batch-size", "8", "--lr", "1e-3",
        "--checkpoint-every", "4", "--no-cache", "--packing", "off", *extra,  # bucketed: exactly 10 steps an epoch
    ]


@pytest.mark.slow
def test_kill_during_a_checkpoint_save_keeps_the_previous_step_and_resumes(tmp_path):
    teacher = write_tiny_teacher(tmp_path / "teacher", max_position_embeddings=128)
    data = write_sst2(tmp_path / "data", n_train=80, n_dev=16)  # 10 steps an epoch, 20 in all
    out, marker, stall = tmp_path / "run", tmp_path / "stalled", tmp_path / "stall.py"
    stall.write_text(STALL)
    ckpts = out / "checkpoints"

    proc = subprocess.Popen([sys.executable, str(stall), str(marker), "8", *_args(teacher, data, out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    try:
        while time.time() < deadline and proc.poll() is None and not marker.exists():
            time.sleep(0.05)
        assert proc.poll() is None, f"the run ended before its save of step 8:\n{proc.stderr.read().decode()[-3000:]}"
        assert marker.exists(), "the save of step 8 never started"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)

    # Killed mid-save: step 8 exists only as a temporary directory; step 4 is the last complete one.
    half = Path(marker.read_text())
    assert half.is_dir() and half.parent == ckpts and half.name.startswith("8.")
    assert not (ckpts / "8").exists() and (ckpts / "4").is_dir()
    assert not (out / "results.json").exists()

    from distill.train.checkpoint import Checkpointer

    ckpt = Checkpointer(ckpts)
    try:
        assert ckpt.latest_step() == 4 and ckpt.all_steps() == [4]
        assert ckpt.restore_meta(None)["step"] == 4
    finally:
        ckpt.close()

    resumed = subprocess.run([sys.executable, *_args(teacher, data, out, "--resume")], capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {ckpts} at step 4" in resumed.stderr  # steps 1-4 are not trained again
    results = json.loads((out / "results.json").read_text())
    assert results["steps"] == 20
    assert [h["step"] for h in results["history"]] == [10, 20]  # each evaluation once, none lost
    assert not [p.name for p in ckpts.iterdir() if "tmp" in p.name], "the half-written step is cleaned up"
    assert 20 in {int(p.name) for p in ckpts.iterdir() if p.name.isdigit()}
