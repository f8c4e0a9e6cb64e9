"""The generic tasks end to end: fine-tune, distil, evaluate, predict (and quantize) on a user's CSV, JSON lines file and
saved Hugging Face dataset, made from a few rows of the shared SST-2, STS-B and CoNLL-2003 data.

The teacher is the tiny random BERT of tests/helpers.py (its vocabulary knows few of the real words, so
the scores are near chance): what is checked is that each path runs and gives the metrics the benchmark
readers give on the same rows, exactly, and that the export carries the task (labels, columns, length)
so `evaluate` and `predict` rebuild it.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import write_tiny_teacher

from distill.export.int8 import quantize_export
from distill.export.scheme import QuantConfig
from distill.run import compare, evaluation
from distill.run.config import DistillConfig, FinetuneConfig
from distill.run.distillation import distill
from distill.run.evaluation import evaluate_dir, evaluate_model, load_for_task, paired_comparison, split_predictions
from distill.run.finetuning import finetune
from distill.run.prediction import predict_lines
from distill.train.loop import LoopConfig
from distill.train.optim import OptimizerConfig
from tasks.errors import UserError
from tasks.features import encode
from tasks.metrics import entity_f1, pearson
from tasks.readers import load_task, read_split
from tasks.registry import get_task
from tasks.userdata import DataSpec

SHARED = Path(__file__).resolve().parents[4] / "shared" / "data"
pytestmark = pytest.mark.skipif(not (SHARED / "glue" / "SST-2" / "dev.tsv").is_file(), reason="no shared data")
REPO = Path(__file__).resolve().parents[3]
STUDENT = "2L-24-H3-F30-D8"
LENGTH = 16  # --max-seq-length: few distinct batch shapes to compile


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return write_tiny_teacher(tmp_path_factory.mktemp("user-teacher") / "raw", max_position_embeddings=32)


def tune(task, teacher, tmp, name, **kw):
    cfg = FinetuneConfig(task=task, teacher=str(teacher), optimizer=OptimizerConfig(learning_rate=3e-3),
                         loop=LoopConfig(epochs=1, batch_size=8), **kw)
    return finetune(cfg, tmp / name, use_cache=False)


def distil(task, teacher_dir, tmp, spec):
    cfg = DistillConfig(task=task, teacher=str(teacher_dir), student=STUDENT, data=spec,
                        loop=LoopConfig(epochs=1, max_steps=2, batch_size=8, eval_every=2))
    return distill(cfg, tmp / "distill")


def same_metrics_as_benchmark(model_dir, spec, bench_name, bench_dir, n_dev):
    """The model scored through the generic reader and through the benchmark reader on the same rows."""
    ours = evaluate_dir(model_dir, spec=spec)
    loaded, _ = load_for_task(model_dir)
    bench, _ = load_task(bench_name, bench_dir, DataSpec(max_seq_length=LENGTH))
    rows = read_split(bench, "dev", bench_dir, limit=n_dev)
    theirs = evaluate_model(loaded.model, loaded.params, bench, encode(bench, rows, loaded.tokenizer), rows)
    for metric in bench.metric_names:
        assert ours[metric] == pytest.approx(theirs[metric], abs=1e-6), metric
    return ours


def test_sst2_csv_fine_tunes_distils_evaluates_and_predicts(teacher, tmp_path, monkeypatch):
    glue = get_task("sst2")
    train, dev = (read_split(glue, s, SHARED / "glue" / "SST-2", limit=n) for s, n in (("train", 16), ("dev", 12)))
    for name, rows in (("train", train), ("dev", dev)):
        with open(tmp_path / f"{name}.csv", "w", newline="") as fh:
            csv.writer(fh).writerows([["review", "sentiment"]] + [[e.text_a, ("neg", "pos")[int(e.label)]] for e in rows])
    spec = DataSpec(train_file=str(tmp_path / "train.csv"), dev_file=str(tmp_path / "dev.csv"), text_column="review",
                    label_column="sentiment", max_seq_length=LENGTH)
    ours = tune("text-classification", teacher, tmp_path, "ours", data=spec)
    same_metrics_as_benchmark(ours["teacher_dir"], DataSpec(dev_file=spec.dev_file), "sst2",
                              SHARED / "glue" / "SST-2", 12)
    meta = json.loads((Path(ours["teacher_dir"]) / "config.json").read_text())["bertnas"]
    assert (meta["labels"], meta["text_columns"], meta["label_column"], meta["max_length"]) == (
        ["neg", "pos"], ["review"], "sentiment", LENGTH)

    results = distil("text-classification", ours["teacher_dir"], tmp_path, spec)
    export = tmp_path / "distill" / "export"
    evaluated = same_metrics_as_benchmark(export, DataSpec(dev_file=spec.dev_file), "sst2",
                                          SHARED / "glue" / "SST-2", 12)
    assert evaluated["accuracy"] == results["best"]["accuracy"] and evaluated["examples"] == 12
    records = predict_lines(export, ["a gorgeous , witty , seductive movie .", "dull"])
    assert {r["label"] for r in records} <= {"neg", "pos"} and set(records[0]["probabilities"]) == {"neg", "pos"}

    # a reference whose labels are the model's in another order is refused, naming it, before either predicts
    renamed = tmp_path / "renamed"
    shutil.copytree(export, renamed)
    config = json.loads((renamed / "config.json").read_text())
    config["bertnas"]["labels"] = ["pos", "neg"]
    (renamed / "config.json").write_text(json.dumps(config))
    with monkeypatch.context() as m:
        m.setattr(evaluation, "task_outputs", lambda *a, **k: pytest.fail("a model predicted"))
        with pytest.raises(UserError, match=rf"--against {renamed}: its labels \['pos', 'neg'\] are not the model's"):
            paired_comparison(export, renamed, spec=DataSpec(dev_file=spec.dev_file))

    # quantize --evaluate on the same CSV: both models scored on its rows, the int8 one as `evaluate` scores it
    quantize_export(export, tmp_path / "int8", QuantConfig())
    both = compare(export, tmp_path / "int8", spec=DataSpec(dev_file=spec.dev_file))
    assert both["float32"]["accuracy"] == evaluated["accuracy"] and both["float32"]["examples"] == 12
    int8 = evaluate_dir(tmp_path / "int8", spec=DataSpec(dev_file=spec.dev_file))
    assert both["int8"]["accuracy"] == int8["accuracy"] and 0 <= both["agreement"] <= 1


def test_stsb_jsonl_regression_end_to_end(teacher, tmp_path):
    rows = read_split(get_task("stsb"), "dev", SHARED / "glue" / "STS-B", limit=16)
    (tmp_path / "sts.jsonl").write_text("".join(
        json.dumps({"first": e.text_a, "second": e.text_b, "similarity": e.label}) + "\n" for e in rows))
    spec = DataSpec(train_file=str(tmp_path / "sts.jsonl"), dev_file=str(tmp_path / "sts.jsonl"), text_column="first",
                    text_pair_column="second", label_column="similarity", max_seq_length=LENGTH)
    ours = tune("text-regression", teacher, tmp_path, "ours", data=spec)
    same_metrics_as_benchmark(ours["teacher_dir"], DataSpec(dev_file=spec.dev_file), "stsb",
                              SHARED / "glue" / "STS-B", 16)
    results = distil("text-regression", ours["teacher_dir"], tmp_path, spec)
    evaluated = evaluate_dir(tmp_path / "distill" / "export", spec=DataSpec(dev_file=spec.dev_file))
    assert evaluated["pearson"] == pytest.approx(results["best"]["pearson"])
    task, preds, refs = split_predictions(tmp_path / "distill" / "export", spec=DataSpec(dev_file=spec.dev_file))
    assert task.kind == "regression" and len(preds) == len(refs) == 16  # one per example, as paired tests read
    assert pearson(preds, refs) == pytest.approx(evaluated["pearson"])
    records = predict_lines(tmp_path / "distill" / "export", [f"{rows[0].text_a}\t{rows[0].text_b}"])
    assert isinstance(records[0]["score"], float)


def test_conll_saved_dataset_tagging_end_to_end(teacher, tmp_path):
    datasets = pytest.importorskip("datasets")
    conll = get_task("conll2003")
    ids = {t: i for i, t in enumerate(conll.labels)}
    features = datasets.Features({"tokens": datasets.List(datasets.Value("string")),
                                  "ner_tags": datasets.List(datasets.ClassLabel(names=list(conll.labels)))})
    splits = {}
    for ours, theirs, n in (("train", "train", 16), ("validation", "dev", 12)):
        rows = read_split(conll, theirs, SHARED / "conll2003", limit=n)
        splits[ours] = datasets.Dataset.from_dict(
            {"tokens": [list(e.tokens) for e in rows], "ner_tags": [[ids[t] for t in e.tags] for e in rows]},
            features=features)
    datasets.DatasetDict(splits).save_to_disk(str(tmp_path / "conll"))
    spec = DataSpec(dataset=str(tmp_path / "conll"), label_column="ner_tags", max_seq_length=LENGTH)
    ours = tune("token-classification", teacher, tmp_path, "ours", data=spec)
    same_metrics_as_benchmark(ours["teacher_dir"], DataSpec(dataset=spec.dataset), "conll2003",
                              SHARED / "conll2003", 12)
    results = distil("token-classification", ours["teacher_dir"], tmp_path, spec)
    evaluated = evaluate_dir(tmp_path / "distill" / "export", spec=DataSpec(dataset=spec.dataset))
    assert evaluated["f1"] == pytest.approx(results["best"]["f1"])
    _, preds, refs = split_predictions(tmp_path / "distill" / "export", spec=DataSpec(dataset=spec.dataset))
    assert len(preds) == len(refs) == 12 and entity_f1(preds, refs) == pytest.approx(evaluated["f1"])
    records = predict_lines(tmp_path / "distill" / "export", ["EU rejects German call"])
    assert records[0]["words"] == ["EU", "rejects", "German", "call"] and set(records[0]["tags"]) <= set(conll.labels)


def test_bad_user_data_is_one_line_and_exit_2(teacher, tmp_path):
    (tmp_path / "train.csv").write_text("text,label\ngood,pos\nbad,\n")
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "finetune_teacher.py"), "--task", "text-classification",
         "--train-file", str(tmp_path / "train.csv"), "--dev-file", str(tmp_path / "train.csv"),
         "--teacher", str(teacher), "--output", str(tmp_path / "out")],
        cwd=REPO, capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu"},
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == f"error: {tmp_path / 'train.csv'}:3: empty label in column 'label'"
    assert not (tmp_path / "out").exists()
