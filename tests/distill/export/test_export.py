"""export_model / load_export: exact Flax round trips, transformers PyTorch loading, atomic replace, errors.

Tiny odd sizes (2 layers, hidden 36, 3 heads of 12, FFN 44) over the 85-token
test vocabulary, uniform and heterogeneous (heads 3,2 and FFN 44,30), with the
sst2 (classification), stsb (regression) and conll2003 (tagging) heads.
"""

from __future__ import annotations

import json
import logging

import jax
import numpy as np
import pytest
from helpers import make_tokenizer

from distill.arch import parse_arch_name
from distill.export.hf import RESERVED, export_model
from distill.export.load import load_export
from distill.model.bert import build_model
from distill.model.hf import WeightsError
from tasks.errors import UserError
from tasks.registry import get_task

TASKS = ("sst2", "stsb", "conll2003")
ARCHS = {"uniform": "2L-36-H3-F44", "hetero": "2L-36-H3,2-F44,30-D12"}
SERVING_FILES = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json", "vocab.txt", "README.md"}
HEADER_BYTES = 16 * 1024  # safetensors JSON header of ~40 tensors, with room to spare
SENTENCES = ["a great movie", "the plot was really dull and boring today", "john met mary in paris ."]
PAIRS = ["the cat runs", "a big red dog sits", "the man"]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("export_vocab"))


@pytest.fixture(scope="module")
def archs(tokenizer):
    return {k: parse_arch_name(name).replace(vocab_size=len(tokenizer)) for k, name in ARCHS.items()}


def _batch(tokenizer, task) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(input_ids, token_type_ids, attention_mask), padded to the longest; sentence pairs for stsb."""
    if task.name == "stsb":
        enc = tokenizer(SENTENCES, PAIRS, padding=True, return_tensors="np")
    else:
        enc = tokenizer(SENTENCES, padding=True, return_tensors="np")
    batch = tuple(np.asarray(enc[k], np.int32) for k in ("input_ids", "token_type_ids", "attention_mask"))
    assert tokenizer.unk_token_id not in batch[0] and (batch[2] == 0).any()  # real words, some padding
    return batch


def _logits(arch, task, params, batch) -> np.ndarray:
    model = build_model(arch, task.kind, task.num_labels)
    return np.asarray(jax.jit(model.apply)({"params": params}, *batch).logits)


def _flat(params) -> dict[str, np.ndarray]:
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(params)}


def _export(tmp_path, archs, tokenizer, random_params, which, task_name, **kw):
    arch, task = archs[which], get_task(task_name)
    params = random_params(arch, task.kind, task.num_labels, seed=5)
    summary = export_model(tmp_path / "model", arch, params, tokenizer, task, **kw)
    return arch, task, params, summary


# ------------------------------------------------------------------ Flax round trip
@pytest.mark.parametrize("which", list(ARCHS))
@pytest.mark.parametrize("task_name", TASKS)
def test_flax_round_trip(task_name, which, archs, tokenizer, random_params, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="distill.export"):
        arch, task, params, summary = _export(
            tmp_path, archs, tokenizer, random_params, which, task_name, extra={"teacher": "tiny", "step": 7}
        )
    out = tmp_path / "model"
    assert summary["path"] == str(out)
    assert f"exported {arch.name} ({summary['num_params']:,} params, " in caplog.text
    assert f"bytes/param) to {out}" in caplog.text

    back = load_export(out)
    assert back.arch == arch and back.head == task.kind and back.num_labels == task.num_labels
    saved, loaded = _flat(params), _flat(back.params)
    assert saved.keys() == loaded.keys()
    for key, value in saved.items():
        assert loaded[key].dtype == np.float32, key
        np.testing.assert_array_equal(loaded[key], value, err_msg=key)
    batch = _batch(back.tokenizer, task)
    np.testing.assert_array_equal(_logits(back.arch, task, back.params, batch), _logits(arch, task, params, batch))

    meta = json.loads((out / "config.json").read_text())["bertnas"]
    assert meta["arch"] == arch.to_dict()
    assert (meta["head"], meta["num_labels"], meta["task"]) == (task.kind, task.num_labels, task.name)
    assert meta["labels"] == list(task.labels) and meta["max_length"] == task.max_length
    assert (meta["teacher"], meta["step"]) == ("tiny", 7)

    # Only serving files: no optimizer state, no checkpoints, no subdirectories.
    entries = list(out.rglob("*"))
    assert {p.name for p in entries} <= SERVING_FILES and all(p.is_file() for p in entries), entries
    assert not any(s in p.name for p in entries for s in ("opt_state", "checkpoints"))
    assert not any(s in (out / "config.json").read_text() for s in ("opt_state", "checkpoints"))

    # Summary: real vs stored parameters, bytes per parameter, directory size.
    assert summary["num_params"] == arch.num_params(task.kind, task.num_labels)
    assert summary["weight_bytes"] == (out / "model.safetensors").stat().st_size
    assert summary["total_bytes"] == sum(p.stat().st_size for p in entries)
    assert summary["bytes_per_param"] == pytest.approx(summary["weight_bytes"] / summary["num_params"])
    assert 0 < summary["weight_bytes"] - 4 * summary["stored_params"] < HEADER_BYTES  # float32 weights + header
    if which == "uniform":
        assert summary["stored_params"] == summary["num_params"]
        assert summary["bytes_per_param"] <= 4.3  # tiny model: the header is a few % of 4 bytes/param
    else:
        assert summary["stored_params"] > summary["num_params"]  # zero heads / FFN neurons padded in
        padded = arch.replace(num_heads=(3, 3), ffn_sizes=(44, 44))
        assert summary["stored_params"] == padded.num_params(task.kind, task.num_labels)
    assert json.loads(json.dumps(summary)) == summary


def test_bytes_per_param_with_a_realistic_vocab(tokenizer, random_params, tmp_path):
    """With BERT's 30522-token vocabulary the embedding dominates and the header is noise: ~4 bytes/param."""
    arch = parse_arch_name(ARCHS["uniform"])
    assert arch.vocab_size == 30522
    task = get_task("sst2")
    summary = export_model(tmp_path / "big", arch, random_params(arch, task.kind, task.num_labels), tokenizer, task)
    assert summary["stored_params"] == summary["num_params"] > 1_000_000
    assert 4.0 < summary["bytes_per_param"] <= 4.1
    assert summary["total_bytes"] > summary["weight_bytes"]


