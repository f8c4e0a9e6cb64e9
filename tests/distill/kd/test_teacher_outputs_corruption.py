"""A damaged teacher-output cache entry is detected, reported, labelled again and replaced; nothing is unpickled.

Each case damages a good entry in one way, then asks for the same outputs:
the run must warn, run the teacher again, give the same logits as before and
leave an entry that the next run reads without warning.
"""

from __future__ import annotations

import json
import logging
import os

import jax
import numpy as np
import pytest
from helpers import make_tokenizer, write_sst2

from distill.arch import BertArch
from distill.kd import outputs as teacher_outputs
from distill.kd.outputs import cached_teacher_outputs
from distill.model.bert import build_model, init_params
from tasks.features import encode
from tasks.readers import read_split
from tasks.registry import get_task


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("corrupt")
    tok = make_tokenizer(root / "vocab")
    arch = BertArch.uniform(2, 36, 3, 37, vocab_size=len(tok), max_position_embeddings=64)
    task = get_task("sst2")
    features = encode(task, read_split(task, "train", write_sst2(root / "sst2", n_train=23)), tok)
    model = build_model(arch, "classification", 2)
    return model, init_params(model, jax.random.key(0)), features


class Payload:
    """Unpickling this would leave a file behind: proof that the cache never unpickles."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _meta_garbage(entry, tmp):
    (entry / "meta.json").write_text("{not json")


def _meta_a_list(entry, tmp):
    (entry / "meta.json").write_text("[1, 2]")


def _logits_truncated(entry, tmp):
    f = entry / "logits.npy"
    f.write_bytes(f.read_bytes()[:-40])


def _logits_missing_rows(entry, tmp):
    np.save(entry / "logits.npy", np.load(entry / "logits.npy")[:-3])


def _logits_not_finite(entry, tmp):
    logits = np.load(entry / "logits.npy")
    logits[5, 1] = np.nan
    np.save(entry / "logits.npy", logits)


def _offsets_of_other_features(entry, tmp):
    offsets = np.load(entry / "offsets.npy")
    offsets[3:] += 1
    np.save(entry / "offsets.npy", offsets)


def _hidden_state_file_missing(entry, tmp):
    (entry / "hidden_1.npy").unlink()


def _offsets_a_pickle(entry, tmp):
    np.save(entry / "offsets.npy", np.array([Payload(tmp / "unpickled")], dtype=object), allow_pickle=True)


DAMAGE = [
    _meta_garbage, _meta_a_list, _logits_truncated, _logits_missing_rows, _logits_not_finite,
    _offsets_of_other_features, _hidden_state_file_missing, _offsets_a_pickle,
]


@pytest.mark.parametrize("damage", DAMAGE, ids=lambda f: f.__name__.strip("_"))
def test_damaged_entry_is_reported_recomputed_and_replaced(damage, setup, monkeypatch, tmp_path, caplog):
    model, params, features = setup
    cache_dir = tmp_path / "cache"
    monkeypatch.setenv("BERTNAS_CACHE", str(cache_dir))
    ask = dict(teacher_key="t", task="sst2", hidden_layers=(1,), batch_size=8)
    good = cached_teacher_outputs(model, params, features, **ask)
    reference = np.array(good.logits)
    (entry,) = (cache_dir / "outputs").iterdir()

    damage(entry, tmp_path)
    calls = []
    label = teacher_outputs.label_features
    monkeypatch.setattr(teacher_outputs, "label_features", lambda *a, **k: calls.append(1) or label(*a, **k))
    with caplog.at_level(logging.WARNING, logger="distill.kd.outputs"):
        again = cached_teacher_outputs(model, params, features, **ask)
    assert calls == [1], "the teacher labels the features again"
    assert f"damaged teacher-output cache {entry}" in caplog.text
    np.testing.assert_allclose(np.asarray(again.logits), reference, rtol=1e-6)
    assert not (tmp_path / "unpickled").exists(), "a cache file was unpickled"

    caplog.clear()
    third = cached_teacher_outputs(model, params, features, **ask)  # the replaced entry is whole
    assert calls == [1] and "damaged" not in caplog.text
    np.testing.assert_array_equal(np.asarray(third.logits), np.asarray(again.logits))
    assert json.loads((entry / "meta.json").read_text())["features"] == len(features)
    assert sorted(p.name for p in (cache_dir / "outputs").iterdir()) == [entry.name]  # no stray copies
    assert os.path.getsize(entry / "logits.npy") > 23 * 2 * 4
