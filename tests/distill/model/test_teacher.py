"""Teacher loading errors, missing head weights, parameter counts and BertArch checks (no torch)."""

from __future__ import annotations

import json
import logging
import math
import shutil

import huggingface_hub.constants
import jax
import numpy as np
import pytest

from distill.arch import HEADS, ArchError, BertArch, parse_arch_name
from distill.model.bert import abstract_params, build_model
from distill.model.hf import WeightsError
from distill.model.store import TeacherError, load_bert, load_tokenizer, save_bert
from tasks.errors import UserError


@pytest.fixture
def saved_params(tiny_arch, random_params):
    return random_params(tiny_arch, "none", seed=3)


@pytest.fixture
def saved(tmp_path, tiny_arch, tiny_tokenizer, saved_params):
    """A tiny encoder-only model (`saved_params`) saved in the HF layout by our save_bert."""
    return save_bert(tmp_path / "saved", tiny_arch, saved_params, tiny_tokenizer, head="none")


def _copy_without(src, dst, *names):
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(*names))
    return dst


# ---------------------------------------------------------------- loading errors
def test_dir_without_weights(saved, tmp_path):
    path = _copy_without(saved, tmp_path / "no_weights", "model.safetensors")
    with pytest.raises(UserError, match="no weights") as err:
        load_bert(path)
    assert str(path) in str(err.value)


def test_dir_with_only_pytorch_bin_asks_for_safetensors(saved, tmp_path):
    path = _copy_without(saved, tmp_path / "legacy", "model.safetensors")
    (path / "pytorch_model.bin").write_bytes(b"not unpickled")
    with pytest.raises(UserError) as err:
        load_bert(path)
    message = str(err.value)
    assert str(path) in message and "pytorch_model.bin" in message
    assert "safetensors" in message and "save_pretrained" in message


def test_dir_without_config(saved, tmp_path):
    path = _copy_without(saved, tmp_path / "no_config", "config.json")
    with pytest.raises(UserError, match="config.json") as err:
        load_bert(path)
    assert str(path) in str(err.value)


def test_nonexistent_relative_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="nope.*not found"):
        load_bert("./nope")


def test_hub_name_offline_says_how_to_download(tmp_path, monkeypatch):
    # huggingface_hub reads these at import time: patch the module constants too,
    # and point the cache at an empty dir so a cached copy cannot make this pass.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as err:
        load_bert("bert-base-uncased")
    message = str(err.value)
    assert "'bert-base-uncased'" in message
    assert "huggingface-cli download bert-base-uncased" in message


def test_errors_are_teacher_errors(tmp_path):
    with pytest.raises(TeacherError):
        load_bert(tmp_path / "missing")
    file = tmp_path / "a_file"
    file.write_text("x")
    with pytest.raises(TeacherError, match="expected a model directory"):
        load_bert(file)


def test_non_bert_config(saved, tmp_path):
    path = _copy_without(saved, tmp_path / "roberta", "config.json")
    cfg = json.loads((saved / "config.json").read_text())
    cfg.pop("bertnas")
    cfg["model_type"] = "roberta"
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="model_type") as err:
        load_bert(path)
    assert str(path) in str(err.value)


def test_saved_tokenizer_round_trips(saved, tiny_tokenizer):
    tokenizer = load_tokenizer(saved)
    texts = ["the good films!", "an awful plot , it was bad ."]
    assert tokenizer(texts)["input_ids"] == tiny_tokenizer(texts)["input_ids"]
    assert tokenizer.unk_token_id not in sum(tokenizer(texts)["input_ids"], [])
    assert len(tokenizer) == len(tiny_tokenizer) and tokenizer.is_fast


def test_bare_vocab_txt_is_enough(saved, tmp_path, tiny_tokenizer):
    path = _copy_without(saved, tmp_path / "bare", "tokenizer*.json", "special_tokens_map.json", "vocab.txt")
    vocab = sorted(tiny_tokenizer.get_vocab().items(), key=lambda item: item[1])
    (path / "vocab.txt").write_text("".join(f"{token}\n" for token, _ in vocab))
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors", "vocab.txt"]
    tokenizer = load_tokenizer(path)
    assert tokenizer("the good films!")["input_ids"] == tiny_tokenizer("the good films!")["input_ids"]


