"""`bertnas search` on a generic task: the user's files become absolute in the saved config (trials run in
directories of their own), a resumed search reads them back, and every trial's config carries them."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from helpers import STSB_HEADER, write_conll, write_sst2, write_stsb, write_tiny_teacher

from distill.run import evaluate_model, load_for_task, predict_table
from nas.config import SearchConfig
from nas.tune import _settle, base_distill_config, load_config
from tasks.features import encode
from tasks.readers import read_split
from tasks.registry import get_task
from tasks.userdata import DataSpec


def test_search_settles_a_generic_task_and_resumes_with_its_data(tmp_path, monkeypatch):
    teacher = write_tiny_teacher(tmp_path / "teacher")
    rows = "".join(f"{w} movie,{'pos' if w in ('good', 'fun') else 'neg'}\n" for w in ["good", "bad", "fun", "dull"] * 10)
    (tmp_path / "train.csv").write_text("review,sentiment\n" + rows)
    (tmp_path / "dev.csv").write_text("review,sentiment\ngood film,pos\nbad film,neg\n")
    monkeypatch.chdir(tmp_path)
    data = DataSpec(train_file="train.csv", dev_file="dev.csv", text_column="review", label_column="sentiment",
                    max_seq_length=24)
    cfg = SearchConfig(task="text-classification", teacher=str(teacher), data=data, space="tiny", strategy="trials",
                       num_samples=2)
    settled, _, task, data_dir = _settle(cfg, tmp_path / "out", resume=False)
    assert data_dir is None and task.labels == ("neg", "pos") and task.max_length == 24
    assert settled.data.train_file == str(tmp_path / "train.csv") and settled.validation == 4  # a tenth of 40
    assert load_config(tmp_path / "out") == settled
    base = base_distill_config(settled, data_dir)
    assert base.data == settled.data and base.data_dir is None


@pytest.mark.slow
def test_supernet_smoke_search_on_a_csv_exports_onnx_and_pushes_the_front(tmp_path, monkeypatch):
    """`bertnas search --task text-classification --train-file train.csv ... --export-onnx --push-to-hub`:
    the supernet strategy end to end on a user's CSV (`review`, `sentiment` neg/pos, the rows of a synthetic
    SST-2). Each exported member scores on dev what the benchmark reader gives on the same rows, its ONNX
    copy what onnxruntime gives, `predict` on the dev CSV agrees with its score, and the front (README.md
    listing it) is uploaded in one commit."""
    import ray

    from distill.export import card
    from nas.tune import search

    glue = write_sst2(tmp_path / "glue", n_train=300, n_dev=40)
    spec = DataSpec(train_file=str(tmp_path / "train.csv"), dev_file=str(tmp_path / "dev.csv"),
                    text_column="review", label_column="sentiment")
    for split in ("train", "dev"):
        rows = [line.split("\t") for line in (glue / f"{split}.tsv").read_text().splitlines()[1:]]
        with open(tmp_path / f"{split}.csv", "w", newline="") as fh:
            csv.writer(fh).writerows([["review", "sentiment"]] + [[t, ("neg", "pos")[int(y)]] for t, y in rows])
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(card, "is_offline_mode", lambda: False)
    monkeypatch.setattr(card, "get_token", lambda: "hf_fake")
    calls = []
    monkeypatch.setattr(card.HfApi, "create_repo", lambda self, repo, **kw: calls.append(("create", repo, kw)))
    monkeypatch.setattr(card.HfApi, "upload_folder", lambda self, **kw: calls.append(("upload", kw)))
    cfg = SearchConfig(
        task="text-classification", teacher=str(write_tiny_teacher(tmp_path / "teacher")), data=spec,
        space="tiny", num_samples=16, supernet_steps=12, latency_design=4, targets=(1.2, 1.5), validation=40,
        teacher_epochs=1, algorithm="random", seed=0, final_steps=16, final_augment=1, export_onnx=True,
        push_to_hub="me/front",
    )
    try:
        summary = search(cfg, tmp_path / "out")
    finally:
        ray.shutdown()

    trials = json.loads((tmp_path / "out" / "results.json").read_text())["trials"]
    exported = [r for r in trials if r.get("pareto") and r.get("export")]
    assert exported and any(r["status"] == "final" for r in exported)
    bench = get_task("sst2")
    bench_rows = read_split(bench, "dev", glue)
    dev_csv = [row for row in csv.DictReader(open(tmp_path / "dev.csv"))]
    for r in exported:
        loaded, task = load_for_task(r["export"])
        assert task.labels == ("neg", "pos") and task.text_columns == ("review",)
        theirs = evaluate_model(loaded.model, loaded.params, bench, encode(bench, bench_rows, loaded.tokenizer),
                                bench_rows)
        assert r["dev_metric"] == pytest.approx(theirs["accuracy"], abs=1e-9)
        onnx = r["onnx"]["float32"]
        assert Path(onnx["export"]).name == Path(r["export"]).name + "-onnx" and onnx["max_abs_diff"] < 1e-4
        assert onnx["dev_metric"] == pytest.approx(r["dev_metric"], abs=1 / 40 + 1e-9)  # a near-tie may flip
        predicted = predict_table(r["export"], tmp_path / "dev.csv", batch_size=128)  # as evaluate_dir batches
        right = sum(p["label"] == row["sentiment"] for p, row in zip(predicted, dev_csv))
        assert right / len(dev_csv) == pytest.approx(r["dev_metric"], abs=1e-9)
    readme = (tmp_path / "out" / "export" / "README.md").read_text()
    assert all(f"`{Path(r['export']).name}`" in readme for r in exported)
    assert [c[0] for c in calls] == ["create", "upload"] and calls[1][1]["folder_path"] == str(
        tmp_path / "out" / "export")
    assert summary["hub"] == "https://huggingface.co/me/front"
    assert json.loads((tmp_path / "out" / "results.json").read_text())["hub"] == summary["hub"]


def _stsb_jsonl(tmp_path):
    bench = write_stsb(tmp_path / "bench")
    names = STSB_HEADER
    for split in ("train", "dev"):
        rows = [dict(zip(names, line.split("\t"))) for line in (bench / f"{split}.tsv").read_text().splitlines()[1:]]
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(
            {"first": r["sentence1"], "second": r["sentence2"], "similarity": float(r["score"])}) + "\n" for r in rows))
    spec = DataSpec(train_file=str(tmp_path / "train.jsonl"), dev_file=str(tmp_path / "dev.jsonl"),
                    text_column="first", text_pair_column="second", label_column="similarity")
    return "text-regression", spec, "stsb", bench


def _conll_dataset(tmp_path):
    datasets = pytest.importorskip("datasets")
    bench = write_conll(tmp_path / "bench")
    conll = get_task("conll2003")
    ids = {t: i for i, t in enumerate(conll.labels)}
    features = datasets.Features({"tokens": datasets.List(datasets.Value("string")),
                                  "ner_tags": datasets.List(datasets.ClassLabel(names=list(conll.labels)))})
    splits = {}
    for ours, theirs in (("train", "train"), ("validation", "dev")):
        rows = read_split(conll, theirs, bench)
        splits[ours] = datasets.Dataset.from_dict(
            {"tokens": [list(e.tokens) for e in rows], "ner_tags": [[ids[t] for t in e.tags] for e in rows]},
            features=features)
    datasets.DatasetDict(splits).save_to_disk(str(tmp_path / "conll"))
    return "token-classification", DataSpec(dataset=str(tmp_path / "conll"), label_column="ner_tags"), "conll2003", bench


@pytest.mark.slow
@pytest.mark.parametrize("make", [_stsb_jsonl, _conll_dataset], ids=["stsb-jsonl", "conll-saved-dataset"])
def test_supernet_smoke_search_on_a_jsonl_and_a_saved_dataset(tmp_path, make):
    """The same search on a user's JSON lines of scored pairs (text-regression) and on a `save_to_disk`
    dataset of tagged words (token-classification): every exported member scores on dev what the benchmark
    reader (STS-B, CoNLL-2003) gives on the same rows."""
    import ray

    from nas.tune import search

    task_name, spec, bench_name, bench_dir = make(tmp_path)
    cfg = SearchConfig(
        task=task_name, teacher=str(write_tiny_teacher(tmp_path / "teacher")), data=spec, space="tiny",
        num_samples=8, supernet_steps=8, latency_design=4, targets=(1.2,), validation=30, teacher_epochs=1,
        algorithm="random", seed=0, final_steps=8, final_augment=0,
    )
    try:
        summary = search(cfg, tmp_path / "out")
    finally:
        ray.shutdown()
    assert summary["counts"]["scored"] >= 4
    trials = json.loads((tmp_path / "out" / "results.json").read_text())["trials"]
    exported = [r for r in trials if r.get("pareto") and r.get("export")]
    assert exported
    bench = get_task(bench_name)
    rows = read_split(bench, "dev", bench_dir)
    for r in exported:
        loaded, task = load_for_task(r["export"])
        assert task.name == task_name
        theirs = evaluate_model(loaded.model, loaded.params, bench, encode(bench, rows, loaded.tokenizer), rows)
        assert r["dev_metric"] == pytest.approx(theirs[bench.metric], abs=1e-6)
