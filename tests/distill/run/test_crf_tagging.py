"""CRF taggers end to end on the synthetic CoNLL data of tests/helpers.py:
fine-tuning a CRF teacher, distilling a CRF student from it, export and reload.

The teacher is the random 2-layer, hidden-36 BERT of `write_tiny_teacher`;
the student is 2L-24-H3-F30-D8.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest
from helpers import write_conll, write_sst2, write_tiny_teacher

from distill.arch import resolve_student
from distill.export.hf import export_model
from distill.export.load import load_export
from distill.kd.init import InitConfig, init_student
from distill.kd.objective import LossConfig
from distill.model.store import load_bert, read_weights
from distill.run.config import DistillConfig, FinetuneConfig
from distill.run.distillation import distill
from distill.run.evaluation import evaluate_model, task_outputs
from distill.run.finetuning import finetune
from distill.run.prediction import predict_lines, split_words
from distill.train.loop import LoopConfig
from distill.train.optim import OptimizerConfig
from tasks.errors import UserError
from tasks.features import encode
from tasks.readers import read_split
from tasks.registry import get_task

STUDENT = "2L-24-H3-F30-D8"
TASK = get_task("conll2003")


@pytest.fixture(scope="module")
def crf_teacher(tmp_path_factory):
    """(data dir, fine-tuned CRF teacher dir, fine-tuning results)."""
    root = tmp_path_factory.mktemp("crf")
    data = write_conll(root / "data", n_train=150, n_dev=30)
    raw = write_tiny_teacher(root / "raw")
    cfg = FinetuneConfig(
        task="conll2003", teacher=str(raw), data_dir=str(data),
        optimizer=OptimizerConfig(learning_rate=3e-3), crf=True, loop=LoopConfig(epochs=3, batch_size=16),
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BERTNAS_CACHE", str(root / "cache"))
        results = finetune(cfg, root / "out")
    return data, Path(results["teacher_dir"]), results


def test_crf_teacher_learns_and_saves_its_crf(crf_teacher):
    data, teacher_dir, results = crf_teacher
    # Measured (seeds 0-2): dev F1 about 0.2 after epoch 1, 1.0 from epoch 2 on; random tags score near 0.
    assert results["best"]["f1"] >= 0.8
    teacher = load_bert(teacher_dir)
    assert teacher.crf and teacher.model.crf and teacher.meta["crf"] is True
    assert results["num_params"] == teacher.arch.num_params("tagging", 9, crf=True)
    trans = np.asarray(teacher.params["crf"]["transitions"])
    assert np.abs(trans).max() > 0  # trained away from its zero init
    assert {"crf.transitions", "crf.start", "crf.end"} <= set(read_weights(teacher_dir))
    # Reloaded, it scores what the run recorded.
    dev_ex = read_split(TASK, "dev", data)
    again = evaluate_model(teacher.model, teacher.params, TASK, encode(TASK, dev_ex, teacher.tokenizer), dev_ex)
    assert again["f1"] == results["best"]["f1"]


def test_crf_flag_changes_the_cache_key_only_when_set(crf_teacher):
    plain = FinetuneConfig(task="conll2003")
    assert "crf" not in plain.cache_settings()  # teachers cached before the flag keep their key
    assert FinetuneConfig(task="conll2003", crf=True).cache_settings()["crf"] is True


def test_export_reload_gives_identical_predictions(crf_teacher, tmp_path):
    data, teacher_dir, _ = crf_teacher
    teacher = load_bert(teacher_dir)
    summary = export_model(tmp_path / "export", teacher.arch, teacher.params, teacher.tokenizer, TASK)
    assert summary["num_params"] == teacher.arch.num_params("tagging", 9, crf=True)
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    assert config["bertnas"]["crf"] is True
    loaded = load_export(tmp_path / "export")
    assert loaded.crf and loaded.model.crf
    for name, value in teacher.params["crf"].items():
        np.testing.assert_array_equal(np.asarray(loaded.params["crf"][name]), np.asarray(value))
    dev_ex = read_split(TASK, "dev", data)
    dev = encode(TASK, dev_ex, teacher.tokenizer)
    before = task_outputs(teacher.model, teacher.params, TASK, dev)
    after = task_outputs(loaded.model, loaded.params, TASK, dev)
    assert before.dtype.kind == "i"  # Viterbi tag ids, not logits
    np.testing.assert_array_equal(before, after)
    lines = [" ".join(e.tokens) for e in dev_ex[:5]]
    records = predict_lines(tmp_path / "export", lines)
    assert [r["words"] for r in records] == [list(e.tokens) for e in dev_ex[:5]]
    assert sum(r["tags"] == list(e.tags) for r, e in zip(records, dev_ex[:5])) >= 4


def test_crf_student_inherits_the_teachers_crf(crf_teacher, tmp_path, monkeypatch):
    data, teacher_dir, _ = crf_teacher
    teacher = load_bert(teacher_dir)
    monkeypatch.setenv("BERTNAS_CACHE", str(tmp_path / "cache"))
    cfg = DistillConfig(
        task="conll2003", teacher=str(teacher_dir), student=STUDENT, data_dir=str(data),
        # No weight decay: the transitions can only move through the CRF's gradient.
        loss=LossConfig(hard_weight=0.5), optimizer=OptimizerConfig(learning_rate=3e-3, weight_decay=0.0),
        loop=LoopConfig(epochs=2, batch_size=16, checkpoint_every=20),
    )
    results = distill(cfg, tmp_path / "out")
    assert results["crf"] is True  # inherited: cfg.crf is None
    student_arch = resolve_student(STUDENT, teacher.arch)
    assert results["student_params"] == student_arch.num_params("tagging", 9, crf=True)
    assert results["best"]["f1"] >= 0.9  # measured 1.0 after each epoch (seeds 0-2)
    loaded = load_export(tmp_path / "out" / "export")
    assert loaded.crf and json.loads((tmp_path / "out" / "export" / "config.json").read_text())["bertnas"]["crf"]
    # The hard term is the CRF's: the student's transitions moved from the teacher's.
    assert not np.array_equal(np.asarray(loaded.params["crf"]["transitions"]),
                              np.asarray(teacher.params["crf"]["transitions"]))


def test_student_crf_starts_from_the_teachers(crf_teacher):
    _, teacher_dir, _ = crf_teacher
    teacher = load_bert(teacher_dir)
    arch = resolve_student(STUDENT, teacher.arch)
    with_crf = init_student(arch, teacher.arch, teacher.params, head="tagging", num_labels=9, crf=True)
    for name, value in teacher.params["crf"].items():
        np.testing.assert_array_equal(with_crf["crf"][name], np.asarray(value))
    assert "crf" not in init_student(arch, teacher.arch, teacher.params, head="tagging", num_labels=9)
    random = init_student(arch, teacher.arch, jax.device_get(teacher.params), head="tagging", num_labels=9, crf=True,
                          cfg=InitConfig(method="random"))
    assert np.all(random["crf"]["transitions"] == 0)


def test_no_crf_student_from_a_crf_teacher(crf_teacher, tmp_path, monkeypatch):
    data, teacher_dir, _ = crf_teacher
    monkeypatch.setenv("BERTNAS_CACHE", str(tmp_path / "cache"))
    cfg = DistillConfig(
        task="conll2003", teacher=str(teacher_dir), student=STUDENT, data_dir=str(data), crf=False,
        loss=LossConfig(hard_weight=0.5), loop=LoopConfig(max_steps=3, batch_size=16),
    )
    results = distill(cfg, tmp_path / "out")
    assert results["crf"] is False
    assert not load_export(tmp_path / "out" / "export").crf


def test_a_crf_student_without_the_hard_loss_is_a_user_error(crf_teacher, tmp_path, monkeypatch):
    data, teacher_dir, _ = crf_teacher
    monkeypatch.setenv("BERTNAS_CACHE", str(tmp_path / "cache"))
    for crf in (None, True):  # inherited from the teacher, or asked for
        cfg = DistillConfig(task="conll2003", teacher=str(teacher_dir), student=STUDENT, data_dir=str(data), crf=crf,
                            loss=LossConfig(hard_weight=0.0), loop=LoopConfig(max_steps=3, batch_size=16))
        with pytest.raises(UserError, match="--hard-weight is 0"):
            distill(cfg, tmp_path / f"out-{crf}")
        assert not (tmp_path / f"out-{crf}" / "export").exists()


def test_a_model_with_other_labels_is_refused_for_the_task(crf_teacher, tmp_path):
    # Same head and label count as conll2003, other tag order (as the generic `ner` task sorts them).
    import shutil

    from distill.run.evaluation import load_for_task

    _, teacher_dir, _ = crf_teacher
    other = tmp_path / "other"
    shutil.copytree(teacher_dir, other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["bertnas"]["labels"] = sorted(cfg["bertnas"]["labels"])
    (other / "config.json").write_text(json.dumps(cfg))
    assert load_for_task(teacher_dir, "conll2003")[1].name == "conll2003"
    with pytest.raises(UserError, match="are not task conll2003's"):
        load_for_task(other, "conll2003")


def test_crf_on_a_task_that_is_not_tagging_is_a_user_error(tmp_path):
    data = write_sst2(tmp_path / "data", n_train=8, n_dev=4)
    with pytest.raises(UserError, match="--crf: task sst2 is classification"):
        finetune(FinetuneConfig(task="sst2", data_dir=str(data), crf=True), tmp_path / "ft")
    with pytest.raises(UserError, match="--crf: task sst2 is classification"):
        distill(DistillConfig(task="sst2", data_dir=str(data), crf=True), tmp_path / "d")
    assert not (tmp_path / "ft").exists() and not (tmp_path / "d").exists()


def test_predict_splits_cjk_characters_into_words():
    words = ("张", "三", "在", "北", "京", "Paris", "工", "作", "。", "ok")
    assert split_words("张三在北京 Paris工作。 ok") == words
    assert split_words("John  lives in Paris") == ("John", "lives", "in", "Paris")
