"""The teacher's importance scores, cached on disk as plain arrays (no pickle) and recomputed when unreadable."""

from __future__ import annotations

import os

import numpy as np
from helpers import write_sst2, write_task_teacher


def _setup(tmp_path):
    from distill.model.store import load_bert
    from distill.run.config import DistillConfig
    from distill.run.data import Stage, read_data, training_features
    from tasks.registry import get_task

    data = write_sst2(tmp_path / "data", n_train=60, n_dev=10)
    teacher = load_bert(str(write_task_teacher(tmp_path / "teacher", "sst2")))
    cfg = DistillConfig(task="sst2", teacher=str(teacher.path), data_dir=str(data))
    task = get_task("sst2")
    train_ex, _, _ = read_data(cfg, task, data)
    train, _, _ = training_features(cfg, task, teacher, train_ex, Stage())
    return cfg, task, teacher, train


def test_importance_scores_are_cached_as_arrays_and_reused(tmp_path):
    from distill.files import cache_root
    from distill.kd.importance import cached_importance

    cfg, task, teacher, train = _setup(tmp_path)
    first = cached_importance(teacher, train, task.name, task.kind, seed=cfg.loop.seed, num_batches=cfg.init.importance_batches)
    (path,) = (cache_root() / "importance").iterdir()
    assert path.suffix == ".npz"
    with np.load(path, allow_pickle=False) as z:  # loads with pickling refused
        assert sorted(z.files) == ["ffn_0", "ffn_1", "heads_0", "heads_1", "hidden"]
    stamp = path.stat().st_mtime_ns
    again = cached_importance(teacher, train, task.name, task.kind, seed=cfg.loop.seed, num_batches=cfg.init.importance_batches)
    assert path.stat().st_mtime_ns == stamp
    assert [a.shape for a in again["heads"]] == [(3,), (3,)] and [a.shape for a in again["ffn"]] == [(37,), (37,)]
    for k in ("heads", "ffn"):
        for a, b in zip(first[k], again[k]):
            np.testing.assert_array_equal(np.asarray(a), b)
    np.testing.assert_array_equal(np.asarray(first["hidden"]), again["hidden"])


def test_a_corrupt_importance_cache_is_recomputed(tmp_path, caplog):
    from distill.files import cache_root
    from distill.kd.importance import cached_importance

    cfg, task, teacher, train = _setup(tmp_path)
    first = cached_importance(teacher, train, task.name, task.kind, seed=cfg.loop.seed, num_batches=cfg.init.importance_batches)
    (path,) = (cache_root() / "importance").iterdir()
    path.write_bytes(b"not an npz file")
    again = cached_importance(teacher, train, task.name, task.kind, seed=cfg.loop.seed, num_batches=cfg.init.importance_batches)
    assert "unreadable importance cache" in caplog.text
    np.testing.assert_allclose(np.asarray(first["hidden"]), again["hidden"], rtol=1e-6)
    assert os.path.getsize(path) > 100  # rewritten