def test_jax_and_bfloat16_params_are_stored_as_float32(archs, tokenizer, random_params, tmp_path):
    arch, task = archs["uniform"], get_task("sst2")
    params = random_params(arch, task.kind, task.num_labels, seed=2)
    as_bf16 = jax.tree.map(lambda x: jax.numpy.asarray(x, jax.numpy.bfloat16), params)
    export_model(tmp_path / "m", arch, as_bf16, tokenizer, task)
    back = load_export(tmp_path / "m")
    for key, value in _flat(as_bf16).items():
        np.testing.assert_array_equal(_flat(back.params)[key], value.astype(np.float32), err_msg=key)


def test_plain_hf_config_head_comes_from_architectures(archs, tokenizer, random_params, tmp_path):
    """Without our `bertnas` block (e.g. a transformers-saved model) the head comes from HF's config fields."""
    for task_name in TASKS:
        arch, task, params, _ = _export(tmp_path / task_name, archs, tokenizer, random_params, "hetero", task_name)
        out = tmp_path / task_name / "model"
        cfg = json.loads((out / "config.json").read_text())
        del cfg["bertnas"]
        (out / "config.json").write_text(json.dumps(cfg))
        back = load_export(out)
        assert (back.head, back.num_labels) == (task.kind, task.num_labels)
        assert back.arch.num_heads == (3, 3) and back.arch.ffn_sizes == (44, 44)  # the padded HF shape
        batch = _batch(tokenizer, task)
        np.testing.assert_allclose(
            _logits(back.arch, task, back.params, batch), _logits(arch, task, params, batch), atol=1e-5, rtol=0
        )


