"""Malformed files handed to every tool: one line `error: ...` naming the file (and line), exit 2.

Binary and undecodable data, a JSON file nested 100000 levels deep, config.json fields of the wrong
type, a weight index or a symlink that leads out of the model directory, a binary `--input` on a
file and on stdin. Each case runs a script as a subprocess and must fail before any heavy work:
the output directory it names is never created.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from helpers import write_sst2, write_task_teacher, write_tiny_teacher

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow  # 12 script runs, two at a time: about 40 s of CPU in all


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("malformed")
    return {
        "data": write_sst2(root / "data", n_train=20, n_dev=6),
        "teacher": write_tiny_teacher(root / "teacher"),
        "model": write_task_teacher(root / "model", "sst2"),
    }


def run_script(script: str, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("GLUE_DIR", "CONLL_DIR", "SQUAD_DIR", "RAY_ADDRESS")}
    env["JAX_PLATFORMS"] = "cpu"
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / script), *args],
        cwd=REPO, env=env, input=stdin if stdin is not None else b"", capture_output=True, timeout=120,
    )


def copy_model(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


def _shard_with(model: Path, name: str) -> Path:
    """Replace model.safetensors by an index whose only shard is `name` (the real weights moved there
    when `name` is inside); returns the index."""
    index = model / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": {"embeddings.word_embeddings.weight": name}}))
    (model / "model.safetensors").rename(model.parent / "outside.safetensors")
    return index


# Each case: (tmp, env) -> (script, args, stdin, texts the error line must contain, a path that must not appear).


def finetune_binary_train_file(tmp, env):
    data = Path(shutil.copytree(env["data"], tmp / "data"))
    (data / "train.tsv").write_bytes(b"sentence\tlabel\n" + bytes(range(256)) * 8)
    args = ["--data-dir", str(data), "--teacher", str(env["teacher"]), "--output", str(tmp / "out")]
    return "finetune_teacher.py", args, None, [f"{data / 'train.tsv'}: binary data (a NUL byte) at line 2"], tmp / "out"


def finetune_teacher_num_labels_two(tmp, env):
    bad = copy_model(env["teacher"], tmp / "teacher")
    cfg = json.loads((bad / "config.json").read_text())
    cfg.pop("bertnas")
    cfg.update(num_labels="two", architectures=["BertForSequenceClassification"])
    (bad / "config.json").write_text(json.dumps(cfg))
    args = ["--data-dir", str(env["data"]), "--teacher", str(bad), "--output", str(tmp / "out")]
    return "finetune_teacher.py", args, None, [f"{bad / 'config.json'}: num_labels: expected an integer"], tmp / "out"


def distill_student_file_nested_deep(tmp, env):
    student = tmp / "student.json"
    student.write_text("[" * 100_000 + "]" * 100_000)
    args = ["--data-dir", str(env["data"]), "--teacher", str(env["model"]), "--output", str(tmp / "out"),
            "--student", str(student)]
    return "distill_student.py", args, None, [f"{student}: malformed JSON: nested too deeply"], tmp / "out"


def distill_teacher_index_climbs_out(tmp, env):
    bad = copy_model(env["model"], tmp / "teacher")
    index = _shard_with(bad, "../outside.safetensors")
    args = ["--data-dir", str(env["data"]), "--teacher", str(bad), "--output", str(tmp / "out")]
    return "distill_student.py", args, None, [f"{index}: names '../outside.safetensors', outside"], tmp / "out"


def search_space_not_utf8(tmp, env):
    space = tmp / "space.yaml"
    space.write_bytes(b"layers: [1, 2]\nhidden: [\xe9]\n")
    args = ["--data-dir", str(env["data"]), "--teacher", str(env["model"]), "--output", str(tmp / "out"),
            "--space", str(space)]
    return "search.py", args, None, [f"{space}: not UTF-8 text at line 2"], tmp / "out"


def supernet_teacher_weights_absolute(tmp, env):
    bad = copy_model(env["model"], tmp / "teacher")
    outside = str(tmp / "outside.safetensors")
    index = _shard_with(bad, outside)
    args = ["--data-dir", str(env["data"]), "--teacher", str(bad), "--output", str(tmp / "out"),
            "--layers", "1,2", "--hidden", "36", "--heads", "3", "--ffn", "37"]  # a space the teacher holds
    return "train_supernet.py", args, None, [f"{index}: names {outside!r}, outside"], tmp / "out"


def evaluate_tokenizer_symlinked_out(tmp, env):
    bad = copy_model(env["model"], tmp / "export")
    (bad / "tokenizer.json").rename(tmp / "tokenizer.json")
    (bad / "tokenizer.json").symlink_to(tmp / "tokenizer.json")
    args = ["--model", str(bad), "--data-dir", str(env["data"])]
    return "evaluate.py", args, None, [f"{bad / 'tokenizer.json'}: 'tokenizer.json' leads to", "outside"], None


def evaluate_weight_map_not_an_object(tmp, env):
    bad = copy_model(env["model"], tmp / "export")
    (bad / "model.safetensors").unlink()
    index = bad / "model.safetensors.index.json"
    index.write_text('{"weight_map": ["model.safetensors"]}')
    args = ["--model", str(bad), "--data-dir", str(env["data"])]
    return "evaluate.py", args, None, [f"{index}: weight_map: expected an object"], None


def predict_binary_input(tmp, env):
    texts = tmp / "texts.bin"
    texts.write_bytes(b"a fun movie\n\x00\x00\x00\x00\n")
    args = ["--model", str(env["model"]), "--input", str(texts)]
    return "predict.py", args, None, [f"{texts}: binary data (a NUL byte) at line 2"], None


def predict_overlong_input_line(tmp, env):
    texts = tmp / "texts.txt"
    texts.write_bytes(b"a fun movie\n" + b"fun " * (3 << 18) + b"\n")
    args = ["--model", str(env["model"]), "--input", str(texts)]
    return "predict.py", args, None, [f"{texts}:2: line longer than 1048576 bytes"], None


def predict_stdin_not_utf8(tmp, env):
    return "predict.py", ["--model", str(env["model"])], b"a fun movie\n\xff dull\n", ["stdin: not UTF-8 text at line 2"], None


def quantize_config_nested_deep(tmp, env):
    bad = copy_model(env["model"], tmp / "model")
    (bad / "config.json").write_text('{"a": ' + "[" * 100_000)
    out = tmp / "int8"
    args = ["--model", str(bad), "--output", str(out)]
    return "quantize.py", args, None, [f"{bad / 'config.json'}: malformed JSON: nested too deeply"], out


CASES = [
    finetune_binary_train_file, finetune_teacher_num_labels_two, distill_student_file_nested_deep,
    distill_teacher_index_climbs_out, search_space_not_utf8, supernet_teacher_weights_absolute,
    evaluate_tokenizer_symlinked_out, evaluate_weight_map_not_an_object, predict_binary_input,
    predict_overlong_input_line, predict_stdin_not_utf8, quantize_config_nested_deep,
]


@pytest.fixture(scope="module")
def results(env, tmp_path_factory) -> dict:
    """Every case run once, two scripts at a time (each is mostly interpreter and import start-up)."""
    prepared = {case: case(tmp_path_factory.mktemp(case.__name__), env) for case in CASES}

    def run(case):
        script, args, stdin, _, _ = prepared[case]
        return run_script(script, *args, stdin=stdin)

    with ThreadPoolExecutor(max_workers=2) as pool:
        procs = dict(zip(CASES, pool.map(run, CASES)))
    return {case: (*prepared[case], procs[case]) for case in CASES}


@pytest.mark.parametrize("case", CASES, ids=lambda f: f.__name__)
def test_malformed_input_gives_one_error_line_and_exit_2(case, results):
    _, _, _, expected, must_not_exist, proc = results[case]
    stderr = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 2, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = stderr.strip().splitlines()
    assert [line for line in lines if line.startswith("error:")] == [lines[-1]], lines
    for text in expected:
        assert text in lines[-1], (text, lines[-1])
    assert proc.stdout == b""
    if must_not_exist is not None:
        assert not must_not_exist.exists(), f"{must_not_exist} was created"


def test_every_tool_is_drilled():
    names = {case.__name__.split("_")[0] for case in CASES}
    assert names == {"finetune", "distill", "search", "supernet", "evaluate", "predict", "quantize"}
