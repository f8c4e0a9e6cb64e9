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

    forward = jax.jit(lambda p, ids, types, mask: teacher.model.apply({"params": p}, ids, types, mask).logits)
    want = np.zeros_like(got)
    for length in np.unique(features.lengths):
        rows = np.flatnonzero(features.lengths == length)
        batch = {
            "input_ids": np.stack([features.input_ids[i] for i in rows]),
            "token_type_ids": np.stack([features.token_type_ids[i] for i in rows]),
            "attention_mask": np.ones((len(rows), length), np.int32),
        }
        want[rows] = np.asarray(forward(teacher.params, *model_inputs(batch)))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
