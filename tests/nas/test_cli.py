"""The `bertnas` command: its console script, its subcommands, and a start that loads no JAX."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest

import nas.cli

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = ("finetune", "distill", "supernet", "search", "evaluate", "predict", "quantize", "export")


def _python(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_the_console_script_is_nas_cli_main():
    (ep,) = [e for e in importlib.metadata.entry_points(group="console_scripts") if e.name == "bertnas"]
    assert ep.load() is nas.cli.main


def test_every_subcommand_has_help_and_the_tools_flags():
    assert tuple(nas.cli.TOOLS) == COMMANDS
    done = _python("-m", "nas.cli", "--help")
    assert done.returncode == 0 and all(c in done.stdout for c in COMMANDS), done.stdout + done.stderr
    assert nas.cli.parse(["distill", "--output", "o", "--student", "2L-36"]).student == "2L-36"
    assert nas.cli.parse(["search", "--smoke-test"]).smoke_test
    assert nas.cli.parse(["supernet", "--output", "o", "--hidden", "24,36"]).hidden == "24,36"


def test_starting_the_command_loads_no_jax():
    """--help and flag errors answer at once: the tools import the library only inside their `main`."""
    heavy = "'jax', 'flax', 'ray', 'qwix', 'orbax', 'onnx', 'onnxruntime', 'jax2onnx'"
    code = f"import sys, nas.cli; print(sorted(m for m in ({heavy}) if m in sys.modules))"
    done = _python("-c", code)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr


@pytest.mark.parametrize("argv, text", [
    (["evaluate", "--model", "no/such/dir"], "no/such/dir"),
    (["distill", "--output", "o", "--batch-size", "x"], "argument --batch-size"),
    (["supernet", "--output", "o", "--hidden", "128,x"], "--hidden: expected comma-separated integers"),
    (["supernet", "--output", "o", "--num-sampled", "-1"], "argument --num-sampled"),
    (["search", "--strategy", "supernet", "--targets", "3,x"], "--targets: expected comma-separated speedups"),
])
def test_bad_input_is_one_line_and_exit_2(argv, text):
    done = _python("-m", "nas.cli", *argv)
    last = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 2 and "Traceback" not in done.stderr and text in last, done.stderr


def test_devices_and_attention_dropout_reach_the_run_configs():
    from distill.cli import loop_from_args
    from nas.cli import config

    search = config(nas.cli.parse(["search", "--attention-dropout", "off"]))
    assert search.attention_dropout is False
    assert config(nas.cli.parse(["search"])).attention_dropout is True  # auto: on, on this CPU
    args = nas.cli.parse(["distill", "--output", "o", "--student", "2L-36", "--devices", "1",
                          "--attention-dropout", "off"])
    loop = loop_from_args(args)
    assert loop.devices == 1 and loop.attention_dropout is False


def test_search_export_flags_reach_the_config_and_an_offline_push_fails_before_any_work(tmp_path):
    from nas.cli import config
    from nas.tune import base_distill_config

    cfg = config(nas.cli.parse(["search", "--export-onnx", "--hf-layout", "--push-to-hub", "me/front"]))
    assert (cfg.export_onnx, cfg.hf_layout, cfg.push_to_hub) == (True, True, "me/front")
    assert base_distill_config(cfg, None).hf_layout  # trials and finals write every layer
    plain = config(nas.cli.parse(["search"]))
    assert (plain.export_onnx, plain.hf_layout, plain.push_to_hub) == (False, False, None)
    done = subprocess.run(
        [sys.executable, "-m", "nas.cli", "search", "--push-to-hub", "me/front", "--output", str(tmp_path / "out")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "GLUE_DIR": str(ROOT.parent / "shared" / "data" / "glue")},
    )
    last = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 2 and "Traceback" not in done.stderr and "--push-to-hub me/front" in last, done.stderr
    assert "offline" in last and not (tmp_path / "out" / "teacher_finetune").exists()


@pytest.mark.parametrize("tool", ["finetune", "distill", "supernet"])
def test_workers_run_the_tools_config_as_ray_train_workers(tool, tmp_path, monkeypatch, capsys):
    """`--workers N` hands the tool's own run config to `nas.multihost.run_on_workers` (the run itself:
    `tests/distill/train/test_multihost.py`); the distill tool's steps after the run follow as in one process."""
    import nas.multihost

    seen = {}

    def fake(cfg, output, workers, **kw):
        seen.update(cfg=cfg, output=output, workers=workers, **kw)
        return {"best": {"accuracy": 1.0}, "teacher_dir": str(output), "task": cfg.task, "steps": 3}

    monkeypatch.setattr(nas.multihost, "run_on_workers", fake)
    argv = [tool, "--task", "sst2", "--output", str(tmp_path / "o"), "--workers", "2", "--workers-on", "cpu"]
    with pytest.raises(SystemExit) as done:
        nas.cli.main(argv)
    assert done.value.code == 0
    from distill.cli import distill as distill_tool
    from distill.cli import finetune as finetune_tool
    from distill.cli import supernet as supernet_tool

    tools = {"finetune": finetune_tool, "distill": distill_tool, "supernet": supernet_tool}
    expected = tools[tool].config(nas.cli.parse(argv))
    assert seen == {"cfg": expected, "output": str(tmp_path / "o"), "workers": 2, "resume": False, "use_gpu": False,
                    "use_tpu": False}
    assert seen["cfg"].loop.packing == "off"  # rows split over processes: never packed
    assert '"accuracy": 1.0' in capsys.readouterr().out


@pytest.mark.parametrize("tool", ["distill", "supernet"])
def test_a_tools_own_main_refuses_workers(tool, tmp_path):
    from distill.cli import distill as distill_tool
    from distill.cli import supernet as supernet_tool
    from tasks.errors import UserError

    args = nas.cli.parse([tool, "--task", "sst2", "--output", str(tmp_path / "o"), "--workers", "2"])
    with pytest.raises(UserError, match=f"--workers: run it through `bertnas {tool}`"):
        {"distill": distill_tool, "supernet": supernet_tool}[tool].main(args)
    assert not (tmp_path / "o").exists()


def test_a_run_across_workers_is_not_resumed(tmp_path):
    """Only rank 0 keeps checkpoints: `--resume` with `--workers` is one line, before any worker starts."""
    done = _python("-m", "nas.cli", "distill", "--task", "sst2", "--output", str(tmp_path / "o"), "--workers", "2",
                   "--resume")
    last = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 2 and "Traceback" not in done.stderr and "--resume" in last, done.stderr
