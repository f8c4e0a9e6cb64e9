"""A model directory's config.json with wrong types, bad sizes or bytes that are not JSON: one
TeacherError naming config.json (and the field), from every loader, never a traceback."""

from __future__ import annotations

import json
import shutil

import pytest

from distill.export.load import load_export
from distill.model.store import TeacherError, load_bert, read_arch, save_bert


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny_arch, tiny_tokenizer, random_params):
    labels = ("neg", "pos")
    params = random_params(tiny_arch, "classification", num_labels=2, seed=7)
    return save_bert(tmp_path_factory.mktemp("config") / "saved", tiny_arch, params, tiny_tokenizer,
                     head="classification", labels=labels)


def _with_config(saved, dst, edit=None, raw: bytes | None = None):
    shutil.copytree(saved, dst)
    if raw is not None:
        (dst / "config.json").write_bytes(raw)
    else:
        cfg = json.loads((dst / "config.json").read_text())
        edit(cfg)
        (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def _hf(change):
    """A plain Hugging Face config (no `bertnas` block), then `change` applied."""
    def edit(cfg):
        cfg.pop("bertnas")
        cfg.update(change)
    return edit


def _arch(change):
    def edit(cfg):
        cfg["bertnas"]["arch"].update(change)
    return edit


def _meta(change):
    def edit(cfg):
        cfg["bertnas"].update(change)
    return edit


CASES = {
    "hf_num_labels_two": (_hf({"num_labels": "two", "id2label": None}), "num_labels: expected an integer"),
    "hf_num_labels_bool": (_hf({"num_labels": True}), "num_labels: expected an integer"),
    "hf_hidden_size_negative": (_hf({"hidden_size": -3}), "hidden_size: must be an integer in [1, 65536], got -3"),
    "hf_heads_zero": (_hf({"num_attention_heads": 0}), "num_heads: must be an integer in [1, "),
    "hf_vocab_1e9_float": (_hf({"vocab_size": 1e9}), "vocab_size: must be an integer in [1, 4194304], got 1000000000.0"),
    "hf_vocab_10_to_9": (_hf({"vocab_size": 10**9}), "vocab_size: must be an integer in [1, 4194304]"),
    "hf_layers_bool": (_hf({"num_hidden_layers": True}), "num_layers: must be an integer in [1, 1024], got True"),
    "hf_layers_string": (_hf({"num_hidden_layers": "2"}), "num_layers: must be an integer"),
    "hf_dropout_string": (_hf({"hidden_dropout_prob": "0.1"}), "hidden_dropout: must be a number in [0.0, 1.0)"),
    "hf_id2label_list": (_hf({"id2label": ["a", "b"]}), "id2label: expected an object of at most 65536 labels"),
    "hf_architectures_string": (_hf({"architectures": "BertModel"}), "architectures: expected a list of strings"),
    "hf_pad_beyond_vocab": (_hf({"pad_token_id": 10**6}), "pad_token_id: must be an integer in [0, 100]"),
    "hf_missing_field": (_hf({"hidden_size": None}), "hidden_size: must be an integer"),
    "bertnas_not_object": (lambda cfg: cfg.update(bertnas=[1]), "bertnas: expected a dict"),
    "bertnas_null": (lambda cfg: cfg.update(bertnas=None), "bertnas: expected a dict"),
    "bertnas_head_unknown": (_meta({"head": "poem"}), "bertnas.head: expected one of"),
    "bertnas_num_labels_two": (_meta({"num_labels": "two"}), "bertnas.num_labels: expected an integer in [0, "),
    "bertnas_labels_not_strings": (_meta({"labels": [0, 1]}), "bertnas.labels: expected a list of strings"),
    "bertnas_crf_string": (_meta({"crf": "yes"}), "bertnas.crf: expected a bool"),
    "bertnas_arch_list": (_meta({"arch": [2, 36]}), "bertnas.arch: expected a dict"),
    "arch_heads_strings": (_arch({"num_heads": ["x", "y"]}), "num_heads: layer 0: must be an integer"),
    "arch_heads_not_a_list": (_arch({"num_heads": 3}), "num_heads: expected one value per layer"),
    "arch_ffn_float": (_arch({"ffn_sizes": [37.5, 37]}), "ffn_sizes: layer 0: must be an integer"),
    "arch_eps_nan": (_arch({"layer_norm_eps": float("nan")}), "layer_norm_eps: must be a number"),
}
RAW = {
    "not_utf8": (b'{"model_type": "bert",\n "x": "\xff"}', "not UTF-8 text at line 2"),
    "nested_100000_deep": (b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "malformed JSON: nested too deeply"),
    "a_list": (b"[]", "expected a JSON object (a BERT config), got a list"),
    "binary": (b"\x00\x01\x02\x03" * 16, "binary data (a NUL byte) at line 1"),
    "empty": (b"", "file is empty"),
    "syntax": (b'{\n  "hidden_size": 36,\n  oops\n}', ":3: malformed JSON"),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_bad_config_field_names_the_file_and_field(saved, tmp_path, case):
    edit, expected = CASES[case]
    model = _with_config(saved, tmp_path / "model", edit)
    for load in (load_bert, load_export, read_arch):
        with pytest.raises(TeacherError) as err:
            load(model)
        message = str(err.value)
        assert message.startswith(str(model / "config.json")), message
        assert expected in message and "\n" not in message, (load.__name__, message)


@pytest.mark.parametrize("case", list(RAW), ids=list(RAW))
def test_config_that_is_not_a_json_object(saved, tmp_path, case):
    raw, expected = RAW[case]
    model = _with_config(saved, tmp_path / "model", raw=raw)
    for load in (load_bert, load_export, read_arch):
        with pytest.raises(TeacherError) as err:
            load(model)
        assert str(err.value).startswith(str(model / "config.json")) and expected in str(err.value), str(err.value)


def test_plain_hf_config_with_null_fields_still_loads(saved, tmp_path):
    model = _with_config(saved, tmp_path / "model", _hf({"id2label": None, "problem_type": None, "num_labels": 2,
                                                        "architectures": ["BertForSequenceClassification"]}))
    loaded = load_export(model)
    assert (loaded.head, loaded.num_labels) == ("classification", 2)


TOKENIZER_CASES = {
    "tokenizer_json_not_a_tokenizer": ("tokenizer.json", b'{"x": 1}', "cannot load the tokenizer from tokenizer.json"),
    "tokenizer_json_binary": ("tokenizer.json", b"\x00\xff" * 8, "tokenizer.json: not UTF-8 text at line 1"),
    "tokenizer_json_nested": ("tokenizer.json", b"[" * 100_000, "tokenizer.json: malformed JSON: nested too deeply"),
    "vocab_binary": ("vocab.txt", b"[PAD]\n\xff\xfe\x00\n", "vocab.txt: not UTF-8 text at line 2"),
    "special_tokens_map_syntax": ("special_tokens_map.json", b"[1, 2", "special_tokens_map.json:1: malformed JSON"),
    "added_tokens_a_list": ("added_tokens.json", b"[]", "added_tokens.json: expected a JSON object"),
    "tokenizer_config_bad_values": ("tokenizer_config.json", b'{"do_lower_case": "maybe", "model_max_length": "x"}',
                                    "cannot load the tokenizer from tokenizer.json, tokenizer_config.json"),
}


@pytest.mark.parametrize("case", list(TOKENIZER_CASES), ids=list(TOKENIZER_CASES))
def test_malformed_tokenizer_file_names_it(saved, tmp_path, case):
    name, raw, expected = TOKENIZER_CASES[case]
    model = tmp_path / "model"
    shutil.copytree(saved, model)
    (model / name).write_bytes(raw)
    for load in (load_bert, load_export):
        with pytest.raises(TeacherError) as err:
            load(model)
        message = str(err.value)
        assert message.startswith(str(model)) and expected in message and "\n" not in message, message
