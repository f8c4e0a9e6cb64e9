"""ONNX export (`distill.export.onnx`, jax2onnx) and serving with onnxruntime: parity with the Flax model at
other batch sizes and lengths than any traced, with padding; the int8 variant (ONNX Runtime's quantization);
evaluate and predict on an ONNX directory; the CLI; the optional extra.

Tiny odd sizes: hidden 36, heads of 12, heterogeneous (3 layers, heads 3,2,1, FFN 37,20,9) and shared
(layers 0 and 2 one group) students over the test vocabulary; random N(0, 0.1) parameters.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from helpers import make_tokenizer, write_conll, write_sst2

import nas.cli
from distill.arch import parse_arch_name
from distill.export.hf import export_model, load_float_export
from distill.export.load import load_export
from distill.export.onnx import ATOL, CRF_FILE, OnnxBert, onnx_export
from distill.model.bert import build_model
from distill.model.store import TeacherError
from distill.run.evaluation import evaluate_dir
from distill.run.prediction import predict_lines
from tasks.errors import UserError
from tasks.registry import get_task

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

REPO = Path(__file__).resolve().parents[3]
ARCHS = {"hetero": "3L-36-H3,2,1-F37,20,9-D12", "shared": "3L-36-H3,2,3-F37,20,37-D12"}


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("onnx_vocab"))


def _student(which, task_name, tokenizer, random_params, crf=False, seed=3):
    arch = parse_arch_name(ARCHS[which]).replace(vocab_size=len(tokenizer), max_position_embeddings=32)
    if which == "shared":
        arch = arch.replace(layer_groups=(0, 1, 0))  # layers 0 and 2 share their weights
    task = get_task(task_name)
    return arch, task, random_params(arch, task.kind, task.num_labels, seed=seed, crf=crf)


def _exported(root: Path, which, task_name, tokenizer, random_params, crf=False) -> tuple[Path, Path, dict, object]:
    arch, task, params = _student(which, task_name, tokenizer, random_params, crf)
    export_model(root / "fp32", arch, params, tokenizer, task)
    onnx_export(root / "fp32", root / "onnx")
    return root / "fp32", root / "onnx", params, build_model(arch, task.kind, task.num_labels, crf=crf)


def _inputs(batch: int, length: int, vocab: int, seed: int):
    """int64 (batch, length): random ids, row lengths from `length` down to 1 (padding at the end), segment
    ids 1 on the second half of each row."""
    rng = np.random.default_rng(seed)
    lengths = np.maximum(1, length - np.arange(batch) * max(1, length // batch))
    mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.int64)
    ids = rng.integers(0, vocab, (batch, length)) * mask
    types = (np.arange(length)[None, :] >= lengths[:, None] // 2).astype(np.int64) * mask
    return ids, mask, types


@pytest.mark.parametrize("which,task_name,crf", [("hetero", "sst2", False), ("shared", "conll2003", True),
                                                ("hetero", "squad", False), ("shared", "stsb", False)])
def test_onnx_matches_flax_at_new_shapes_with_padding(which, task_name, crf, tokenizer, random_params, tmp_path):
    _, out, params, model = _exported(tmp_path, which, task_name, tokenizer, random_params, crf)
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [(i.name, i.type, i.shape) for i in session.get_inputs()] == [
        (name, "tensor(int64)", ["batch", "sequence"]) for name in ("input_ids", "attention_mask", "token_type_ids")]
    names = [o.name for o in session.get_outputs()]
    assert names == (["start_logits", "end_logits"] if task_name == "squad" else ["logits"])
    apply = jax.jit(lambda p, i, t, m: model.apply({"params": p}, i, t, m).logits)
    for batch, length in ((5, 13), (1, 3), (2, 32)):  # the export's own probe is (3, 11)
        ids, mask, types = _inputs(batch, length, len(tokenizer), seed=batch)
        want = np.asarray(apply(params, ids.astype(np.int32), types.astype(np.int32), mask.astype(np.int32)))
        got = session.run(None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": types})
        got = np.stack(got, -1) if task_name == "squad" else got[0]
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)
        assert np.abs(got - want).max() < ATOL / 10  # float32 rounding, far inside the bound (measured ~1e-7)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["bertnas"]["onnx"]["outputs"] == names and load_export(out).arch == model.arch  # groups included
    assert cfg["model_type"] == "bert" and cfg["bertnas"]["onnx"]["parity"]["max_abs_diff"] < ATOL
    assert (out / CRF_FILE).is_file() == crf
    assert make_tokenizer(tmp_path / "v2")("a great movie")["input_ids"] == load_export(out).tokenizer(
        "a great movie")["input_ids"]


def test_the_int8_variant_is_onnx_runtime_quantized_and_runs(tokenizer, random_params, tmp_path):
    arch, task, params = _student("hetero", "sst2", tokenizer, random_params)
    arch = arch.replace(hidden_size=96, ffn_sizes=(201, 150, 99), head_size=32)  # weights that dominate the file
    params = random_params(arch, task.kind, task.num_labels, seed=5)
    export_model(tmp_path / "fp32", arch, params, tokenizer, task)
    float_summary = onnx_export(tmp_path / "fp32", tmp_path / "onnx")
    summary = onnx_export(tmp_path / "fp32", tmp_path / "int8", quantize="int8")
    graph = onnx.load(str(tmp_path / "int8" / "model.onnx"))
    ops = {n.op_type for n in graph.graph.node}
    assert {"MatMulInteger", "DynamicQuantizeLinear"} <= ops and "Gemm" not in ops  # every Dense: int8
    int8_elements = sum(int(np.prod(t.dims)) for t in graph.graph.initializer if t.data_type == onnx.TensorProto.INT8)
    assert int8_elements >= arch.num_params(task.kind, task.num_labels) * 0.9  # kernels and embeddings
    assert summary["onnx_bytes"] < 0.35 * float_summary["onnx_bytes"], (summary, float_summary)
    ids, mask, types = _inputs(6, 17, len(tokenizer), seed=1)
    feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    fp = ort.InferenceSession(str(tmp_path / "onnx" / "model.onnx")).run(None, feed)[0]
    q = ort.InferenceSession(str(tmp_path / "int8" / "model.onnx")).run(None, feed)[0]
    assert q.shape == fp.shape == (6, 2) and np.isfinite(q).all()
    # int8 moves the logits by quantization noise: more than float32 rounding, far less than the logits' spread
    assert 1e-5 < np.abs(q - fp).max() < 0.1 * np.abs(fp).max(), (q, fp)
    cfg = json.loads((tmp_path / "int8" / "config.json").read_text())["bertnas"]["onnx"]
    assert cfg["quantization"]["scheme"] == "int8" and cfg["quantization"]["weight_type"] == "QInt8"


@pytest.mark.parametrize("which,task_name,crf", [("hetero", "sst2", False), ("shared", "conll2003", True)])
def test_evaluate_and_predict_on_an_onnx_dir_match_the_flax_export(which, task_name, crf, tokenizer, random_params,
                                                                  tmp_path):
    src, out, _, _ = _exported(tmp_path, which, task_name, tokenizer, random_params, crf)
    data = write_sst2(tmp_path / "SST-2", n_train=4, n_dev=37) if task_name == "sst2" else \
        write_conll(tmp_path / "conll", n_train=4, n_dev=23)
    served = load_export(out)
    assert isinstance(served, OnnxBert) and served.crf == crf and served.head == get_task(task_name).kind
    flax_metrics, onnx_metrics = (evaluate_dir(d, data_dir=str(data), batch_size=16) for d in (src, out))
    for m in (flax_metrics, onnx_metrics):
        m.pop("examples_per_second")
    assert onnx_metrics == flax_metrics and onnx_metrics["examples"] in (37, 23)
    lines = ["a great movie", "the plot was really dull and boring today", "john met mary in paris ."]
    flax_records, onnx_records = (predict_lines(d, lines, batch_size=2) for d in (src, out))
    for a, b in zip(flax_records, onnx_records, strict=True):
        if task_name == "sst2":
            assert a["label"] == b["label"]
            assert all(abs(a["probabilities"][k] - b["probabilities"][k]) < 1e-5 for k in a["probabilities"])
        else:  # Viterbi over the ONNX emissions with the CRF scores beside the graph: the same tags
            assert a["tags"] == b["tags"] and a["words"] == b["words"]


def test_the_cli_exports_and_never_replaces_what_is_not_an_export(tokenizer, random_params, tmp_path, capsys):
    arch, task, params = _student("shared", "sst2", tokenizer, random_params)
    export_model(tmp_path / "fp32", arch, params, tokenizer, task)
    out = tmp_path / "onnx"
    argv = ["export", "--format", "onnx", "--model", str(tmp_path / "fp32"), "--output", str(out), "--json"]
    with pytest.raises(SystemExit) as done:
        nas.cli.main(argv)
    assert done.value.code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["path"] == str(out) and summary["max_abs_diff"] < ATOL and (out / "model.onnx").is_file()
    before = (out / "model.onnx").stat().st_mtime_ns
    for extra, text in (([], "pass --overwrite"), (["--opset", "9"], "--opset: 9 is outside 17..23")):
        with pytest.raises(SystemExit) as done:
            nas.cli.main(argv + extra)
        assert done.value.code == 2 and text in capsys.readouterr().err
    assert (out / "model.onnx").stat().st_mtime_ns == before
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(SystemExit) as done:
        nas.cli.main(argv[:-3] + ["--output", str(mine), "--overwrite"])
    assert done.value.code == 2 and "notes.txt" in capsys.readouterr().err
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    with pytest.raises(SystemExit) as done:
        nas.cli.main(argv + ["--overwrite", "--opset", "23"])
    assert done.value.code == 0 and json.loads((out / "config.json").read_text())["bertnas"]["onnx"]["opset"] == 23
    capsys.readouterr()


def test_onnx_and_int8_dirs_are_not_float_sources(tokenizer, random_params, tmp_path):
    _, out, _, _ = _exported(tmp_path, "hetero", "sst2", tokenizer, random_params)
    with pytest.raises(TeacherError, match="an ONNX export"):
        load_float_export(out)
    with pytest.raises(UserError, match="an ONNX export"):
        onnx_export(out, tmp_path / "again")
    assert not (tmp_path / "again").exists()


def test_without_the_extra_export_names_it_in_one_line_and_exits_2(tokenizer, random_params, tmp_path, monkeypatch,
                                                                   capsys):
    arch, task, params = _student("hetero", "sst2", tokenizer, random_params)
    export_model(tmp_path / "fp32", arch, params, tokenizer, task)
    monkeypatch.setitem(sys.modules, "jax2onnx", None)  # as if not installed: importing it raises ImportError
    with pytest.raises(SystemExit) as done:
        nas.cli.main(["export", "--model", str(tmp_path / "fp32"), "--output", str(tmp_path / "onnx")])
    err = capsys.readouterr().err.strip().splitlines()
    assert done.value.code == 2 and len(err) == 1, err
    assert "jax2onnx is not installed" in err[0] and "pip install 'bertnas[onnx]'" in err[0]
    assert not (tmp_path / "onnx").exists()


def test_the_library_imports_without_the_onnx_packages():
    code = ("import sys\n"
            "for m in ('onnx', 'onnxruntime', 'jax2onnx'): sys.modules[m] = None\n"
            "import distill.run, distill.export.load, distill.export.onnx, nas.cli, nas.tune\n"
            "print('ok')")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_a_runs_export_gets_onnx_copies_evaluated_next_to_it(tokenizer, random_params, tmp_path):
    """`bertnas distill --export-onnx --quantize int8` after the run: OUTPUT/export-onnx and -int8, scored with
    onnxruntime on the run's dev split; the float32 one as the Flax export, recorded in results.json."""
    from distill.run import DistillConfig, export_onnx_run

    arch, task, params = _student("hetero", "sst2", tokenizer, random_params)
    run = tmp_path / "run"
    export_model(run / "export", arch, params, tokenizer, task)
    (run / "results.json").write_text(json.dumps({"task": "sst2"}))
    data = write_sst2(tmp_path / "SST-2", n_train=4, n_dev=29)
    result = export_onnx_run(DistillConfig(task="sst2", data_dir=str(data)), run, "int8")
    assert result["split"] == "dev" and result["flax"]["examples"] == 29
    assert result["export-onnx"]["drop"] == 0 and result["export-onnx"]["max_abs_diff"] < ATOL
    assert result["export-onnx-int8"]["quantization"] == "int8" and abs(result["export-onnx-int8"]["drop"]) <= 1
    assert json.loads((run / "results.json").read_text())["onnx"]["export-onnx"]["path"] == str(run / "export-onnx")
    assert load_export(run / "export-onnx-int8").model.head == "classification"


