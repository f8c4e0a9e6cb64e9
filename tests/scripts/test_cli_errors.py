"""`scripts/finetune_teacher.py` on bad input: one line `error: ...` naming the file, exit 2.

Each case runs the script as a subprocess and must fail while reading the data
or the teacher, before any training: the output directory is never created
(the run log that would create it comes after both).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import squad_doc, write_conll, write_squad, write_sst2, write_stsb, write_tiny_teacher, write_tsv

from distill.files import RUN_LOCK, RUN_MARKER

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "finetune_teacher.py"


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    return write_tiny_teacher(tmp_path_factory.mktemp("cli") / "teacher")


def run_script(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("GLUE_DIR", "CONLL_DIR", "SQUAD_DIR")}
    env["JAX_PLATFORMS"] = "cpu"
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )


# Each case: (tmp_path, teacher) -> (extra args, text the error line must contain).


def missing_data_dir(tmp, teacher):
    return ["--data-dir", str(tmp / "nowhere"), "--teacher", str(teacher)], [f"data directory {tmp / 'nowhere'}"]


def no_data_dir_and_no_env(tmp, teacher):
    return ["--teacher", str(teacher)], ["no data directory for task sst2", "--data-dir", "$GLUE_DIR"]


def missing_train_file(tmp, teacher):
    (tmp / "data").mkdir()
    write_tsv(tmp / "data" / "dev.tsv", ["sentence", "label"], [["a fun movie", "1"]])
    return ["--data-dir", str(tmp / "data"), "--teacher", str(teacher)], [f"{tmp / 'data' / 'train.tsv'}: file not found"]


def empty_train_file(tmp, teacher):
    write_sst2(tmp / "data", n_train=4, n_dev=4)
    (tmp / "data" / "train.tsv").write_text("")
    return ["--data-dir", str(tmp / "data"), "--teacher", str(teacher)], [f"{tmp / 'data' / 'train.tsv'}: file is empty"]


def malformed_tsv_row(tmp, teacher):
    write_sst2(tmp / "data", n_train=4, n_dev=4)
    train = tmp / "data" / "train.tsv"
    train.write_text("sentence\tlabel\na fun movie\t1\na row without a tab\na dull movie\t0\n")
    return ["--data-dir", str(tmp / "data"), "--teacher", str(teacher)], [f"{train}:3:", "tab-separated fields"]


def wrong_header(tmp, teacher):
    write_sst2(tmp / "data", n_train=4, n_dev=4)
    train = tmp / "data" / "train.tsv"
    train.write_text("text\tlabel\na fun movie\t1\n")
    return ["--data-dir", str(tmp / "data"), "--teacher", str(teacher)], [f"{train}:1:", "missing column 'sentence'"]


def label_outside_the_task(tmp, teacher):
    write_sst2(tmp / "data", n_train=4, n_dev=4)
    dev = tmp / "data" / "dev.tsv"
    dev.write_text("sentence\tlabel\na fun movie\t1\na great movie\t2\n")
    return ["--data-dir", str(tmp / "data"), "--teacher", str(teacher)], [f"{dev}:3:", "label '2'"]


def non_numeric_stsb_score(tmp, teacher):
    write_stsb(tmp / "data", n_train=4, n_dev=4)
    train = tmp / "data" / "train.tsv"
    lines = train.read_text().splitlines()
    lines[2] = lines[2].rsplit("\t", 1)[0] + "\thigh"
    train.write_text("\n".join(lines) + "\n")
    args = ["--task", "stsb", "--data-dir", str(tmp / "data"), "--teacher", str(teacher)]
    return args, [f"{train}:3:", "score 'high' is not a number"]


def unknown_task(tmp, teacher):
    return ["--task", "nope", "--teacher", str(teacher)], ["unknown task 'nope'", "sst2"]


def teacher_without_weights(tmp, teacher):
    write_sst2(tmp / "data", n_train=4, n_dev=4)
    bare = tmp / "bare"
    bare.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (bare / name).write_bytes((teacher / name).read_bytes())
    return ["--data-dir", str(tmp / "data"), "--teacher", str(bare)], [f"{bare}: no weights"]


def teacher_with_only_pytorch_bin(tmp, teacher):
    write_sst2(tmp / "data", n_train=4, n_dev=4)
    legacy = tmp / "legacy"
    legacy.mkdir()
    (legacy / "config.json").write_bytes((teacher / "config.json").read_bytes())
    (legacy / "pytorch_model.bin").write_bytes(b"not a pickle that we would ever open")
    return ["--data-dir", str(tmp / "data"), "--teacher", str(legacy)], [f"{legacy}: has pytorch_model.bin", "safetensors"]


def conll_wrong_field_count(tmp, teacher):
    write_conll(tmp / "data", n_train=3, n_dev=3)
    train = tmp / "data" / "train.txt"
    lines = train.read_text().splitlines()  # line 1 -DOCSTART-, line 2 blank, line 3 a token
    lines[3] = "Paris NNP I-LOC extra fields"
    train.write_text("\n".join(lines) + "\n")
    args = ["--task", "conll2003", "--data-dir", str(tmp / "data"), "--teacher", str(teacher)]
    return args, [f"{train}:4:", "found 5"]


def squad_answer_not_in_context(tmp, teacher):
    doc = squad_doc()
    doc["data"][0]["paragraphs"][0]["qas"][1]["answers"][0]["answer_start"] += 2
    write_squad(tmp / "data")
    (tmp / "data" / "train-v1.1.json").write_text(json.dumps(doc))
    args = ["--task", "squad", "--data-dir", str(tmp / "data"), "--teacher", str(teacher)]
    return args, [str(tmp / "data" / "train-v1.1.json"), "question q0-1: answer 'john' does not match the context"]


def crf_on_a_classification_task(tmp, teacher):
    write_sst2(tmp / "data", n_train=4, n_dev=4)
    return ["--crf", "--data-dir", str(tmp / "data"), "--teacher", str(teacher)], ["--crf: task sst2 is classification"]


def ner_tags_not_bio(tmp, teacher):
    (tmp / "data").mkdir()
    (tmp / "data" / "train.txt").write_text("张 B-PER\n三 E-PER\n\n", encoding="utf-8")
    (tmp / "data" / "dev.txt").write_text("张 B-PER\n\n", encoding="utf-8")
    args = ["--task", "ner", "--crf", "--data-dir", str(tmp / "data"), "--teacher", str(teacher)]
    return args, [f"{tmp / 'data' / 'train.txt'}:2:", "tag 'E-PER' is not IOB2"]


CASES = [
    missing_data_dir, no_data_dir_and_no_env, missing_train_file, empty_train_file, malformed_tsv_row,
    wrong_header, label_outside_the_task, non_numeric_stsb_score, unknown_task, teacher_without_weights,
    teacher_with_only_pytorch_bin, conll_wrong_field_count, squad_answer_not_in_context,
    crf_on_a_classification_task, ner_tags_not_bio,
]


@pytest.mark.parametrize("case", CASES, ids=lambda f: f.__name__)
def test_bad_input_gives_one_error_line_and_exit_2(case, teacher, tmp_path):
    args, expected = case(tmp_path, teacher)
    out = tmp_path / "run"
    proc = run_script(*args, "--output", str(out), "--epochs", "1")
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), last
    for text in expected:
        assert text in last, (text, last)
    assert proc.stdout == ""
    assert not out.exists()  # failed while reading, before the run log and any training


def test_a_failed_run_keeps_the_previous_teacher(teacher, tmp_path):
    """A resumed fine-tune of an earlier run that fails on its data leaves that run's files as they were."""
    out = tmp_path / "run"
    (out / "teacher").mkdir(parents=True)
    (out / "teacher" / "model.safetensors").write_bytes(b"previous weights")
    (out / "results.json").write_text('{"best": "before"}')
    (out / RUN_MARKER).write_text('{"tool": "finetune"}')
    args, expected = label_outside_the_task(tmp_path, teacher)
    proc = run_script(*args, "--output", str(out), "--resume")
    assert proc.returncode == 2 and expected[1] in proc.stderr
    assert (out / "teacher" / "model.safetensors").read_bytes() == b"previous weights"
    assert (out / "results.json").read_text() == '{"best": "before"}'
    assert sorted(p.name for p in out.iterdir()) == sorted([RUN_LOCK, RUN_MARKER, "results.json", "teacher"])
