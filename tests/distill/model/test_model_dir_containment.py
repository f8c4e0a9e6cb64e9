"""A model directory cannot reach outside itself: every file it names (weight shards, config.json,
tokenizer files, what tokenizer_config.json names) must resolve inside it, symlinks followed.
A malformed weight index or safetensors file is one TeacherError naming the file."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from distill.export.load import load_export
from distill.model.store import TeacherError, load_bert, read_arch, save_bert, weights_fingerprint

INDEX = "model.safetensors.index.json"


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny_arch, tiny_tokenizer, random_params):
    return save_bert(tmp_path_factory.mktemp("containment") / "saved", tiny_arch,
                     random_params(tiny_arch, "none", seed=5), tiny_tokenizer, head="none")


def _copy(saved, dst):
    shutil.copytree(saved, dst)
    return dst


def _shard(model, shard_names=("model-00001.safetensors", "model-00002.safetensors")):
    """Split `model`'s weights over two shards plus an index; returns the index path."""
    tensors = load_file(model / "model.safetensors")
    (model / "model.safetensors").unlink()
    names = sorted(tensors)
    halves = (names[: len(names) // 2], names[len(names) // 2 :])
    weight_map = {}
    for shard, keys in zip(shard_names, halves):
        (model / shard).parent.mkdir(parents=True, exist_ok=True)
        save_file({k: tensors[k] for k in keys}, str(model / shard), metadata={"format": "pt"})
        weight_map.update({k: shard for k in keys})
    index = model / INDEX
    index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return index


def _refused(model, *texts):
    with pytest.raises(TeacherError) as err:
        load_bert(model)
    message = str(err.value)
    assert "\n" not in message
    for text in texts:
        assert text in message, (text, message)
    return message


def _point(index, key_index: int, name: str):
    doc = json.loads(index.read_text())
    key = sorted(doc["weight_map"])[key_index]
    doc["weight_map"][key] = name
    index.write_text(json.dumps(doc))


def test_a_sharded_model_loads_and_its_shards_make_the_fingerprint(saved, tmp_path):
    model = _copy(saved, tmp_path / "sharded")
    _shard(model, ("model-00001.safetensors", "parts/model-00002.safetensors"))
    loaded, reference = load_bert(model), load_bert(saved)
    assert np.array_equal(loaded.params["encoder"]["layer_1"]["output"]["kernel"],
                          reference.params["encoder"]["layer_1"]["output"]["kernel"])
    before = weights_fingerprint(model)
    shard = model / "parts" / "model-00002.safetensors"
    tensors = load_file(shard)
    save_file({k: v + 1 for k, v in tensors.items()}, str(shard), metadata={"format": "pt"})
    assert weights_fingerprint(model) != before  # the index alone is unchanged


@pytest.mark.parametrize("name", ["../outside.safetensors", "parts/../../outside.safetensors", "ABSOLUTE"])
def test_index_naming_a_file_outside_is_refused(saved, tmp_path, name):
    model = _copy(saved, tmp_path / "model")
    index = _shard(model)
    shutil.copy(model / "model-00002.safetensors", tmp_path / "outside.safetensors")
    name = str(tmp_path / "outside.safetensors") if name == "ABSOLUTE" else name
    _point(index, -1, name)
    _refused(model, f"{index}: names {name!r}, outside the model directory")


def test_shard_symlink_leading_out_is_refused(saved, tmp_path):
    model = _copy(saved, tmp_path / "model")
    index = _shard(model)
    (model / "model-00002.safetensors").rename(tmp_path / "elsewhere.safetensors")
    (model / "model-00002.safetensors").symlink_to(tmp_path / "elsewhere.safetensors")
    _refused(model, str(index), "'model-00002.safetensors' leads to", "outside the model directory")


def test_symlinks_inside_the_directory_and_a_linked_directory_load(saved, tmp_path):
    model = _copy(saved, tmp_path / "real")
    (model / "store").mkdir()
    (model / "model.safetensors").rename(model / "store" / "weights.safetensors")
    (model / "model.safetensors").symlink_to("store/weights.safetensors")
    (tmp_path / "linked").symlink_to(model)
    assert load_bert(tmp_path / "linked").arch == load_bert(saved).arch


def test_hub_cache_snapshot_links_into_its_blobs(saved, tmp_path):
    repo = tmp_path / "hub" / "models--org--tiny"
    snapshot = repo / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for f in saved.iterdir():
        blob = repo / "blobs" / f"hash-{f.name}"
        shutil.copy(f, blob)
        (snapshot / f.name).symlink_to(f"../../blobs/{blob.name}")
    assert load_bert(snapshot).arch == load_bert(saved).arch


@pytest.mark.parametrize("name", ["model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"])
def test_own_file_symlinked_out_is_refused(saved, tmp_path, name):
    model = _copy(saved, tmp_path / "model")
    (model / name).rename(tmp_path / f"outside-{name}")
    (model / name).symlink_to(tmp_path / f"outside-{name}")
    _refused(model, f"{model / name}: {name!r} leads to {tmp_path / f'outside-{name}'}")
    with pytest.raises(TeacherError, match="outside the model directory"):
        load_export(model)


@pytest.mark.parametrize("key, value", [("tokenizer_file", "/etc/hostname"), ("vocab_file", "../vocab.txt"),
                                        ("fast_tokenizer_files", ["tokenizer.json", "../other.json"])])
def test_tokenizer_config_naming_a_file_outside_is_refused(saved, tmp_path, key, value):
    model = _copy(saved, tmp_path / "model")
    cfg_file = model / "tokenizer_config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg[key] = value
    cfg_file.write_text(json.dumps(cfg))
    _refused(model, f"{cfg_file}: names", "outside the model directory")


@pytest.mark.parametrize(
    "content, expected",
    [
        ('{"weight_map": ["a", "b"]}', "weight_map: expected an object"),
        ('{"weight_map": {}}', "weight_map: expected an object"),
        ('{"metadata": {}}', "weight_map: expected an object"),
        ('{"weight_map": {"embeddings.word_embeddings.weight": 7}}', "maps to 7, not a file name"),
        ('{"weight_map": {"x": "model-00009.safetensors"}}', "names 'model-00009.safetensors', which is not a file"),
        ('{"weight_map": {"x": ""}}', "expected a file name"),
        ('{"weight_map": {"x": "parts"}}', "names 'parts', which is not a file"),
        ('{"weight_map": ', "malformed JSON"),
        ("[" * 100_000, "malformed JSON: nested too deeply"),
        ("[]", "expected a JSON object (a safetensors weight index), got a list"),
        (b"\x89PNG\r\n\x1a\n\xff", "not UTF-8 text at line 1"),
    ],
    ids=["list", "empty", "missing", "not_a_name", "missing_file", "empty_name", "a_directory", "truncated",
         "nested", "a_list", "binary"],
)
def test_malformed_weight_index(saved, tmp_path, content, expected):
    model = _copy(saved, tmp_path / "model")
    index = _shard(model)
    (model / "parts").mkdir()
    index.write_bytes(content if isinstance(content, bytes) else content.encode())
    _refused(model, f"{index}", expected)


@pytest.mark.parametrize(
    "damage",
    [lambda b: b[:300], lambda b: b[:5], lambda b: (2**60).to_bytes(8, "little") + b[8:],
     lambda b: b[:8] + b"\xff" * 40 + b[48:], lambda b: b""],
    ids=["truncated", "shorter_than_a_header", "huge_header_length", "garbage_header", "empty"],
)
def test_damaged_safetensors_is_one_error_naming_it(saved, tmp_path, damage):
    model = _copy(saved, tmp_path / "model")
    weights = model / "model.safetensors"
    weights.write_bytes(damage(weights.read_bytes()))
    _refused(model, f"{weights}: cannot read safetensors weights")
    with pytest.raises(TeacherError, match="cannot read safetensors weights"):
        load_export(model)


def test_read_arch_checks_containment_too(saved, tmp_path):
    model = _copy(saved, tmp_path / "model")
    (model / "config.json").rename(tmp_path / "config.json")
    (model / "config.json").symlink_to(tmp_path / "config.json")
    with pytest.raises(TeacherError, match="outside the model directory"):
        read_arch(model)
