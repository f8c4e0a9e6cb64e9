"""Where the shared real data lives, for the tasks/ tests (../shared/data)."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
GLUE = SHARED_DATA / "glue"
CONLL = SHARED_DATA / "conll2003"

needs_data = pytest.mark.skipif(
    not (GLUE / "SST-2" / "dev.tsv").is_file(), reason=f"shared data not found at {SHARED_DATA}"
)