def test_the_cli_evaluates_the_onnx_model_against_its_source(tokenizer, random_params, tmp_path, capsys):
    """`bertnas export --format onnx --quantize int8 --evaluate`: both models on dev, as `bertnas quantize
    --evaluate` reports them (`distill.run.compare`): each one's metrics as `evaluate` gives them, the
    agreement of their predictions."""
    arch, task, params = _student("hetero", "sst2", tokenizer, random_params)
    export_model(tmp_path / "fp32", arch, params, tokenizer, task)
    data = write_sst2(tmp_path / "SST-2", n_train=4, n_dev=29)
    for quantize, name in (([], "onnx"), (["--quantize", "int8"], "onnx-int8")):
        with pytest.raises(SystemExit) as done:
            nas.cli.main(["export", "--format", "onnx", "--model", str(tmp_path / "fp32"), "--output",
                          str(tmp_path / name), *quantize, "--evaluate", "--task", "sst2", "--data-dir", str(data),
                          "--json"])
        assert done.value.code == 0
        ev = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["evaluation"]
        assert ev["split"] == "dev" and ev["float32"]["examples"] == 29
        assert ev["float32"]["accuracy"] == evaluate_dir(tmp_path / "fp32", "sst2", data_dir=str(data))["accuracy"]
        assert ev["int8"]["accuracy"] == evaluate_dir(tmp_path / name, "sst2", data_dir=str(data))["accuracy"]
        assert 0 <= ev["agreement"] <= 1 and ev["drop"] == pytest.approx(
            ev["float32"]["accuracy"] - ev["int8"]["accuracy"])
        if not quantize:  # the float32 ONNX graph predicts as its source
            assert ev["agreement"] == 1.0 and ev["drop"] == 0
