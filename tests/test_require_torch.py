"""CI's guard: with BERTNAS_REQUIRE_TORCH=1 (set by `.ci/run`) a PyTorch comparison that would be skipped fails.

torch is hidden from a child pytest by a `torch` package on PYTHONPATH that raises ModuleNotFoundError, so the
drill works whether or not torch is installed here. Both kinds of skip are covered: a module that calls
`pytest.importorskip("torch")` at import, and a `torch`-marked test that calls it in its body.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TESTS = [
    "tests/distill/model/test_torch_compat.py",  # skipped at collection
    "tests/distill/model/test_sharing.py::test_transformers_loads_the_hf_layout_export",  # skipped in the body
]


def _pytest(tmp_path: Path, require: str) -> subprocess.CompletedProcess:
    fake = tmp_path / "hide"
    (fake / "torch").mkdir(parents=True, exist_ok=True)
    (fake / "torch" / "__init__.py").write_text('raise ModuleNotFoundError("torch hidden by the drill", name="torch")\n')
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake), str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "BERTNAS_REQUIRE_TORCH": require}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfEs",
                           "--continue-on-collection-errors", *TESTS],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("require", ["", "1"])
def test_missing_torch_fails_only_when_required(tmp_path, require):
    r = _pytest(tmp_path, require)
    out = r.stdout + r.stderr
    if not require:
        assert r.returncode == 0, out[-3000:]
        assert "skipped" in out and "failed" not in out and "error" not in out.lower().split("warnings")[0]
    else:
        assert r.returncode == 1, out[-3000:]
        assert "BERTNAS_REQUIRE_TORCH is set but the PyTorch comparison module" in out, out[-3000:]
        assert "BERTNAS_REQUIRE_TORCH is set but the PyTorch comparison tests/distill/model/test_sharing.py" in out
        assert "passed" not in out
