"""bench/accelerator.py: the skip path without an accelerator, and a tiny forced run on CPU."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import accelerator  # noqa: E402

cpu_only = pytest.mark.skipif(jax.default_backend() != "cpu", reason="would run the full bench on an accelerator")


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    """main() sets this for its children; monkeypatch puts the old value back."""
    monkeypatch.setenv("XLA_PYTHON_CLIENT_PREALLOCATE", "false")


@cpu_only
def test_skips_on_cpu(tmp_path, capsys):
    out = tmp_path / "acc.json"
    assert accelerator.main(["--out", str(out)]) == 0
    assert "skipped" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["backend"] == "cpu" and "no GPU or TPU" in result["skipped"]


DATA = ROOT.parent / "shared" / "data"
FOUR = "--xla_force_host_platform_device_count=4"
# Compile fast (the children inherit it): the timings mean nothing here.
FAST = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def _bench(argv: list[str], tmp_path, xla_flags: str = FOUR) -> subprocess.CompletedProcess:
    """bench/accelerator.py in a process of its own that sees four CPU devices (the flag is read when JAX
    starts, so not in this one)."""
    env = {**os.environ, "XLA_FLAGS": f"{xla_flags} {FAST}", "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
           "BERTNAS_CACHE": str(tmp_path / "cache")}
    return subprocess.run([sys.executable, str(ROOT / "bench" / "accelerator.py"), *argv], env=env,
                          capture_output=True, text=True, timeout=600)


@cpu_only
@pytest.mark.slow  # about 35 s on 2 cores: five child processes, small compiles
@pytest.mark.skipif(not (DATA / "glue" / "SST-2" / "train.tsv").is_file(), reason=f"shared data not found at {DATA}")
def test_quick_forced_run_writes_every_case(tmp_path):
    out = tmp_path / "results" / "acc.json"
    argv = ["--quick", "--force", "--out", str(out), "--dtypes", "bfloat16", "--train-batches", "3",
            "--infer-batches", "1", "--no-variants", "--label-limit", "40", "--data-root", str(DATA)]
    run = _bench(argv, tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(out.read_text())

    assert result["device"]["backend"] == "cpu" and result["device"]["forced"] and result["device"]["count"] == 4
    assert set(result["peak"]["measured_tflops"]) == {"bfloat16"}
    assert result["peak"]["nominal_tflops"] == {}  # a CPU has no nominal peak, so no MFU
    assert all(c["returncode"] == 0 for c in result["children"])
    ours = {r["key"]: r for r in result["rows"] if r["side"] == "ours" and r["mode"] != "peak"}
    assert sorted(ours) == [
        "infer/base/b1/bfloat16",
        "infer/student/b1/bfloat16",
        "infer/teacher/b1/bfloat16",
        "infer/teacher/b4/bfloat16/d4",  # the data-parallel cases: each device the one-device batch
        "train/base/b12/bfloat16/d4",
        "train/base/b3/bfloat16",
    ]
    arch = accelerator.arch_for("base", quick=True)
    assert ours["train/base/b3/bfloat16"]["model_flops_per_step"] == 3 * 3 * arch.flops(7, "classification", 2)
    assert ours["train/base/b12/bfloat16/d4"]["model_flops_per_step"] == 4 * 3 * 3 * arch.flops(7, "classification", 2)
    for row in ours.values():
        assert row["step_s"] > 0 and row["examples_per_s"] == pytest.approx(row["batch"] / row["step_s"])
        assert row["mfu"] is None and row["mfu_measured"] > 0
    one, four = ours["train/base/b3/bfloat16"], ours["train/base/b12/bfloat16/d4"]
    assert four["mfu_measured"] == pytest.approx(four["tflops"] / 4 / result["peak"]["measured_tflops"]["bfloat16"])
    scaling = {s["key"]: s for s in result["scaling"]}
    assert set(scaling) == {"train/base/b12/bfloat16/d4", "infer/teacher/b4/bfloat16/d4"}
    assert scaling["train/base/b12/bfloat16/d4"]["efficiency"] == pytest.approx(
        four["examples_per_s"] / (4 * one["examples_per_s"]))
    single = {k for k, r in ours.items() if r["devices"] == 1}
    ratios = {c["key"]: c["ratio"] for c in result["comparison"]}
    assert set(ratios) == single  # PyTorch has no data-parallel twin
    label = result["label"]
    assert label["task"] == "sst2" and label["weights"] == "trained" and label["sentences"] == 40
    assert label["ours"]["examples"] == 40 and label["ours"]["examples_per_s"] > 0
    if importlib.util.find_spec("torch") is None:
        assert any("torch is not installed" in m for m in result["messages"])
    else:
        assert all(r > 0 for r in ratios.values()) and label["ratio"] > 0
        assert {r["key"] for r in result["rows"] if r["side"] == "torch"} == single
    assert all(s["efficiency"] > 0 for s in scaling.values())
    assert "labelling sst2 train (40 sentences" in run.stdout and "on 4 devices" in run.stdout
    assert label["torch_side"]["side"] == "torch" or "skipped" in label["torch"]


@cpu_only
def test_devices_beyond_the_machine_are_refused(tmp_path):
    out = tmp_path / "acc.json"
    run = _bench(["--quick", "--force", "--devices", "5", "--out", str(out)], tmp_path)
    assert run.returncode == 2 and run.stderr.strip() == "--devices: 5 asked for, this machine has 4"
    assert not out.exists()


@cpu_only
def test_a_teacher_without_weights_gets_random_ones_of_its_shape(tmp_path):
    """The labelling case on a machine without the teacher's weights: its config and tokenizer suffice."""
    from bench.common import speed_model_dir
    from distill.model.store import load_bert, read_arch, resolve_model_dir

    src = resolve_model_dir("minilm")
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(src / f, bare / f)
    assert speed_model_dir("minilm", tmp_path) == (src, "trained")
    path, weights = speed_model_dir(str(bare), tmp_path / "made")
    assert weights == "random" and read_arch(path) == read_arch(src)
    loaded = load_bert(path, head="classification", num_labels=2)
    assert len(loaded.tokenizer) == len(load_bert(src).tokenizer)


def test_nominal_peaks_by_device_kind():
    assert accelerator.nominal_peaks("NVIDIA H100 80GB HBM3") == {"bfloat16": 989.4, "float32": 494.7}
    assert accelerator.nominal_peaks("NVIDIA H100 PCIe")["bfloat16"] == 756.5
    assert accelerator.nominal_peaks("NVIDIA H200")["bfloat16"] == 989.4
    assert accelerator.nominal_peaks("cpu") == {}
