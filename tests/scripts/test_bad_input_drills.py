"""Bad input across the command-line tools: one line `error: ...` naming the file or flag, exit 2, no traceback.

`test_cli_errors.py` covers `finetune_teacher.py` on bad data and teachers;
this catalogue covers the other tools (distill, search, evaluate, predict) and
the output-path rule. Each case runs a script as a subprocess and must fail
before any heavy work: the output directory it names is never created.
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
pytestmark = pytest.mark.slow  # 38 script runs, about a minute of CPU in all (the first case waits for them)


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("drills")
    return {
        "data": write_sst2(root / "data", n_train=20, n_dev=6),
        "teacher": write_tiny_teacher(root / "teacher"),  # pre-trained: no head, no task
        "model": write_task_teacher(root / "model", "sst2"),  # a saved model for sst2, as an export is
    }


def run_script(script: str, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("GLUE_DIR", "CONLL_DIR", "SQUAD_DIR", "RAY_ADDRESS")}
    env["JAX_PLATFORMS"] = "cpu"
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / script), *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )


def copy_model(src: Path, dest: Path, skip: tuple[str, ...] = ()) -> Path:
    dest.mkdir(parents=True)
    for f in src.iterdir():
        if f.name not in skip:
            shutil.copy(f, dest / f.name)
    return dest


# Each case: (tmp_path, env) -> (script, args, texts the error line must contain, a path that must not appear).

# --- finetune_teacher.py ------------------------------------------------------


def ft_teacher_config_not_an_object(tmp, env):
    bad = copy_model(env["teacher"], tmp / "teacher")
    (bad / "config.json").write_text("[]")
    args = ["--data-dir", str(env["data"]), "--teacher", str(bad), "--output", str(tmp / "out")]
    return "finetune_teacher.py", args, [f"{bad / 'config.json'}: expected a JSON object"], tmp / "out"


def ft_output_climbs_out(tmp, env):
    out = f"{tmp}/runs/../elsewhere"
    args = ["--data-dir", str(env["data"]), "--teacher", str(env["teacher"]), "--output", out]
    return "finetune_teacher.py", args, [f"--output {out}: '..' is not allowed"], tmp / "elsewhere"


# --- distill_student.py ---------------------------------------------------------------


def _distill(tmp, env, *extra):
    return ["--data-dir", str(env["data"]), "--teacher", str(env["model"]), "--output", str(tmp / "out"), *extra]


def student_name_unparsable(tmp, env):
    return "distill_student.py", _distill(tmp, env, "--student", "4L-abc"), ["architecture name '4L-abc'"], tmp / "out"


def student_file_not_json(tmp, env):
    student = tmp / "student.json"
    student.write_text('{"num_layers": 2,')
    return "distill_student.py", _distill(tmp, env, "--student", str(student)), [f"{student}: not valid JSON"], tmp / "out"


def student_wider_than_teacher(tmp, env):
    args = _distill(tmp, env, "--student", "2L-48")
    return "distill_student.py", args, ["hidden_size", "student's 48 exceeds the teacher's 36"], tmp / "out"


def layers_flag_not_a_layer_list(tmp, env):
    return "distill_student.py", _distill(tmp, env, "--layers", "0,x"), ["--layers", "'0,x'"], tmp / "out"


def student_with_zero_heads(tmp, env):
    args = _distill(tmp, env, "--student", "4L-312-H0")
    return "distill_student.py", args, ["architecture name '4L-312-H0': -H (heads) 0 is out of range"], tmp / "out"


def student_with_a_trailing_comma(tmp, env):
    return "distill_student.py", _distill(tmp, env, "--student", "2L-36-H,"), ["architecture name '2L-36-H,'"], tmp / "out"


def student_with_absurd_layers(tmp, env):
    args = _distill(tmp, env, "--student", "99999999999L-36")
    return "distill_student.py", args, ["layers 99999999999 is out of range"], tmp / "out"


def train_limit_negative(tmp, env):
    args = _distill(tmp, env, "--train-limit", "-1")
    return "distill_student.py", args, ["argument --train-limit: must be >= 1, got -1"], tmp / "out"


def validation_negative(tmp, env):
    args = _distill(tmp, env, "--validation", "-1")
    return "distill_student.py", args, ["argument --validation: must be >= 0, got -1"], tmp / "out"


def dev_limit_zero(tmp, env):
    return "distill_student.py", _distill(tmp, env, "--dev-limit", "0"), ["argument --dev-limit: must be >= 1"], tmp / "out"


def learning_rate_infinite(tmp, env):
    return "distill_student.py", _distill(tmp, env, "--lr", "inf"), ["argument --lr: must be a finite number"], tmp / "out"


def cached_attention_scores(tmp, env):
    args = _distill(tmp, env, "--attention-weight", "1", "--teacher-outputs", "cached")
    return "distill_student.py", args, ["--teacher-outputs", "'cached' cannot hold attention scores"], tmp / "out"


def temperature_infinite(tmp, env):
    args = _distill(tmp, env, "--temperature", "inf")
    return "distill_student.py", args, ["argument --temperature: must be a finite number"], tmp / "out"


def output_is_an_existing_file(tmp, env):
    out = tmp / "out"
    out.write_text("mine")
    args = ["--data-dir", str(env["data"]), "--teacher", str(env["model"]), "--output", str(out)]
    return "distill_student.py", args, [f"--output {out}: exists and is not a directory"], None


def teacher_config_with_a_bad_value(tmp, env):
    bad = copy_model(env["model"], tmp / "teacher")
    cfg = json.loads((bad / "config.json").read_text())
    cfg["bertnas"]["arch"]["num_heads"] = ["x", "y"]
    (bad / "config.json").write_text(json.dumps(cfg))
    args = ["--data-dir", str(env["data"]), "--teacher", str(bad), "--output", str(tmp / "out")]
    return "distill_student.py", args, [f"{bad / 'config.json'}: not a BERT config"], tmp / "out"


def distill_output_climbs_out(tmp, env):
    out = f"{tmp}/runs/../elsewhere"
    args = ["--data-dir", str(env["data"]), "--teacher", str(env["model"]), "--output", out]
    return "distill_student.py", args, [f"--output {out}: '..' is not allowed"], tmp / "elsewhere"


# --- search.py ----------------------------------------------------------------


def _search(tmp, env, *extra):
    return ["--data-dir", str(env["data"]), "--teacher", str(env["model"]), "--output", str(tmp / "out"), *extra]


def space_file_malformed_yaml(tmp, env):
    space = tmp / "space.yaml"
    space.write_text("layers: [1, 2\nhidden: [24]\n")
    return "search.py", _search(tmp, env, "--space", str(space)), [f"{space}:2: malformed YAML"], tmp / "out"


def space_file_unknown_field(tmp, env):
    space = tmp / "space.json"
    space.write_text(json.dumps({"layers": [1], "num_experts": [4]}))
    args = _search(tmp, env, "--space", str(space))
    return "search.py", args, [str(space), "unknown search space field(s) ['num_experts']"], tmp / "out"


def space_wider_than_teacher(tmp, env):
    space = tmp / "space.json"
    space.write_text(json.dumps({"layers": [1], "hidden": [48]}))
    args = _search(tmp, env, "--space", str(space))
    return "search.py", args, [f"--space {space}: hidden: 48 exceeds the teacher's hidden size 36"], tmp / "out"


def search_teacher_config_not_bert(tmp, env):
    bad = copy_model(env["model"], tmp / "teacher")
    (bad / "config.json").write_text(json.dumps({"model_type": "bert"}))
    args = ["--data-dir", str(env["data"]), "--teacher", str(bad), "--space", "tiny", "--output", str(tmp / "out")]
    return "search.py", args, [f"{bad / 'config.json'}: not a BERT config"], tmp / "out"


def resume_of_a_directory_that_is_no_search(tmp, env):
    return "search.py", ["--resume", str(env["data"])], [f"--resume {env['data']}: holds files that no bertnas run wrote"], None


def min_speedup_negative(tmp, env):
    return "search.py", _search(tmp, env, "--min-speedup", "-2"), ["argument --min-speedup: must be > 0, got -2"], tmp / "out"


def search_output_climbs_out(tmp, env):
    out = f"{tmp}/runs/../elsewhere"
    args = ["--data-dir", str(env["data"]), "--teacher", str(env["model"]), "--space", "tiny", "--output", out]
    return "search.py", args, [f"--output {out}: '..' is not allowed"], tmp / "elsewhere"


# --- evaluate.py --------------------------------------------------------------


def export_without_weights(tmp, env):
    bare = copy_model(env["model"], tmp / "export", skip=("model.safetensors",))
    args = ["--model", str(bare), "--data-dir", str(env["data"])]
    return "evaluate.py", args, [f"{bare}: no weights (model.safetensors not found)"], None


def export_with_truncated_weights(tmp, env):
    cut = copy_model(env["model"], tmp / "export")
    weights = cut / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:300])
    args = ["--model", str(cut), "--data-dir", str(env["data"])]
    return "evaluate.py", args, [f"{weights}: cannot read safetensors weights"], None


def export_without_tokenizer(tmp, env):
    bare = copy_model(env["model"], tmp / "export", skip=("tokenizer.json", "tokenizer_config.json", "vocab.txt"))
    args = ["--model", str(bare), "--data-dir", str(env["data"])]
    return "evaluate.py", args, [f"{bare}: no tokenizer"], None


def head_does_not_fit_the_task(tmp, env):
    args = ["--model", str(env["model"]), "--task", "stsb", "--data-dir", str(env["data"])]
    return "evaluate.py", args, [str(env["model"]), "classification head with 2 outputs", "stsb needs regression"], None


def unknown_split(tmp, env):
    args = ["--model", str(env["model"]), "--data-dir", str(env["data"]), "--split", "nope"]
    return "evaluate.py", args, ["no split 'nope'"], None


def against_without_weights(tmp, env):
    bare = copy_model(env["model"], tmp / "reference", skip=("model.safetensors",))
    args = ["--model", str(env["model"]), "--against", str(bare), "--data-dir", str(env["data"])]
    return "evaluate.py", args, [f"{bare}: no weights (model.safetensors not found)"], None


def samples_without_against(tmp, env):
    args = ["--model", str(env["model"]), "--data-dir", str(env["data"]), "--samples", "500"]
    return "evaluate.py", args, ["--samples: only with --against"], None


def negative_limit(tmp, env):
    args = ["--model", str(env["model"]), "--data-dir", str(env["data"]), "--limit", "-3"]
    return "evaluate.py", args, ["argument --limit: must be >= 0, got -3"], None


# --- quantize.py --------------------------------------------------------------


def quantize_model_missing(tmp, env):
    out = tmp / "int8"
    return "quantize.py", ["--model", str(tmp / "nowhere"), "--output", str(out)], [str(tmp / "nowhere")], out


def quantize_batch_size_zero(tmp, env):
    out = tmp / "int8"
    args = ["--model", str(env["model"]), "--output", str(out), "--evaluate", "--batch-size", "0"]
    return "quantize.py", args, ["argument --batch-size: must be >= 1, got 0"], out


# --- predict.py ---------------------------------------------------------------


def input_file_missing(tmp, env):
    missing = tmp / "texts.txt"
    return "predict.py", ["--model", str(env["model"]), "--input", str(missing)], [f"{missing}: cannot read"], None


def input_not_utf8(tmp, env):
    texts = tmp / "texts.txt"
    texts.write_bytes(b"a fun movie\n\xff\xfe dull\n")
    return "predict.py", ["--model", str(env["model"]), "--input", str(texts)], [f"{texts}: not UTF-8 text"], None


def pair_given_to_a_single_sentence_task(tmp, env):
    texts = tmp / "texts.txt"
    texts.write_text("a fun movie\na dull movie\tand a second text\n")
    args = ["--model", str(env["model"]), "--input", str(texts)]
    return "predict.py", args, [f"{texts}:2: this task takes one sentence per line"], None


CASES = [
    ft_teacher_config_not_an_object, ft_output_climbs_out,
    student_name_unparsable, student_file_not_json, student_wider_than_teacher, layers_flag_not_a_layer_list,
    student_with_zero_heads, student_with_a_trailing_comma, student_with_absurd_layers, train_limit_negative,
    validation_negative, dev_limit_zero, learning_rate_infinite, temperature_infinite, cached_attention_scores,
    output_is_an_existing_file,
    teacher_config_with_a_bad_value, distill_output_climbs_out,
    space_file_malformed_yaml, space_file_unknown_field, space_wider_than_teacher, search_teacher_config_not_bert,
    resume_of_a_directory_that_is_no_search, min_speedup_negative, search_output_climbs_out,
    export_without_weights, export_with_truncated_weights, export_without_tokenizer, head_does_not_fit_the_task,
    unknown_split, against_without_weights, samples_without_against, negative_limit, quantize_model_missing,
    quantize_batch_size_zero, input_file_missing, input_not_utf8, pair_given_to_a_single_sentence_task,
]


@pytest.fixture(scope="module")
def results(env, tmp_path_factory) -> dict:
    """Every case run once, several scripts at a time: each is mostly interpreter and import start-up."""
    prepared = {case: case(tmp_path_factory.mktemp(case.__name__), env) for case in CASES}

    def run(case):
        script, args, _, _ = prepared[case]
        return run_script(script, *args)

    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        procs = dict(zip(CASES, pool.map(run, CASES)))
    return {case: (*prepared[case], procs[case]) for case in CASES}


COMMANDS = {"finetune_teacher.py": "finetune", "distill_student.py": "distill", "search.py": "search",
            "evaluate.py": "evaluate", "predict.py": "predict", "quantize.py": "quantize"}


@pytest.mark.parametrize("case", CASES, ids=lambda f: f.__name__)
def test_bad_input_gives_one_error_line_and_exit_2(case, results):
    script, _, expected, must_not_exist, proc = results[case]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    last = lines[-1]
    # Ours: `error: ...`; a flag argparse refuses: `error: bertnas <command>: argument --flag: ...` (every
    # script is its `bertnas` command).
    assert last.startswith("error: "), last
    if "argument --" in last:
        assert last.startswith(f"error: bertnas {COMMANDS[script]}: argument --") and len(lines) == 1, lines
    assert sum("error:" in line for line in lines) == 1, lines
    for text in expected:
        assert text in last, (text, last)
    assert proc.stdout == ""
    if must_not_exist is not None:
        assert not must_not_exist.exists(), f"{must_not_exist} was created"


def test_the_catalogue_spans_every_tool(results):
    assert {script for script, *_ in results.values()} == {
        "finetune_teacher.py", "distill_student.py", "search.py", "evaluate.py", "predict.py", "quantize.py"
    }
