"""distill/run/data.py: a run with more augmented copies labels only the copies a run with fewer did not."""

from __future__ import annotations

import dataclasses

import numpy as np
from helpers import write_sst2, write_task_teacher

from distill.kd.augment import AugmentConfig
from distill.model.store import load_bert
from distill.run.config import DistillConfig
from distill.run.data import Stage, label_prefixes, read_data, teacher_labels, training_features
from tasks.registry import get_task


def test_more_copies_label_only_the_new_ones(tmp_path, monkeypatch):
    monkeypatch.setenv("BERTNAS_CACHE", str(tmp_path / "cache"))
    data = write_sst2(tmp_path / "data", n_train=37, n_dev=7)
    teacher = load_bert(str(write_task_teacher(tmp_path / "teacher", "sst2")))
    task = get_task("sst2")
    base = DistillConfig(task="sst2", teacher=str(teacher.path), data_dir=str(data), eval_batch_size=16)
    train_ex, _, _ = read_data(base, task, data)

    def run(copies: int, use_cache: bool = True):
        cfg = dataclasses.replace(base, augment=AugmentConfig(copies=copies, replace_prob=0.5))
        train, original, _ = training_features(cfg, task, teacher, train_ex, Stage())
        prefixes = label_prefixes(train, original, copies)
        return train, prefixes, teacher_labels(cfg, task, teacher, train, original=original, use_cache=use_cache)

    n = len(train_ex)  # one feature per SST-2 example
    assert label_prefixes(*run(0)[:1], None, 0) == ()
    one, prefixes, first = run(1)
    assert prefixes == (n,) and first.labelled == n, "the originals are cached (copies 0), the copies labelled"
    two, prefixes, second = run(2)
    assert prefixes == (n, 2 * n) and len(two) == 3 * n
    assert second.labelled == n, "only the second copies go through the teacher"
    assert all(np.array_equal(a, b) for a, b in zip(two.input_ids, one.input_ids)), "one copy's features lead two's"
    _, _, fresh = run(2, use_cache=False)
    np.testing.assert_allclose(second.logits, fresh.logits, atol=1e-5)
