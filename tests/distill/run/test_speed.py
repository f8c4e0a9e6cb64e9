"""`distill.run.training_speed`: a run's step and evaluation timed on its own batches, compilations untimed."""

from __future__ import annotations

import collections

import pytest
from helpers import sst2_rows, write_task_teacher, write_tsv

from distill.run import DistillConfig, LoopConfig, training_speed
from distill.run import speed as speed_module
from distill.train.loop import StepSchedule

STUDENT = "2L-24-H3-F30-D8"


@pytest.fixture(scope="module")
def sst2(tmp_path_factory):
    """SST-2 rows of 3 to 60 words (the sentence repeated), so length buckets make several shapes."""
    root = tmp_path_factory.mktemp("speed")
    rows = [[" ".join([s] * (1 + i % 10)), y] for i, (s, y) in enumerate(sst2_rows(140, seed=0))]
    for split, part in (("train", rows[:120]), ("dev", rows[120:])):
        write_tsv(root / "data" / f"{split}.tsv", ["sentence", "label"], part)
    return root / "data", write_task_teacher(root / "teacher", "sst2")


def spy_steps(monkeypatch) -> list[tuple[int, ...]]:
    """Record the batch shape of every step `training_speed` runs."""
    shapes, real = [], speed_module.step_schedule

    def wrap(step):
        def run(state, batch, *rest):
            shapes.append(tuple(batch["input_ids"].shape))
            return step(state, batch, *rest)
        return run

    monkeypatch.setattr(speed_module, "step_schedule",
                        lambda *a, **k: StepSchedule(tuple((s, wrap(f)) for s, f in real(*a, **k).entries)))
    return shapes


@pytest.mark.parametrize("packing", ["off", "on"])
def test_each_shapes_first_step_compiles_untimed_and_nothing_is_written(sst2, packing, tmp_path, monkeypatch):
    data, teacher = sst2
    monkeypatch.setenv("BERTNAS_CACHE", str(tmp_path / "cache"))
    shapes = spy_steps(monkeypatch)
    cfg = DistillConfig(task="sst2", teacher=str(teacher), student=STUDENT, data_dir=str(data),
                        loop=LoopConfig(epochs=1, batch_size=8, packing=packing))
    measured = training_speed(cfg, tmp_path / "run", steps=5)
    assert measured.timed_steps == 5 and measured.steps_per_second > 0 and measured.eval_seconds > 0
    distinct = set(shapes)
    counts = collections.Counter(shapes)
    assert len(shapes) == 5 + sum(min(c, 2) for c in counts.values())  # each shape's first two steps untimed
    assert (len(distinct) == 1) == (packing == "on")  # packed rows have one shape, buckets several
    assert not (tmp_path / "run").exists()  # the teacher is fine-tuned already: nothing to write
