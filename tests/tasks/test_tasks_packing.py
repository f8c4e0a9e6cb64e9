"""Packed batches: every feature once per epoch, in one shape, each example's tokens where its row says."""

from __future__ import annotations

import numpy as np
import pytest
from task_data import GLUE, needs_data

from tasks.batching import batch_plan, buckets_for
from tasks.features import Features, encode
from tasks.packing import (
    PackShape,
    collate_packed,
    epoch_size,
    is_packed,
    pack_shape,
    packable,
    packed_batches,
    packed_plan,
)
from tasks.readers import read_split
from tasks.registry import get_task


def _features(n: int = 211, kind: str = "classification", seed: int = 2) -> Features:
    """Short sentences with a long tail, as real ones (SST-2: 13 tokens on average, 66 at most)."""
    rng = np.random.default_rng(seed)
    lengths = np.minimum(3 + rng.geometric(1 / 11, size=n), 61).astype(np.int32)
    ids = [np.concatenate([[101], rng.integers(1000, 2000, size=k - 2), [102]]).astype(np.int32) for k in lengths]
    labels = rng.integers(0, 3, size=n).astype(np.int32) if kind == "classification" else None
    if kind == "regression":
        labels = rng.uniform(0, 5, size=n).astype(np.float32)
    return Features(kind=kind, max_length=64, input_ids=ids, token_type_ids=[np.zeros(k, np.int32) for k in lengths],
                    lengths=lengths, example_index=np.arange(n, dtype=np.int32), labels=labels)


def test_shape_fits_the_longest_and_averages_the_batch_size():
    f = _features()
    shape = pack_shape(f, 9)
    assert shape.length == 64 and shape.length % 8 == 0 and shape.length >= f.lengths.max()
    assert shape.examples == 18
    plans = packed_plan(f, shape, seed=0)
    per_batch = [int((p[:, 0] >= 0).sum()) for p in plans]
    assert 7 <= np.mean(per_batch) <= 11  # about the batch size, as buckets give exactly
    assert max(per_batch) <= shape.examples


@pytest.mark.parametrize("shuffle", [True, False])
def test_every_feature_once_and_rows_never_overflow(shuffle):
    f = _features()
    shape = pack_shape(f, 9)
    plans = packed_plan(f, shape, shuffle=shuffle, seed=4, epoch=1)
    seen = np.concatenate([p[p[:, 0] >= 0, 0] for p in plans])
    assert sorted(seen) == list(range(len(f)))
    for p in plans:
        real = p[p[:, 0] >= 0]
        for r in np.unique(real[:, 1]):
            mine = real[real[:, 1] == r]
            spans = sorted((t, t + f.lengths[i]) for i, _, t in mine)
            assert spans[0][0] == 0 and spans[-1][1] <= shape.length
            assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))  # end to end, no overlap, no gap


def test_collated_batch_keeps_each_example_apart():
    f = _features()
    shape = pack_shape(f, 9)
    plan = packed_plan(f, shape, seed=1)[0]
    batch = collate_packed(f, plan, shape)
    assert is_packed(batch)
    for key in ("input_ids", "token_type_ids", "attention_mask", "position_ids"):
        assert batch[key].shape == (shape.rows, shape.length) and batch[key].dtype == np.int32
    for key in ("cls_index", "weights", "index", "labels"):
        assert batch[key].shape == (shape.examples,)
    flat_ids, flat_seg = batch["input_ids"].reshape(-1), batch["attention_mask"].reshape(-1)
    flat_pos = batch["position_ids"].reshape(-1)
    for e, (i, r, t) in enumerate(plan):
        if i < 0:
            assert batch["weights"][e] == 0 and batch["index"][e] == -1
            continue
        n, at = f.lengths[i], batch["cls_index"][e]
        assert at == r * shape.length + t
        np.testing.assert_array_equal(flat_ids[at : at + n], f.input_ids[i])
        np.testing.assert_array_equal(flat_pos[at : at + n], np.arange(n))
        assert len(set(flat_seg[at : at + n])) == 1 and flat_seg[at] > 0  # one example number, not padding
        assert batch["labels"][e] == f.labels[i] and batch["weights"][e] == 1
    real_tokens = int(f.lengths[plan[plan[:, 0] >= 0, 0]].sum())
    assert int((batch["attention_mask"] > 0).sum()) == real_tokens


