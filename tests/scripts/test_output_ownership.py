"""The tools never write into, or delete, what they did not create (issue drills, as subprocesses): a
saved model's folder as --output, quantize --overwrite over the source's parent, two runs on one output,
a full disk while checkpointing, and a bug that reaches the command line (exit 70, its traceback in a log)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import write_sst2, write_task_teacher, write_tiny_teacher

from distill import cli
from distill.files import RUN_LOCK, RUN_MARKER
from distill.train.loop import DivergedError

REPO = Path(__file__).resolve().parents[2]
ENOSPC_AFTER = """
import errno, sys
from orbax.checkpoint._src.handlers import json_checkpoint_handler as handler
save = handler.JsonCheckpointHandler._save_fn
async def full_disk(self, item, directory):  # the writer of the checkpoint's JSON item, from step N on
    if item.get("step", 0) >= int(sys.argv[1]):
        raise OSError(errno.ENOSPC, "No space left on device", str(directory))
    return await save(self, item, directory)
handler.JsonCheckpointHandler._save_fn = full_disk
from nas.cli import main
main(sys.argv[2:])
"""


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("owned")
    return {"data": write_sst2(root / "data", n_train=40, n_dev=8), "teacher": write_tiny_teacher(root / "teacher"),
            "model": write_task_teacher(root / "model", "sst2")}


def child_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("GLUE_DIR", "CONLL_DIR", "SQUAD_DIR", "RAY_ADDRESS")}
    return {**env, "JAX_PLATFORMS": "cpu", "BERTNAS_CACHE": str(tmp_path / "cache")}


def bertnas(tmp_path: Path, *args: str, code: str | None = None, timeout: int = 180) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", "nas.cli", *args]
    return subprocess.run(cmd, cwd=REPO, env=child_env(tmp_path), capture_output=True, text=True, timeout=timeout)


def error_line(proc: subprocess.CompletedProcess, code: int = 2) -> str:
    assert proc.returncode == code, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and proc.stderr.strip().splitlines()[-1] == errors[0], proc.stderr[-3000:]
    return errors[0]


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def copy_tree(src: Path, dest: Path) -> Path:
    dest.mkdir(parents=True)
    for f in src.iterdir():
        (dest / f.name).write_bytes(f.read_bytes())
    return dest


def test_distilling_into_a_saved_models_folder_is_refused(env, tmp_path):
    model = copy_tree(env["model"], tmp_path / "saved")
    before = snapshot(tmp_path)
    for extra in ([], ["--resume"]):
        line = error_line(bertnas(tmp_path, "distill", "--data-dir", str(env["data"]), "--teacher", str(env["model"]),
                                  "--student", "1L-36-H3", "--output", str(model), *extra))
        assert f"--output {model}: holds files that no bertnas run wrote" in line
    line = error_line(bertnas(tmp_path, "finetune", "--data-dir", str(env["data"]), "--teacher", str(env["teacher"]),
                              "--output", str(model / "config.json")))
    assert "exists and is not a directory" in line
    assert snapshot(tmp_path) == before


def test_quantize_overwrite_never_deletes_the_source_or_what_it_did_not_write(env, tmp_path):
    exports = tmp_path / "runs"
    src = copy_tree(env["model"], exports / "export")
    (exports / "notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    for out in (exports, src, src / "int8"):
        line = error_line(bertnas(tmp_path, "quantize", "--model", str(src), "--output", str(out), "--overwrite"))
        assert "is, holds or lies inside the source model" in line
    other = tmp_path / "other"
    other.mkdir()
    (other / "data.csv").write_text("a,b\n")
    line = error_line(bertnas(tmp_path, "quantize", "--model", str(src), "--output", str(other), "--overwrite"))
    assert "files an export does not write (data.csv)" in line
    assert snapshot(tmp_path) == {**before, "other/data.csv": b"a,b\n"}
    int8 = tmp_path / "int8"
    for _ in range(2):  # an export of ours is replaced
        done = bertnas(tmp_path, "quantize", "--model", str(src), "--output", str(int8), "--overwrite")
        assert done.returncode == 0, done.stderr[-2000:]
    assert snapshot(exports) == {k[len("runs/"):]: v for k, v in before.items() if k.startswith("runs/")}


def test_a_second_run_on_the_same_output_is_refused_while_the_first_runs(env, tmp_path):
    out = tmp_path / "run"
    args = ["finetune", "--data-dir", str(env["data"]), "--teacher", str(env["teacher"]), "--output", str(out),
            "--epochs", "100000", "--batch-size", "4", "--no-cache"]
    first = subprocess.Popen([sys.executable, "-m", "nas.cli", *args], cwd=REPO, env=child_env(tmp_path),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not (out / "config.json").is_file() and time.time() < deadline:
            time.sleep(0.2)
        assert (out / RUN_MARKER).is_file() and (out / RUN_LOCK).read_text() == str(first.pid)
        line = error_line(bertnas(tmp_path, *args, "--resume"))
        assert f"another bertnas process (pid {first.pid}) is writing to it" in line
        line = error_line(bertnas(tmp_path, *args))  # without --resume: the lock speaks first
        assert f"another bertnas process (pid {first.pid}) is writing to it" in line
    finally:
        first.kill()
        first.wait(timeout=30)


@pytest.mark.slow  # two short fine-tuning runs
def test_a_full_disk_while_checkpointing_is_one_line_and_resumable(env, tmp_path):
    out = tmp_path / "run"
    args = ["finetune", "--data-dir", str(env["data"]), "--teacher", str(env["teacher"]), "--output", str(out),
            "--max-steps", "12", "--checkpoint-every", "3", "--batch-size", "8", "--no-cache"]
    line = error_line(bertnas(tmp_path, "6", *args, code=ENOSPC_AFTER))
    assert f"{out / 'checkpoints'}: cannot write checkpoints: No space left on device" in line
    assert "the last complete checkpoint (step 5) is intact" in line and "--resume" in line
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["3", "5"]  # no temporary left behind
    done = bertnas(tmp_path, *args, "--resume")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed from" in done.stderr and (out / "teacher" / "model.safetensors").is_file()
    assert "12" in {p.name for p in (out / "checkpoints").iterdir()}


def test_a_diverged_run_and_an_out_of_memory_are_one_line_exit_2(capsys):
    def diverged():
        raise DivergedError("non-finite loss at step 3; lower the learning rate")

    def device_oom():
        raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 17179869184 bytes.")

    for fn, text in [(diverged, "error: non-finite loss at step 3"), (device_oom, "error: out of device memory")]:
        with pytest.raises(SystemExit) as stop:
            cli.run(fn)
        assert stop.value.code == 2
        assert capsys.readouterr().err.strip().startswith(text)


def test_a_bug_is_one_line_naming_its_log_and_exit_70(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BERTNAS_CACHE", str(tmp_path))

    def buggy():
        return {}["missing"]

    with pytest.raises(SystemExit) as stop:
        cli.run(buggy)
    assert stop.value.code == cli.BUG_EXIT == 70
    line = capsys.readouterr().err.strip()
    assert line.startswith("error: internal error (KeyError: 'missing'); this is a bug in bertnas") and "\n" not in line
    log = Path(line.rsplit("the traceback is in ", 1)[1])
    assert log.parent == tmp_path / "crashes" and "Traceback" in log.read_text() and "buggy" in log.read_text()
