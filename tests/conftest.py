"""Top-level test setup: `tests/` on sys.path (for `from helpers import ...`) and a private cache per test."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Point $BERTNAS_CACHE at a fresh directory so no test reads or fills the user's cache."""
    monkeypatch.setenv("BERTNAS_CACHE", str(tmp_path_factory.mktemp("bertnas_cache")))


@pytest.fixture(autouse=True)
def _allocator_left_alone(monkeypatch):
    """Tests that call `nas.cli.main` in this process leave glibc's settings as they are: JAX's threads run
    already, so `distill.cli.host.retain_freed_memory` would only keep the whole session's peak heap.
    (`tests/distill/cli/test_host.py` checks it in child processes.)"""
    monkeypatch.setattr("nas.cli.retain_freed_memory", lambda: False)


# --------------------------------------------------------------------------- PyTorch comparisons required
# CI (`.ci/run`) sets BERTNAS_REQUIRE_TORCH=1: a PyTorch comparison that would be skipped (torch or
# transformers missing) fails instead, so those tests cannot vanish as skips while the run stays green.
REQUIRE_TORCH = "BERTNAS_REQUIRE_TORCH"
_TORCH_SKIP = ("torch", "transformers")


def _torch_required() -> bool:
    return os.environ.get(REQUIRE_TORCH, "") not in ("", "0")


def _skip_reason(report) -> str:
    longrepr = report.longrepr
    return longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)


def _fail(report, what: str) -> None:
    report.outcome = "failed"
    report.longrepr = f"{REQUIRE_TORCH} is set but {what} was skipped: {_skip_reason(report)}"


def pytest_configure(config):
    """Fail at once when torch or transformers is not installed at all (tests that only branch on it, such as
    the bench's, would otherwise pass without comparing anything)."""
    if _torch_required():
        missing = [m for m in _TORCH_SKIP if importlib.util.find_spec(m) is None]
        if missing:
            raise pytest.UsageError(f"{REQUIRE_TORCH} is set but {' and '.join(missing)} is not installed")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if _torch_required() and report.skipped and item.get_closest_marker("torch") is not None:
        _fail(report, f"the PyTorch comparison {item.nodeid}")


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """A module skipped at import by `pytest.importorskip("torch")` (it holds only PyTorch comparisons)."""
    outcome = yield
    report = outcome.get_result()
    if _torch_required() and report.skipped and any(f"'{m}'" in _skip_reason(report) for m in _TORCH_SKIP):
        _fail(report, f"the PyTorch comparison module {collector.nodeid}")
