"""int8 post-training quantization (`distill.export.int8`, qwix): scales, error bounds, export round trip, size, CLI.

Tiny odd sizes: 2 layers, hidden 36, 3 heads of 12, FFN 37 (uniform) and heads 3,2 / FFN 37,20
(heterogeneous), over the test vocabulary; random N(0, 0.1) parameters (LayerNorm scales around 1).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import qwix
from flax import traverse_util
from helpers import make_tokenizer, write_sst2

from distill.arch import parse_arch_name
from distill.export.hf import export_model
from distill.export.int8 import SCALE, QuantizedBert, export_quantized, quantize, quantize_params
from distill.export.load import load_export
from distill.export.scheme import QuantConfig
from distill.model.bert import build_model
from distill.model.store import TeacherError, load_bert
from distill.run.evaluation import evaluate_dir
from distill.run.prediction import predict_lines
from tasks.registry import get_task

REPO = Path(__file__).resolve().parents[3]
ARCHS = {"uniform": "2L-36-H3-F37", "hetero": "2L-36-H3,2-F37,20-D12", "shared": "3L-36-H3-F37"}
DENSE = {"attention.qkv", "attention.output", "intermediate", "output"}
SENTENCES = ["a great movie", "the plot was really dull and boring today", "john met mary in paris ."]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("quant_vocab"))


def _arch(which, tokenizer):
    arch = parse_arch_name(ARCHS[which]).replace(vocab_size=len(tokenizer), max_position_embeddings=32)
    return arch.replace(layer_groups=(0, 1, 0)) if which == "shared" else arch  # layers 0 and 2 share weights


def _batch(tokenizer):
    enc = tokenizer(SENTENCES, padding=True, return_tensors="np")
    return tuple(np.asarray(enc[k], np.int32) for k in ("input_ids", "token_type_ids", "attention_mask"))


def _logits(model, params, batch) -> np.ndarray:
    return np.asarray(jax.jit(lambda p, *x: model.apply({"params": p}, *x).logits)(params, *batch))


def _outputs(model, params, batch):
    return jax.tree.map(np.asarray, jax.jit(lambda p, *x: model.apply({"params": p}, *x))(params, *batch))


def _exported(tmp_path, tokenizer, random_params, which="uniform", task_name="sst2", crf=False):
    arch, task = _arch(which, tokenizer), get_task(task_name)
    params = random_params(arch, task.kind, task.num_labels, seed=3, crf=crf)
    export_model(tmp_path / "fp32", arch, params, tokenizer, task)
    return tmp_path / "fp32", arch, task, params


def test_per_channel_scales_and_one_step_error(tokenizer, random_params):
    arch, task = _arch("hetero", tokenizer), get_task("sst2")
    params = random_params(arch, task.kind, task.num_labels, seed=1)
    _, qparams, tensors = quantize_params(arch, task.kind, task.num_labels, params)
    flat = {".".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(params).items()}
    kernels = {n for n in flat if n.endswith(".kernel")}
    expected_int8 = kernels | {n for n in flat if n.endswith(".embedding")}
    assert {n for n, t in tensors.items() if t.dtype == np.int8} == expected_int8
    assert {n.rsplit(".", 2)[-2] for n in kernels} >= {"qkv", "intermediate", "pooler", "classifier"}
    assert all(tensors[n].dtype == np.float32 for n in flat if n not in expected_int8)  # biases, LayerNorm

    for name in sorted(expected_int8):
        w, q, scale = flat[name], tensors[name].astype(np.float32), tensors[name + SCALE]
        assert q.shape == w.shape and q.min() >= -128 and q.max() <= 127
        if name.endswith(".embedding"):  # one scale per row
            w2, q2 = w.reshape(w.shape[0], -1), q.reshape(w.shape[0], -1)
            absmax, deq = np.abs(w2).max(axis=1), q2 * scale[:, None]
        else:  # one scale per output channel: the kernel's trailing axes (qkv: 3 x heads x head size)
            n_out = scale.size
            w2, q2 = w.reshape(-1, n_out), q.reshape(-1, n_out)
            absmax, deq = np.abs(w2).max(axis=0), q2 * scale[None, :]
            assert n_out == {"qkv": 3 * arch.num_heads[0] * arch.head_size if "layer_0" in name
                             else 3 * arch.num_heads[1] * arch.head_size}.get(name.split(".")[-2], n_out)
        np.testing.assert_allclose(scale, absmax / 127.5, rtol=1e-6, err_msg=name)
        step = scale[:, None] if name.endswith(".embedding") else scale[None, :]
        assert np.all(np.abs(deq - w2) <= step * (0.5 + 1e-4)), name  # within half a step (one at most)
        assert np.abs(q2).max() >= 127  # the largest weight uses the full range

    # The quantized model holds exactly those integers and scales (qwix arrays), embeddings dequantized.
    qflat = traverse_util.flatten_dict(qparams)
    qkv = qflat[("encoder", "layer_1", "attention", "qkv", "kernel")].array
    assert isinstance(qkv, qwix.QArray) and qkv.qvalue.dtype == np.int8
    name = "encoder.layer_1.attention.qkv.kernel"
    np.testing.assert_array_equal(np.asarray(qwix.dequantize(qkv)).reshape(flat[name].shape),
                                  tensors[name].astype(np.float32) * tensors[name + SCALE].reshape(3, 2, 12))
    table = np.asarray(qflat[("embeddings", "word_embeddings", "embedding")])
    np.testing.assert_allclose(table, tensors["embeddings.word_embeddings.embedding"]
                               * tensors["embeddings.word_embeddings.embedding_scale"][:, None], rtol=1e-6)


@pytest.mark.parametrize("activations", ["dynamic", "none"])
def test_quantized_outputs_close_to_float(activations, tokenizer, random_params):
    arch, task = _arch("uniform", tokenizer), get_task("sst2")
    params = random_params(arch, task.kind, task.num_labels, seed=2)
    batch = _batch(tokenizer)
    ref = _outputs(build_model(arch, task.kind, task.num_labels), params, batch)
    qmodel, qparams, _ = quantize_params(arch, task.kind, task.num_labels, params, QuantConfig(activations=activations))
    got = _outputs(qmodel, qparams, batch)

    def rel(a, b):
        return float(np.linalg.norm(a - b) / np.linalg.norm(b))

    assert 0 < rel(got.logits, ref.logits) < 0.05  # quantized (not equal), but close
    assert 0 < rel(got.sequence_output, ref.sequence_output) < 0.015
    np.testing.assert_array_equal(got.logits.argmax(-1), ref.logits.argmax(-1))
    # Embeddings kept float32: only the Dense layers' rounding is left, a smaller error.
    _, qp32, _ = quantize_params(arch, task.kind, task.num_labels, params,
                                 QuantConfig(activations=activations, embeddings="float32"))
    assert rel(_outputs(qmodel, qp32, batch).sequence_output, ref.sequence_output) < rel(
        got.sequence_output, ref.sequence_output)


def _dequantized(params, tensors) -> dict:
    """`params` with every stored int8 tensor replaced by its dequantized value (what weight-only computes with)."""
    flat = traverse_util.flatten_dict(params)
    for path, w in flat.items():
        name = ".".join(path)
        if tensors[name].dtype != np.int8:
            continue
        q, scale = tensors[name].astype(np.float32), tensors[name + SCALE]
        if name.endswith(".embedding"):  # one scale per row
            flat[path] = (q.reshape(len(scale), -1) * scale[:, None]).reshape(w.shape)
        else:  # one scale per output channel (the kernel's trailing axes)
            flat[path] = (q.reshape(-1, scale.size) * scale[None, :]).reshape(w.shape)
    return traverse_util.unflatten_dict(flat)


def test_dynamic_int8_quantizes_the_activations_weight_only_does_not(tokenizer, random_params):
    """Same int8 weights; weight-only computes in float32 on them, dynamic also rounds each Dense input to int8."""
    arch, task = _arch("uniform", tokenizer), get_task("sst2")
    params = random_params(arch, task.kind, task.num_labels, seed=2)
    batch = _batch(tokenizer)
    dmodel, dparams, dtensors = quantize_params(arch, task.kind, task.num_labels, params, QuantConfig("int8", "dynamic"))
    wmodel, wparams, wtensors = quantize_params(arch, task.kind, task.num_labels, params, QuantConfig("int8", "none"))
    assert dtensors.keys() == wtensors.keys() and all(np.array_equal(dtensors[k], wtensors[k]) for k in dtensors)
    dynamic, weight_only = _outputs(dmodel, dparams, batch), _outputs(wmodel, wparams, batch)

    def rel(a, b):
        return float(np.linalg.norm(a - b) / np.linalg.norm(b))

    # Weight-only is the float model on the dequantized weights (up to float32 rounding) ...
    ref = _outputs(build_model(arch, task.kind, task.num_labels), _dequantized(params, wtensors), batch)
    for out in ("sequence_output", "logits"):
        err = rel(getattr(weight_only, out), getattr(ref, out))
        assert err < 1e-5, f"weight-only {out} vs float32 on dequantized weights: relative error {err:.2e}"
    # ... and dynamic is not: its int8 activations move the outputs by far more than float32 rounding
    # (measured: 3.8e-3 on the last hidden state, 4.3e-2 on the logits).
    for out in ("sequence_output", "logits"):
        diff = rel(getattr(dynamic, out), getattr(weight_only, out))
        assert diff > 1e-3, f"dynamic int8 {out} equals weight-only's (relative difference {diff:.2e})"


@pytest.mark.parametrize("which,task_name,crf", [("uniform", "sst2", False), ("hetero", "conll2003", False),
                                                ("shared", "conll2003", True)])
def test_export_load_identical_predictions(which, task_name, crf, tokenizer, random_params, tmp_path):
    src, arch, task, _ = _exported(tmp_path, tokenizer, random_params, which, task_name, crf)
    in_memory = quantize(load_export(src))
    summary = export_quantized(tmp_path / "int8", in_memory)
    back = load_export(tmp_path / "int8")
    assert isinstance(back, QuantizedBert) and back.quantization == QuantConfig()
    assert (back.arch, back.head, back.num_labels, back.crf) == (arch, task.kind, task.num_labels, crf)
    if crf:  # the CRF's scores stay float32, shared layers are stored once
        assert back.tensors["crf.transitions"].dtype == np.float32 and back.params["crf"]["start"].shape == (9,)
        assert not any(k.startswith("encoder.layer_2.") for k in back.tensors)
    assert back.meta["task"] == task.name and back.meta["labels"] == list(task.labels)
    batch = _batch(tokenizer)
    np.testing.assert_array_equal(_logits(back.model, back.params, batch),
                                  _logits(in_memory.model, in_memory.params, batch))
    assert back.tensors.keys() == in_memory.tensors.keys()
    for k, v in in_memory.tensors.items():
        assert back.tensors[k].dtype == v.dtype and np.array_equal(back.tensors[k], v), k

    cfg = json.loads((tmp_path / "int8" / "config.json").read_text())
    assert cfg["quantization_config"]["quant_method"] == "bertnas-int8"
    assert cfg["bertnas"]["quantization"]["source"] == str(src) and cfg["bertnas"]["arch"] == arch.to_dict()
    assert summary["source_weight_bytes"] == (src / "model.safetensors").stat().st_size
    assert summary["weight_ratio"] == pytest.approx(summary["weight_bytes"] / summary["source_weight_bytes"])
    # A quantized model is never mistaken for a float one (say, as a teacher).
    with pytest.raises(TeacherError, match="quantized model"):
        load_bert(tmp_path / "int8")


def test_on_disk_size_is_about_a_quarter(tokenizer, random_params, tmp_path):
    """Weights dominate (2 layers of hidden 96, FFN 201; 90-token vocabulary): int8 plus scales ~ 1/4."""
    arch = parse_arch_name("2L-96-H3-F201").replace(vocab_size=len(tokenizer), max_position_embeddings=32)
    task = get_task("sst2")
    export_model(tmp_path / "fp32", arch, random_params(arch, task.kind, task.num_labels), tokenizer, task)
    summary = export_quantized(tmp_path / "int8", quantize(load_export(tmp_path / "fp32")))
    assert 0.24 < summary["weight_ratio"] < 0.29, summary
    assert summary["bytes_per_param"] < 1.15  # one byte per weight, plus scales, biases and LayerNorm in float32


def test_evaluate_and_predict_take_a_quantized_export(tokenizer, random_params, tmp_path):
    src, _, task, _ = _exported(tmp_path, tokenizer, random_params)
    export_quantized(tmp_path / "int8", quantize(load_export(src)))
    data = write_sst2(tmp_path / "SST-2", n_train=4, n_dev=24)
    fp32 = evaluate_dir(src, data_dir=str(data))
    int8 = evaluate_dir(tmp_path / "int8", data_dir=str(data))
    assert int8["examples"] == fp32["examples"] == 24 and 0 <= int8["accuracy"] <= 1
    records = predict_lines(tmp_path / "int8", ["a great movie\n", "\n", "dull and boring\n"])
    assert [r["line"] for r in records] == [1, 3]
    assert all(set(r["probabilities"]) == set(task.labels) and r["label"] in task.labels for r in records)
    for r in records:  # the label is the most probable, and the probabilities sum to 1
        assert r["probabilities"][r["label"]] == max(r["probabilities"].values())
        assert sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-3)


@pytest.mark.torch
@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="needs torch")
def test_transformers_refuses_the_quantized_export(tokenizer, random_params, tmp_path):
    from transformers import AutoModelForSequenceClassification

    src, _, _, _ = _exported(tmp_path, tokenizer, random_params)
    export_quantized(tmp_path / "int8", quantize(load_export(src)))
    with pytest.raises(Exception, match="bertnas-int8"):  # never a model with random weights
        AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "int8"))


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, str(REPO / "scripts" / "quantize.py"), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_quantizes_and_refuses_bad_input(tokenizer, random_params, tmp_path):
    src, arch, _, _ = _exported(tmp_path, tokenizer, random_params)
    out = tmp_path / "int8"
    done = _run("--model", str(src), "--output", str(out), "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["arch"] == arch.name and result["weight_ratio"] < 0.5 and result["quantization"]["weights"] == "int8"
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    cases = [
        (["--model", str(tmp_path / "nowhere"), "--output", str(tmp_path / "x")], str(tmp_path / "nowhere")),
        (["--model", str(out), "--output", str(tmp_path / "again")], "already quantized"),
        (["--model", str(src), "--output", str(out)], "already exists; pass --overwrite"),
    ]
    for args, text in cases:
        done = _run(*args)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), done.stderr[-2000:]
        assert text in lines[0] and "Traceback" not in done.stderr
    assert not (tmp_path / "x").exists() and not (tmp_path / "again").exists()
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing already saved is lost


@pytest.mark.slow  # a (3-step) distillation run first: about a minute on 2 busy cores
def test_quantize_run_after_distillation(tmp_path, monkeypatch):
    """`scripts/distill_student.py --quantize int8`: the run's export gets an int8 copy, both scored on the run's
    evaluation split, recorded in results.json; the float32 score is the one the run selected on."""
    from helpers import write_task_teacher

    from distill.run.config import DistillConfig
    from distill.run.distillation import distill
    from distill.run.quantization import quantize_run
    from distill.train.loop import LoopConfig

    monkeypatch.setenv("BERTNAS_CACHE", str(tmp_path / "cache"))
    data = write_sst2(tmp_path / "SST-2", n_train=40, n_dev=16)
    teacher = write_task_teacher(tmp_path / "teacher", "sst2")
    cfg = DistillConfig(task="sst2", teacher=str(teacher), student="2L-24-H3-F30-D8", data_dir=str(data),
                        loop=LoopConfig(epochs=1, max_steps=3, batch_size=16, checkpoint_every=10))
    results = distill(cfg, tmp_path / "run")
    q = quantize_run(cfg, tmp_path / "run", "int8")
    assert q["split"] == "dev" and q["float32"]["accuracy"] == results["best"]["accuracy"]
    assert q["drop"] == pytest.approx(q["float32"]["accuracy"] - q["int8"]["accuracy"])
    assert q["size"]["source"] == str(tmp_path / "run" / "export") and q["size"]["weight_ratio"] < 0.5
    assert isinstance(load_export(tmp_path / "run" / "export-int8"), QuantizedBert)
    assert json.loads((tmp_path / "run" / "results.json").read_text())["quantized"]["int8"] == q["int8"]


def test_cli_choices_are_the_schemes():
    import argparse

    from distill import cli
    from distill.export.scheme import SCHEMES

    parser = argparse.ArgumentParser()
    cli.add_quantize_arg(parser)
    (action,) = [a for a in parser._actions if a.dest == "quantize"]
    assert set(action.choices) == set(SCHEMES)


def test_a_damaged_quantized_export_is_refused_naming_the_file(tokenizer, random_params, tmp_path):
    from safetensors.numpy import load_file, save_file

    from distill.model.hf import WeightsError

    src, _, _, _ = _exported(tmp_path, tokenizer, random_params)
    export_quantized(tmp_path / "int8", quantize(load_export(src)))
    weights = tmp_path / "int8" / "model.safetensors"
    tensors = load_file(str(weights))
    name = "encoder.layer_1.intermediate.kernel"
    del tensors[name + SCALE]
    tensors[name] = tensors[name].astype(np.float32)  # int8 expected
    save_file(tensors, str(weights))
    expected = rf"{weights}: .*{name} is float32\[36, 37\], expected int8.*missing {name}_scale"
    with pytest.raises(WeightsError, match=expected):
        load_export(tmp_path / "int8")
