"""Run directories are owned (`distill.files.owned_output`): claimed for one tool and one process, refused
when they hold anything else, given back when a run fails before writing; shared writers never collide."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from distill import files
from distill.files import RUN_LOCK, RUN_MARKER, owned_output, publish, write_json
from tasks.errors import UserError

REPO = Path(__file__).resolve().parents[2]


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_claim_creates_marks_and_locks_the_directory(tmp_path):
    out = tmp_path / "runs" / "a"
    with owned_output(out, "distill") as got:
        assert got == out and json.loads((out / RUN_MARKER).read_text())["tool"] == "distill"
        assert (out / RUN_LOCK).read_text() == str(os.getpid())
        with pytest.raises(UserError, match=f"{out}: another bertnas process \\(pid {os.getpid()}\\) is writing"):
            with owned_output(out, "distill", resume=True):
                pass
        (out / "results.json").write_text("{}")
    with pytest.raises(UserError, match="holds an earlier distill run \\(results.json\\); pass --resume"):
        with owned_output(out, "distill"):
            pass
    with owned_output(out, "distill", resume=True):  # its own run, resumed
        pass
    with pytest.raises(UserError, match="holds a bertnas distill run, not a search run"):
        with owned_output(out, "search", resume=True):
            pass


def test_a_run_from_before_markers_is_resumed_not_overwritten(tmp_path):
    old = tmp_path / "old"
    (old / "checkpoints" / "40").mkdir(parents=True)
    (old / "config.json").write_text("{}")
    (old / "metrics.jsonl").write_text("")  # the run log of every training tool
    before = snapshot(old)
    with pytest.raises(UserError, match="holds files that no bertnas run wrote"):
        with owned_output(old, "distill"):
            pass
    with pytest.raises(UserError, match="holds files that no bertnas run wrote"):  # not a search
        with owned_output(old, "search", resume=True):
            pass
    assert snapshot(old) == before and not (old / RUN_MARKER).exists()
    with owned_output(old, "distill", resume=True):
        pass
    assert json.loads((old / RUN_MARKER).read_text())["tool"] == "distill"  # marked from now on


def test_what_is_not_ours_is_refused_and_left_as_it_was(tmp_path):
    model = tmp_path / "model"  # e.g. a saved model's folder
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "bert"}')
    (model / "model.safetensors").write_bytes(b"weights")
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    before = snapshot(tmp_path)
    for path, text in [(model, "holds files that no bertnas run wrote \\(config.json, model.safetensors\\)"),
                       (a_file, "exists and is not a directory")]:
        for resume in (False, True):
            with pytest.raises(UserError, match=text):
                with owned_output(path, "distill", resume=resume):
                    pass
    with pytest.raises(UserError, match="'..' is not allowed"):
        with owned_output(tmp_path / "x" / ".." / "model", "distill"):
            pass
    assert snapshot(tmp_path) == before


def test_a_run_that_fails_before_writing_leaves_nothing(tmp_path):
    nested = tmp_path / "a" / "b" / "run"
    with pytest.raises(UserError, match="bad flag"):
        with owned_output(nested, "finetune"):
            raise UserError("bad flag")
    assert not (tmp_path / "a").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(KeyboardInterrupt):
        with owned_output(empty, "finetune"):
            raise KeyboardInterrupt
    assert empty.is_dir() and not any(empty.iterdir())
    with pytest.raises(UserError):  # a run that wrote something keeps it (resumable)
        with owned_output(tmp_path / "kept", "finetune"):
            (tmp_path / "kept" / "config.json").write_text("{}")
            raise UserError("later")
    assert (tmp_path / "kept" / "config.json").is_file()


def test_the_lock_dies_with_its_process(tmp_path):
    out = tmp_path / "run"
    code = (f"from distill.files import owned_output\nimport time\nwith owned_output({str(out)!r}, 'finetune'):\n"
            f"    print('held', flush=True)\n    time.sleep(120)\n")
    child = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match=f"another bertnas process \\(pid {child.pid}\\)"):
            with owned_output(out, "finetune", resume=True):
                pass
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    with owned_output(out, "finetune", resume=True):  # released by the kernel with the process
        pass


def test_write_json_never_shares_a_temporary_and_a_full_disk_is_one_line(tmp_path, monkeypatch):
    path = tmp_path / "results.json"
    errors = []

    def writer(i):
        try:
            for j in range(50):
                write_json(path, {"writer": i, "n": j, "pad": "x" * 5000})
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and json.loads(path.read_text())["n"] == 49
    before = path.read_bytes()

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "replace", full)
    with pytest.raises(UserError, match=f"{path}: cannot write: No space left on device; free some space"):
        write_json(path, {"new": 1})
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_two_identical_runs_publish_one_cache_entry(tmp_path):
    runs = []
    for i in range(2):
        run = tmp_path / f"run{i}"
        (run / "teacher").mkdir(parents=True)
        (run / "teacher" / "model.safetensors").write_bytes(b"w" * 100_000)
        (run / "config.json").write_text("{}")
        (run / "results.json").write_text(json.dumps({"run": i}))
        runs.append(run)
    cached = tmp_path / "cache" / "sst2-key"
    threads = [threading.Thread(target=publish, args=(run, cached, "teacher")) for run in runs for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(p.name for p in cached.parent.iterdir()) == ["sst2-key"]  # no temporary left
    assert (cached / "teacher" / "model.safetensors").stat().st_size == 100_000
    assert cached.stat().st_mode & 0o777 == 0o755  # readable as a plain directory is, not private
    assert json.loads((cached / "results.json").read_text())["run"] in (0, 1)