# ---------------------------------------------------------------- weights that do not fit
def _plain_hf_config(src, path, **changes):
    """Write `src`'s config.json into `path` as a plain HF BertConfig (no `bertnas` block), with `changes`."""
    cfg = json.loads((src / "config.json").read_text())
    cfg.pop("bertnas")
    cfg.update(changes)
    (path / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("ffn", [40, 30])
def test_shape_mismatch_names_the_tensor(saved, tmp_path, ffn):
    path = _copy_without(saved, tmp_path / "mismatch", "config.json")
    _plain_hf_config(saved, path, intermediate_size=ffn)  # weights have FFN 37
    with pytest.raises(WeightsError, match=r"encoder/layer_\d/(intermediate|output)/(kernel|bias)") as err:
        load_bert(path)
    assert isinstance(err.value, UserError)
    assert str(path) in str(err.value) and "37" in str(err.value)


def test_plain_hf_config_loads_same_params(saved, saved_params, tmp_path, tiny_arch):
    path = _copy_without(saved, tmp_path / "plain", "config.json")
    _plain_hf_config(saved, path)
    plain = load_bert(path)
    assert plain.arch == tiny_arch and plain.meta == {} and plain.head == "none"
    jax.tree.map(np.testing.assert_array_equal, plain.params, saved_params)


def test_missing_head_weights_are_logged_and_initialised(saved, saved_params, caplog):
    with caplog.at_level(logging.WARNING, logger="distill.model.hf"):
        bert = load_bert(saved, head="classification", num_labels=3)
    missing = [r.getMessage() for r in caplog.records if "missing" in r.getMessage()]
    assert len(missing) == 1
    assert "classifier/kernel" in missing[0] and "classifier/bias" in missing[0] and str(saved) in missing[0]
    assert "encoder/" not in missing[0] and "embeddings/" not in missing[0]
    assert bert.params["classifier"]["kernel"].shape == (36, 3)
    assert np.std(np.asarray(bert.params["classifier"]["kernel"])) > 0  # randomly initialised
    for part in ("embeddings", "encoder", "pooler"):
        jax.tree.map(np.testing.assert_array_equal, bert.params[part], saved_params[part])


# ---------------------------------------------------------------- parameter counts
ODD_ARCHS = [
    BertArch.uniform(1, 12, 1, 5, vocab_size=17, max_position_embeddings=9),
    BertArch.uniform(2, 36, 3, 37, vocab_size=101, max_position_embeddings=16),
    BertArch.uniform(3, 30, 5, 7, vocab_size=53, max_position_embeddings=11, type_vocab_size=3),
    BertArch(2, 36, 12, (1, 3), (20, 37), vocab_size=101, max_position_embeddings=16),
    BertArch(3, 40, 8, (2, 5, 1), (9, 64, 3), vocab_size=29, max_position_embeddings=7),
]


@pytest.mark.parametrize("arch", ODD_ARCHS, ids=lambda a: a.name)
@pytest.mark.parametrize("head", HEADS)
def test_num_params_matches_model(arch, head):
    num_labels = {"classification": 3, "tagging": 5, "regression": 1, "span": 2, "none": 0}[head]
    shapes = abstract_params(build_model(arch, head, num_labels))
    real = sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(shapes))
    assert arch.num_params(head, num_labels) == real


@pytest.mark.parametrize("head, outputs", [("regression", 1), ("span", 2)])
def test_num_params_uses_the_heads_fixed_outputs(tiny_arch, head, outputs):
    """build_model gives regression 1 output and span 2 whatever num_labels says; so must the count."""
    shapes = abstract_params(build_model(tiny_arch, head, 0))
    real = sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(shapes))
    assert tiny_arch.num_params(head, 0) == tiny_arch.num_params(head, outputs) == real
    assert tiny_arch.flops(7, head, 0) == tiny_arch.flops(7, head, outputs)


