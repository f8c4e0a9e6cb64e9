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
from distill.run.prediction import predict_lines, predict_table
from tasks.errors import DataError, UserError
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


def _without_line_keys(records, *keys):
    return [{k: v for k, v in r.items() if k not in ("line", "text", *keys)} for r in records]


def test_a_table_gives_the_line_forms_predictions_by_the_tasks_columns(tmp_path):
    """CSV (GLUE's `sentence`), JSON lines (pairs, words as a list) and TSV (SQuAD's question/context): the
    same predictions as the same inputs given as lines, each record with the row's line and text columns."""
    sst2 = _saved(tmp_path, "sst2")
    (tmp_path / "in.csv").write_text('sentence,label\n"a great, witty movie",1\n\na dull movie,0\n')
    rows = predict_table(sst2, tmp_path / "in.csv")
    assert [(r["line"], r["sentence"]) for r in rows] == [(2, "a great, witty movie"), (4, "a dull movie")]
    assert _without_line_keys(rows, "sentence") == _without_line_keys(
        predict_lines(sst2, ["a great, witty movie", "a dull movie"]))

    stsb = _saved(tmp_path, "stsb")
    (tmp_path / "in.jsonl").write_text(json.dumps({"sentence1": "a man plays", "sentence2": "a man sings"}) + "\n")
    pair = predict_table(stsb, tmp_path / "in.jsonl")
    assert pair[0]["score"] == pytest.approx(predict_lines(stsb, ["a man plays\ta man sings"])[0]["score"], abs=1e-6)

    ner = _saved(tmp_path, "conll2003")
    (tmp_path / "ner.jsonl").write_text(json.dumps({"tokens": ["Peter", "lives", "in", "Paris"]}) + "\n"
                                        + json.dumps({"tokens": []}) + "\n")
    tagged = predict_table(ner, tmp_path / "ner.jsonl")
    assert len(tagged) == 1 and tagged[0]["words"] == ["Peter", "lives", "in", "Paris"]
    assert tagged[0]["tags"] == predict_lines(ner, ["Peter lives in Paris"])[0]["tags"]

    (tmp_path / "ner.csv").write_text("tokens\n张三在北京\n")  # text is split as a line is: CJK characters apart
    assert predict_table(ner, tmp_path / "ner.csv")[0]["words"] == ["张", "三", "在", "北", "京"]

    squad = _saved(tmp_path, "squad")
    (tmp_path / "qa.tsv").write_text("question\tcontext\nwho lives in paris ?\tpeter lives in paris .\n")
    assert predict_table(squad, tmp_path / "qa.tsv")[0]["answer"] == predict_lines(
        squad, ["who lives in paris ?\tpeter lives in paris ."])[0]["answer"]


def test_a_bad_table_names_the_file_and_line(tmp_path):
    sst2 = _saved(tmp_path, "sst2")
    (tmp_path / "nocol.csv").write_text("text\nfine\n")
    with pytest.raises(DataError, match=r"nocol.csv:1: missing column 'sentence'"):
        predict_table(sst2, tmp_path / "nocol.csv")
    (tmp_path / "num.jsonl").write_text('{"sentence": 3}\n')
    with pytest.raises(DataError, match=r"num.jsonl:1: column 'sentence' must hold text"):
        predict_table(sst2, tmp_path / "num.jsonl")
    (tmp_path / "mixed.jsonl").write_text('{"sentence": "fine"}\n{"sentence": 3}\n')
    with pytest.raises(DataError, match=r"mixed.jsonl:2: .*mixed types"):
        predict_table(sst2, tmp_path / "mixed.jsonl")
    (tmp_path / "empty.csv").write_text("sentence\n")
    with pytest.raises(DataError, match=r"empty.csv: no rows"):
        predict_table(sst2, tmp_path / "empty.csv")


def test_cli_reads_a_csv_by_its_suffix_and_its_columns(tmp_path):
    model = _saved(tmp_path, "sst2")
    (tmp_path / "reviews.csv").write_text("review,stars\nloved it,5\nhated it,1\n")
    run = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "predict.py"), "--model", str(model), "--input",
         str(tmp_path / "reviews.csv"), "--text-column", "review"],
        capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    records = [json.loads(line) for line in run.stdout.splitlines()]
    assert [(r["line"], r["review"]) for r in records] == [(2, "loved it"), (3, "hated it")]
    assert all(r["label"] in ("0", "1") for r in records)
