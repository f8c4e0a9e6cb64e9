"""CI's guard: with BERTNAS_REQUIRE_TORCH=1 (set by `.ci/run`) the PyTorch comparisons cannot be skipped.

torch is hidden from a child pytest in two ways. A `torch` package on PYTHONPATH that raises
ModuleNotFoundError when imported: each comparison that would be skipped fails instead, both kinds (a
module that calls `pytest.importorskip("torch")` at import, and a `torch`-marked test that calls it in its
body). And torch not installed at all (`sys.modules["torch"] = None` from a sitecustomize): the session
stops before any test, as tests that only branch on torch (the bench's) would otherwise pass quietly.
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


def _pytest(hide: Path, require: str, tests: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hide), str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "BERTNAS_REQUIRE_TORCH": require}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfEs",
                           "--continue-on-collection-errors", *tests],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def _broken_torch(tmp_path: Path) -> Path:
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "__init__.py").write_text('raise ModuleNotFoundError("torch hidden by the drill", name="torch")\n')
    return tmp_path


@pytest.mark.parametrize("require", ["", "1"])
def test_a_skipped_comparison_fails_only_when_required(tmp_path, require):
    r = _pytest(_broken_torch(tmp_path), require, TESTS)
    out = r.stdout + r.stderr
    if not require:
        assert r.returncode == 0, out[-3000:]
        assert "2 skipped" in out and "failed" not in out, out[-3000:]
    else:
        assert r.returncode == 1, out[-3000:]
        assert "BERTNAS_REQUIRE_TORCH is set but the PyTorch comparison module" in out, out[-3000:]
        assert "BERTNAS_REQUIRE_TORCH is set but the PyTorch comparison tests/distill/model/test_sharing.py" in out
        assert "passed" not in out


def test_no_torch_at_all_stops_the_session(tmp_path):
    (tmp_path / "sitecustomize.py").write_text('import sys\nsys.modules["torch"] = None  # not installed\n')
    r = _pytest(tmp_path, "1", ["tests/test_subprocess_timeouts.py"])
    assert r.returncode == 4, (r.stdout + r.stderr)[-3000:]  # pytest's usage error
    assert "BERTNAS_REQUIRE_TORCH is set but torch is not installed" in r.stderr
    assert _pytest(tmp_path, "", ["tests/test_subprocess_timeouts.py"]).returncode == 0