# ------------------------------------------------------------ transformers (PyTorch)
@pytest.mark.torch
@pytest.mark.parametrize("which", list(ARCHS))
@pytest.mark.parametrize("task_name", TASKS)
def test_transformers_loads_export(task_name, which, archs, tokenizer, random_params, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    arch, task, params, _ = _export(tmp_path, archs, tokenizer, random_params, which, task_name)
    out = tmp_path / "model"
    auto = "AutoModelForTokenClassification" if task.kind == "tagging" else "AutoModelForSequenceClassification"
    hf_model, info = getattr(transformers, auto).from_pretrained(
        out, output_loading_info=True, attn_implementation="eager"
    )
    hf_model.eval()
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    assert hf_model.config.num_labels == task.num_labels
    if task.kind == "regression":
        assert hf_model.config.problem_type == "regression"
    else:
        assert [hf_model.config.id2label[i] for i in range(task.num_labels)] == list(task.labels)

    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    batch = _batch(hf_tokenizer, task)
    assert batch[0].tolist() == _batch(tokenizer, task)[0].tolist()
    names = ("input_ids", "token_type_ids", "attention_mask")
    with torch.no_grad():
        hf_logits = hf_model(**{k: torch.as_tensor(v, dtype=torch.long) for k, v in zip(names, batch)}).logits
    np.testing.assert_allclose(hf_logits.numpy(), _logits(arch, task, params, batch), atol=1e-4, rtol=0)


# ---------------------------------------------------------------- atomic replace
def test_export_replaces_existing_directory(archs, tokenizer, random_params, tmp_path):
    out = tmp_path / "model"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "opt_state").write_text("old optimizer state")
    (out / "stale.txt").write_text("old")
    _export(tmp_path, archs, tokenizer, random_params, "uniform", "sst2")
    arch, task, params, _ = _export(tmp_path, archs, tokenizer, random_params, "hetero", "conll2003")

    assert {p.name for p in out.iterdir()} <= SERVING_FILES
    assert not (out / "checkpoints").exists() and not (out / "stale.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no .model.* temporaries or old copies
    back = load_export(out)
    assert back.arch == arch and back.head == "tagging"
    np.testing.assert_array_equal(_flat(back.params)["['classifier']['kernel']"], params["classifier"]["kernel"])


# ------------------------------------------------------------------------ errors
def test_shape_mismatch_is_a_clear_error(archs, tokenizer, random_params, tmp_path):
    task = get_task("sst2")
    params = random_params(archs["uniform"], task.kind, task.num_labels)
    with pytest.raises(WeightsError, match=r"2L-36-H3,2-F44,30-D12.*layer_1/intermediate/kernel has shape "
                                           r"\(36, 44\), expected \(36, 30\)"):
        export_model(tmp_path / "m", archs["hetero"], params, tokenizer, task)
    with pytest.raises(WeightsError, match=r"classifier/kernel has shape \(36, 2\), expected \(36, 9\)"):
        export_model(tmp_path / "m", archs["uniform"], params, tokenizer, get_task("conll2003"))
    with pytest.raises(WeightsError, match=r"unexpected pooler/kernel"):  # a tagging model has no pooler
        export_model(tmp_path / "m", archs["uniform"], params, tokenizer, get_task("conll2003"))
    with pytest.raises(WeightsError, match=r"variables\['params'\]"):
        export_model(tmp_path / "m", archs["uniform"], {"params": params}, tokenizer, task)
    assert isinstance(WeightsError("x"), UserError)
    assert not any(tmp_path.iterdir())  # nothing written


def test_bad_tokenizer_and_extra_are_errors(archs, tokenizer, random_params, tmp_path):
    task = get_task("sst2")
    arch = archs["uniform"]
    params = random_params(arch, task.kind, task.num_labels)
    small = arch.replace(vocab_size=50)
    with pytest.raises(UserError, match="tokenizer has 85 tokens"):
        export_model(tmp_path / "m", small, random_params(small, task.kind, task.num_labels), tokenizer, task)
    for key in RESERVED:
        with pytest.raises(UserError, match=f"'{key}'"):
            export_model(tmp_path / "m", arch, params, tokenizer, task, extra={key: 1})
    with pytest.raises(UserError, match="JSON"):
        export_model(tmp_path / "m", arch, params, tokenizer, task, extra={"when": object()})
    assert not any(tmp_path.iterdir())


def test_load_export_errors(tmp_path):
    with pytest.raises(UserError, match="not a model directory"):
        load_export(tmp_path / "missing")