# ---------------------------------------------------------------- BertArch
@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(num_layers=2, hidden_size=36, head_size=10, num_heads=(3, 3), ffn_sizes=(37, 37)), "head_size"),
        (dict(num_layers=0, hidden_size=36, head_size=12, num_heads=(), ffn_sizes=()), "num_layers"),
        (dict(num_layers=2, hidden_size=36, head_size=12, num_heads=(3, 4), ffn_sizes=(37, 37)), "num_heads"),
        (dict(num_layers=2, hidden_size=36, head_size=12, num_heads=(3,), ffn_sizes=(37, 37)), "num_heads"),
        (dict(num_layers=2, hidden_size=36, head_size=12, num_heads=(3, 3), ffn_sizes=(37, 37, 37)), "ffn_sizes"),
        (dict(num_layers=2, hidden_size=36, head_size=12, num_heads=(0, 3), ffn_sizes=(37, 37)), "num_heads"),
        (dict(num_layers=2, hidden_size=36, head_size=12, num_heads=(3, 3), ffn_sizes=(37, 0)), "ffn_sizes"),
        (
            dict(num_layers=1, hidden_size=36, head_size=12, num_heads=(3,), ffn_sizes=(37,), hidden_dropout=1.0),
            "hidden_dropout",
        ),
    ],
)
def test_arch_validation_names_the_field(kwargs, field):
    with pytest.raises(ArchError, match=rf"^{field}: ") as err:
        BertArch(**kwargs)
    assert isinstance(err.value, UserError) and isinstance(err.value, ValueError)


def test_uniform_rejects_heads_not_dividing_hidden():
    with pytest.raises(ArchError, match="^num_heads: "):
        BertArch.uniform(2, 36, 5, 37)


def test_parse_arch_name():
    base = BertArch.uniform(2, 36, 3, 37, vocab_size=101, max_position_embeddings=16)
    tiny = parse_arch_name("4L-312", base=base)
    assert (tiny.num_layers, tiny.hidden_size) == (4, 312)
    assert tiny.num_heads == (12,) * 4 and tiny.head_size == 26 and tiny.ffn_sizes == (1248,) * 4
    assert (tiny.vocab_size, tiny.max_position_embeddings) == (101, 16)

    minilm = parse_arch_name("6L-384-H6-F1536")
    assert minilm == BertArch.uniform(6, 384, 6, 1536)
    assert minilm.head_size == 64 and minilm.vocab_size == 30522

    hetero = parse_arch_name("3L-384-H4,6,8-D32")
    assert hetero.num_heads == (4, 6, 8) and hetero.head_size == 32 and hetero.ffn_sizes == (1536,) * 3

    for arch in (tiny, minilm, hetero, *ODD_ARCHS):
        assert parse_arch_name(arch.name, base=arch) == arch, arch.name


@pytest.mark.parametrize("name", ["4L", "L4-312", "4L-312-X3", "3L-384-H4,6-D32", "4L-312-H5"])
def test_parse_arch_name_rejects(name):
    with pytest.raises(ArchError):
        parse_arch_name(name)


@pytest.mark.parametrize("arch", ODD_ARCHS, ids=lambda a: a.name)
def test_arch_json_round_trip(arch):
    back = BertArch.from_json(arch.to_json())
    assert back == arch and hash(back) == hash(arch)
    assert isinstance(back.num_heads, tuple) and isinstance(back.ffn_sizes, tuple)
    assert json.loads(arch.to_json())["num_heads"] == list(arch.num_heads)


def test_arch_from_dict_rejects_unknown_fields():
    d = BertArch.uniform(2, 36, 3, 37).to_dict() | {"num_hiden_layers": 3}
    with pytest.raises(ArchError, match="num_hiden_layers"):
        BertArch.from_dict(d)
