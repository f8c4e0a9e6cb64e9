"""Teacher outputs computed once: equal to running the teacher, gathered per batch, cached on disk."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from helpers import make_tokenizer, write_conll, write_sst2

from distill.arch import BertArch
from distill.files import features_fingerprint
from distill.kd import outputs as teacher_outputs
from distill.kd.outputs import cached_teacher_outputs, label_features
from distill.model.bert import build_model, init_params
from tasks.batching import batches
from tasks.features import encode
from tasks.readers import read_split
from tasks.registry import get_task


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("outputs")
    tok = make_tokenizer(root / "vocab")
    arch = BertArch.uniform(2, 36, 3, 44, vocab_size=len(tok), max_position_embeddings=160)
    sst2, conll = get_task("sst2"), get_task("conll2003")
    data = {
        "sst2": encode(sst2, read_split(sst2, "train", write_sst2(root / "sst2", n_train=45)), tok),
        "conll2003": encode(conll, read_split(conll, "train", write_conll(root / "conll", n_train=23)), tok),
    }
    return arch, data


def _reference(model, params, batch):
    out = model.apply(
        {"params": params}, batch["input_ids"], batch["token_type_ids"], batch["attention_mask"],
        output_hidden_states=True,
    )
    return np.asarray(out.logits), [np.asarray(h) for h in out.hidden_states]


@pytest.mark.parametrize("task_name,head,labels", [("sst2", "classification", 2), ("conll2003", "tagging", 9)])
def test_gathered_outputs_equal_running_the_teacher(setup, task_name, head, labels):
    arch, data = setup
    features = data[task_name]
    model = build_model(arch, head, labels)
    params = init_params(model, jax.random.key(0))
    cache = label_features(model, params, features, (0, 2), batch_size=8)
    assert len(cache) == len(features)
    # A shuffled batch of 13 rows (odd, with padding rows) from a different bucket plan.
    batch = next(batches(features, 13, shuffle=True, seed=3))
    batch["index"][-2:] = -1  # two padding rows
    got = cache.gather(batch, (0, 2))
    want_logits, want_hidden = _reference(model, params, batch)
    real = batch["index"] >= 0
    mask = batch["attention_mask"].astype(bool)
    if head == "tagging":
        np.testing.assert_allclose(got.logits[mask & real[:, None]], want_logits[mask & real[:, None]], atol=1e-5)
        assert not got.logits[~mask].any()
    else:
        np.testing.assert_allclose(got.logits[real], want_logits[real], atol=1e-5)
    assert not got.logits[~real].any()
    assert got.hidden.shape == (2,) + want_hidden[0].shape
    for k, layer in enumerate((0, 2)):
        sel = mask & real[:, None]
        # bfloat16 storage: about 3 significant digits.
        np.testing.assert_allclose(got.hidden[k][sel], want_hidden[layer][sel], rtol=1e-2, atol=1e-2)


def test_disk_cache_is_reused_and_keyed_by_features(setup, monkeypatch, tmp_path):
    arch, data = setup
    monkeypatch.setenv("BERTNAS_CACHE", str(tmp_path))
    model = build_model(arch, "classification", 2)
    params = init_params(model, jax.random.key(0))
    features = data["sst2"]
    first = cached_teacher_outputs(model, params, features, teacher_key="t1", task="sst2", hidden_layers=(1, 2))
    assert first.seconds > 0 and isinstance(first.hidden[1], np.memmap)  # read back from the entry
    entries = list((tmp_path / "outputs").iterdir())
    assert len(entries) == 1 and entries[0].name.startswith("sst2-")

    calls = []
    monkeypatch.setattr(teacher_outputs, "label_features", lambda *a, **k: calls.append(1) or first)
    again = cached_teacher_outputs(model, params, features, teacher_key="t1", task="sst2", hidden_layers=(2,))
    assert not calls, "a cached entry with a superset of the hidden layers must serve"
    np.testing.assert_array_equal(again.logits, first.logits)
    np.testing.assert_array_equal(np.asarray(again.hidden[2], np.float32), np.asarray(first.hidden[2], np.float32))
    assert again.seconds == 0

    cached_teacher_outputs(model, params, features, teacher_key="t2", task="sst2")  # another teacher
    cached_teacher_outputs(model, params, features, teacher_key="t1", task="sst2", hidden_layers=(0,))  # more layers
    assert len(calls) == 2


def test_fingerprint_sees_every_token(setup):
    _, data = setup
    features = data["sst2"]
    ids = [x.copy() for x in features.input_ids]
    ids[7][2] += 1
    changed = type(features)(**{**features.__dict__, "input_ids": ids})
    assert features_fingerprint(changed) != features_fingerprint(features)


@pytest.mark.parametrize("task_name,head,labels", [("sst2", "classification", 2), ("conll2003", "tagging", 9)])
def test_cached_prefix_is_not_labelled_again(setup, monkeypatch, tmp_path, task_name, head, labels):
    """Originals labelled on their own, then originals + copies: only the copies go through the teacher,
    and the result equals labelling everything at once."""
    arch, data = setup
    monkeypatch.setenv("BERTNAS_CACHE", str(tmp_path))
    model = build_model(arch, head, labels)
    params = init_params(model, jax.random.key(0))
    full = data[task_name]
    n = len(full) - 5  # the last 5 features play the augmented copies
    originals = teacher_outputs.rows(full, 0, n)
    cached_teacher_outputs(model, params, originals, teacher_key="t", task=task_name, hidden_layers=(1,))

    seen = []
    real = teacher_outputs.label_features

    def spy(model, params, features, *a, **k):
        seen.append(len(features) - (len(k["head"]) if k.get("head") is not None else 0))
        return real(model, params, features, *a, **k)

    monkeypatch.setattr(teacher_outputs, "label_features", spy)
    got = cached_teacher_outputs(model, params, full, teacher_key="t", task=task_name, hidden_layers=(1,),
                                 prefixes=(n - 2, n))  # the longest cached one serves
    assert seen == [5], "only the 5 new features may be labelled"
    want = real(model, params, full, (1,), batch_size=8)
    np.testing.assert_allclose(got.logits, want.logits, atol=1e-5)
    np.testing.assert_array_equal(got.offsets, want.offsets)
    np.testing.assert_allclose(np.asarray(got.hidden[1], np.float32), np.asarray(want.hidden[1], np.float32),
                               rtol=1e-2, atol=1e-2)

    # A prefix that is not cached (another teacher) or not a prefix (different lengths): all labelled.
    seen.clear()
    cached_teacher_outputs(model, params, full, teacher_key="t2", task=task_name, prefixes=(n,))
    assert seen == [len(full)]
    with pytest.raises(ValueError, match="not a prefix"):
        real(model, params, teacher_outputs.rows(full, 1), (1,), head=want)