def test_order_depends_on_seed_and_epoch_only_and_resumes_mid_epoch():
    f = _features()
    shape = pack_shape(f, 9)
    a = packed_plan(f, shape, seed=3, epoch=2)
    assert all(np.array_equal(x, y) for x, y in zip(a, packed_plan(f, shape, seed=3, epoch=2)))
    assert not np.array_equal(a[0], packed_plan(f, shape, seed=3, epoch=3)[0])
    assert epoch_size(f, shape, 3, 2) == len(a)
    tail = list(packed_batches(f, shape, shuffle=True, seed=3, epoch=2, start=5))
    assert len(tail) == len(a) - 5
    np.testing.assert_array_equal(tail[0]["index"], collate_packed(f, a[5], shape)["index"])


def test_packing_computes_less_padding_than_buckets():
    f = _features(n=600)
    shape = pack_shape(f, 32)
    packed = len(packed_plan(f, shape, seed=0)) * shape.rows * shape.length
    bucketed = sum(length * len(rows) for length, rows in batch_plan(f, 32, buckets=buckets_for(f), shuffle=True))
    real = int(f.lengths.sum())
    assert packed / real < 1.1 < bucketed / real


def test_large_batches_hold_their_size_and_tiny_ones_do_not_pack():
    """The packer looks ahead far enough to fill a batch of any size (a window smaller than a batch once
    capped big batches and padded them 4x). A batch smaller than what one row holds does not pack: one
    row of 3 sentences would pad more than length buckets do."""
    f = _features(n=3000, seed=4)
    shape = pack_shape(f, 200)
    plans = packed_plan(f, shape, seed=0)
    per_batch = [int((p[:, 0] >= 0).sum()) for p in plans[:-1]]
    assert abs(np.mean(per_batch) / 200 - 1) < 0.15
    assert len(plans) * shape.rows * shape.length / int(f.lengths.sum()) < 1.1
    assert pack_shape(f, 3) is None


def test_regression_labels_and_refusals():
    f = _features(kind="regression")
    shape = pack_shape(f, 9)
    batch = next(packed_batches(f, shape))
    real = batch["index"] >= 0
    np.testing.assert_array_equal(batch["labels"][real], f.labels[batch["index"][real]])
    assert batch["labels"].dtype == np.float32
    tagging = Features(kind="tagging", max_length=16, input_ids=[np.ones(4, np.int32)],
                       token_type_ids=[np.zeros(4, np.int32)], lengths=np.array([4], np.int32),
                       example_index=np.zeros(1, np.int32))
    assert not packable(tagging)
    with pytest.raises(ValueError, match="do not pack"):
        pack_shape(tagging, 8)
    with pytest.raises(ValueError, match="more than the rows"):
        packed_plan(f, PackShape(2, 8, 4))


@needs_data
def test_sst2_train_packs_to_near_one_token_per_real_token(tokenizer):
    """On real SST-2 sentences packing computes on about 1.0 tokens per real token, buckets on 1.25."""
    task = get_task("sst2")
    f = encode(task, read_split(task, "train", GLUE / "SST-2", limit=6000), tokenizer)
    shape = pack_shape(f, 32)
    plans = packed_plan(f, shape, seed=0)
    ratio = len(plans) * shape.rows * shape.length / int(f.lengths.sum())
    assert ratio < 1.08
    assert abs(len(f) / len(plans) - 32) < 4  # about 32 examples a step
