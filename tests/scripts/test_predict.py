"""scripts/predict.py and distill.run.predict_lines on saved models of every task kind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jax
import pytest
from helpers import make_tokenizer

from distill.arch import BertArch
from distill.model.bert import build_model, init_params
from distill.model.store import save_bert
from distill.run.prediction import predict_lines
from tasks.errors import UserError
from tasks.registry import get_task

REPO = Path(__file__).resolve().parents[2]


def _saved(tmp_path, task_name: str) -> Path:
    task = get_task(task_name)
    tok = make_tokenizer(tmp_path / "vocab")
    arch = BertArch.uniform(2, 36, 3, 37, vocab_size=len(tok), max_position_embeddings=task.max_length)
    params = init_params(build_model(arch, task.kind, task.num_labels), jax.random.key(0))
    return save_bert(
        tmp_path / task_name, arch, params, tok, head=task.kind, labels=task.labels, extra={"task": task.name}
    )


def test_classification_lines_give_labels_and_probabilities(tmp_path):
    model = _saved(tmp_path, "sst2")
    out = predict_lines(model, ["a great movie", "", "a dull movie"])
    assert [r["line"] for r in out] == [1, 3]  # blank lines skipped, numbering kept
    for r in out:
        assert r["label"] in ("0", "1")
        assert set(r["probabilities"]) == {"0", "1"}
        assert sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
        assert r["label"] == max(r["probabilities"], key=r["probabilities"].get)


def test_pairs_tagging_and_span(tmp_path):
    stsb = predict_lines(_saved(tmp_path, "stsb"), ["a man plays\ta man sings"])
    assert isinstance(stsb[0]["score"], float)
    ner = predict_lines(_saved(tmp_path, "conll2003"), ["Peter lives in Paris"])
    assert ner[0]["words"] == ["Peter", "lives", "in", "Paris"]
    assert len(ner[0]["tags"]) == 4 and set(ner[0]["tags"]) <= set(get_task("conll2003").labels)
    squad = predict_lines(_saved(tmp_path, "squad"), ["who lives in paris ?\tpeter lives in paris ."])
    assert isinstance(squad[0]["answer"], str)
    assert squad[0]["answer"] in "peter lives in paris ."


def test_wrong_fields_name_the_line(tmp_path):
    with pytest.raises(UserError, match=r"input:2: .*pairs"):
        predict_lines(_saved(tmp_path, "stsb"), ["a\tb", "only one sentence"])
    with pytest.raises(UserError, match="no input lines"):
        predict_lines(_saved(tmp_path, "sst2"), ["", "  "])


def test_cli_reads_stdin_and_prints_json_lines(tmp_path):
    model = _saved(tmp_path, "sst2")
    run = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "predict.py"), "--model", str(model)],
        input="a great movie\na dull movie\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    records = [json.loads(line) for line in run.stdout.splitlines()]
    assert [r["text"] for r in records] == ["a great movie", "a dull movie"]
    missing = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "predict.py"), "--model", str(model), "--input", str(tmp_path / "nope.txt")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert missing.returncode == 2 and "nope.txt" in missing.stderr and "Traceback" not in missing.stderr
