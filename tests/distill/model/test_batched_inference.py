"""Batched inference on fitted length buckets gives every example the logits it gets alone, on the real teacher.

A bucket pads each sentence to its bucket length and fills the last batch of a bucket with dummy rows;
neither may change a real example's outputs. Reference: each example run without any padding (examples
of one length share a call, since rows do not interact).
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import pytest

from distill.model.infer import model_inputs, predict
from distill.model.store import load_bert
from tasks.batching import batches, buckets_for
from tasks.features import encode
from tasks.packing import PackShape, packed_batches, packed_plan
from tasks.readers import read_split
from tasks.registry import get_task

GLUE = Path(__file__).resolve().parents[4] / "shared" / "data" / "glue"


@pytest.mark.skipif(not (GLUE / "SST-2" / "dev.tsv").is_file(), reason=f"shared data not found at {GLUE}")
@pytest.mark.parametrize("task_name, folder", [("sst2", "SST-2"), ("stsb", "STS-B")])
def test_bucketed_logits_equal_unpadded_ones(task_name, folder):
    task = get_task(task_name)
    teacher = load_bert("minilm", head=task.kind, num_labels=task.num_labels, seed=0)
    features = encode(task, read_split(task, "dev", GLUE / folder, limit=40), teacher.tokenizer)
    buckets = buckets_for(features)
    assert len(buckets) > 1  # the real lengths spread over several buckets
    got = predict(teacher.model, teacher.params, batches(features, 16), len(features), features.max_length)

    np.testing.assert_allclose(got, _unpadded_logits(teacher, features), rtol=0, atol=1e-5)


@pytest.mark.skipif(not (GLUE / "SST-2" / "dev.tsv").is_file(), reason=f"shared data not found at {GLUE}")
@pytest.mark.parametrize("task_name, folder", [("sst2", "SST-2"), ("stsb", "STS-B")])
def test_packed_logits_equal_unpadded_ones(task_name, folder):
    """Several real sentences per row (attention within each, positions restarting, each one's own [CLS])
    give each sentence the logits it gets alone, to 1e-5: the real teacher, SST-2 and STS-B dev."""
    task = get_task(task_name)
    teacher = load_bert("minilm", head=task.kind, num_labels=task.num_labels, seed=0)
    features = encode(task, read_split(task, "dev", GLUE / folder, limit=40), teacher.tokenizer)
    shape = PackShape(rows=3, length=int(features.lengths.max()) + 9, examples=12)
    plans = packed_plan(features, shape, shuffle=True, seed=3)
    assert max(np.bincount(p[p[:, 0] >= 0, 1]).max() for p in plans) > 1  # rows do hold several sentences
    got = predict(teacher.model, teacher.params, packed_batches(features, shape, shuffle=True, seed=3),
                  len(features), features.max_length)
    np.testing.assert_allclose(got, _unpadded_logits(teacher, features), rtol=0, atol=1e-5)


def _unpadded_logits(teacher, features) -> np.ndarray:
    """Each feature's logits from batches of features of one length (no padding at all)."""
    forward = jax.jit(lambda p, batch: teacher.model.apply({"params": p}, **model_inputs(batch)).logits)
    want = None
    for length in np.unique(features.lengths):
        rows = np.flatnonzero(features.lengths == length)
        batch = {
            "input_ids": np.stack([features.input_ids[i] for i in rows]),
            "token_type_ids": np.stack([features.token_type_ids[i] for i in rows]),
            "attention_mask": np.ones((len(rows), length), np.int32),
        }
        logits = np.asarray(forward(teacher.params, batch))
        if want is None:
            want = np.zeros((len(features),) + logits.shape[1:], np.float32)
        want[rows] = logits
    return want
