"""Top-level test setup: `tests/` on sys.path (for `from helpers import ...`) and a private cache per test."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Point $BERTNAS_CACHE at a fresh directory so no test reads or fills the user's cache."""
    monkeypatch.setenv("BERTNAS_CACHE", str(tmp_path_factory.mktemp("bertnas_cache")))
