"""bench/accelerator.py: the skip path without an accelerator, and a tiny forced run on CPU."""

from __future__ import annotations

import importlib.util
import json
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


@cpu_only
@pytest.mark.slow  # about 10-20 s on 2 cores: two child processes, four small compiles
def test_quick_forced_run_writes_every_case(tmp_path, monkeypatch):
    # Compile fast (the children inherit it): the timings mean nothing here.
    monkeypatch.setenv("XLA_FLAGS", "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true")
    out = tmp_path / "results" / "acc.json"
    argv = ["--quick", "--force", "--out", str(out), "--dtypes", "bfloat16", "--train-batches", "3"]
    assert accelerator.main(argv + ["--infer-batches", "1", "--no-variants"]) == 0
    result = json.loads(out.read_text())

    assert result["device"]["backend"] == "cpu" and result["device"]["forced"]
    assert set(result["peak"]["measured_tflops"]) == {"bfloat16"}
    assert result["peak"]["nominal_tflops"] == {}  # a CPU has no nominal peak, so no MFU
    assert all(c["returncode"] == 0 for c in result["children"])
    ours = {r["key"]: r for r in result["rows"] if r["side"] == "ours" and r["mode"] != "peak"}
    assert sorted(ours) == [
        "infer/base/b1/bfloat16",
        "infer/student/b1/bfloat16",
        "infer/teacher/b1/bfloat16",
        "train/base/b3/bfloat16",
    ]
    train = ours["train/base/b3/bfloat16"]
    arch = accelerator.arch_for("base", quick=True)
    assert train["model_flops_per_step"] == 3 * 3 * arch.flops(7, "classification", 2)
    for row in ours.values():
        assert row["step_s"] > 0 and row["examples_per_s"] == pytest.approx(row["batch"] / row["step_s"])
        assert row["mfu"] is None and row["mfu_measured"] > 0
    ratios = {c["key"]: c["ratio"] for c in result["comparison"]}
    assert set(ratios) == set(ours)
    if importlib.util.find_spec("torch") is None:
        assert any("torch is not installed" in m for m in result["messages"])
    else:
        assert all(r > 0 for r in ratios.values())
        assert {r["key"] for r in result["rows"] if r["side"] == "torch"} == set(ours)


def test_nominal_peaks_by_device_kind():
    assert accelerator.nominal_peaks("NVIDIA H100 80GB HBM3") == {"bfloat16": 989.4, "float32": 494.7}
    assert accelerator.nominal_peaks("NVIDIA H100 PCIe")["bfloat16"] == 756.5
    assert accelerator.nominal_peaks("NVIDIA H200")["bfloat16"] == 989.4
    assert accelerator.nominal_peaks("cpu") == {}
