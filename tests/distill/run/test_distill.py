"""End-to-end distillation on tiny synthetic data: `distill.run.distill`.

The teacher is a tiny BERT (2 layers, hidden 36, 3 heads) fine-tuned on the
synthetic SST-2 of tests/helpers.py; the student has hidden 24, head size 8.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import jax
import numpy as np
import pytest
from helpers import write_conll, write_sst2, write_stsb, write_task_teacher, write_tiny_teacher

from distill.arch import resolve_student
from distill.export.load import load_export
from distill.kd.augment import AugmentConfig
from distill.kd.init import InitConfig
from distill.kd.objective import PROJ, LossConfig
from distill.kd.outputs import hidden_bytes
from distill.model.bert import abstract_params
from distill.model.store import load_bert
from distill.run import distillation
from distill.run.config import DistillConfig, FinetuneConfig
from distill.run.distillation import distill, ensure_export, teacher_online
from distill.run.evaluation import evaluate_dir, paired_comparison, predict_features, split_predictions
from distill.run.finetuning import finetune
from distill.train.checkpoint import Checkpointer
from distill.train.loop import LoopConfig
from distill.train.optim import OptimizerConfig, averaged
from distill.train.steps import TrainState
from tasks.errors import UserError
from tasks.features import encode
from tasks.metrics import entity_f1
from tasks.readers import read_split
from tasks.registry import get_task

STUDENT = "2L-24-H3-F30-D8"


@pytest.fixture(scope="module")
def sst2(tmp_path_factory):
    """(data dir, fine-tuned teacher dir); the teacher reaches dev accuracy 1.0 (see test_finetune)."""
    root = tmp_path_factory.mktemp("distill-sst2")
    data = write_sst2(root / "data", n_train=200, n_dev=40)
    raw = write_tiny_teacher(root / "raw")
    cfg = FinetuneConfig(
        task="sst2", teacher=str(raw), data_dir=str(data),
        optimizer=OptimizerConfig(learning_rate=3e-3), loop=LoopConfig(epochs=6, batch_size=16),
    )
    results = finetune(cfg, root / "teacher-run", use_cache=False)
    assert results["best"]["accuracy"] >= 0.9
    return data, Path(results["teacher_dir"])


def config(teacher, data, **kw) -> DistillConfig:
    base = dict(
        task="sst2", teacher=str(teacher), student=STUDENT, data_dir=str(data),
        optimizer=OptimizerConfig(learning_rate=3e-3),
        loop=LoopConfig(epochs=4, batch_size=16, checkpoint_every=10),
    )
    return DistillConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def sst2_run(sst2, tmp_path_factory):
    data, teacher = sst2
    root = tmp_path_factory.mktemp("run")
    cfg = config(teacher, data, loss=LossConfig(hard_weight=0.5, hidden_weight=1.0))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BERTNAS_CACHE", str(root / "cache"))  # shared with test_teacher_outputs_are_cached_across_runs
        return cfg, root / "out", distill(cfg, root / "out")


def test_student_learns_from_teacher_and_run_dir_is_complete(sst2_run):
    cfg, out, results = sst2_run
    assert results["teacher_dev"]["accuracy"] >= 0.9
    assert results["best"]["accuracy"] >= 0.85  # chance is 0.5
    assert results["student_params"] < results["teacher_params"]
    assert results["student_flops"] < results["teacher_flops"]
    assert results["layer_map"] == [0, 1]
    assert results["seconds"]["labelling"] > 0 and results["seconds"]["distill"] > 0
    for name in ("config.json", "metrics.jsonl", "results.json"):
        assert (out / name).is_file()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "train_loss" in r]
    assert train and {"train_logits", "train_hard", "train_hidden"} <= set(train[-1])
    assert json.loads((out / "config.json").read_text())["student_arch"]["hidden_size"] == 24


def test_export_holds_the_best_student_and_matches_its_checkpoint(sst2_run, sst2):
    cfg, out, results = sst2_run
    data, _ = sst2
    export = out / "export"
    names = {p.name for p in export.iterdir()}
    assert "model.safetensors" in names and "config.json" in names
    assert not any("opt" in n or "checkpoint" in n for n in names)
    summary = results["export"]
    # float32 parameters and a small header, nothing else (the real-size <= 4.1 check is in test_export)
    assert summary["stored_params"] == summary["num_params"]
    assert 0 <= summary["weight_bytes"] - 4 * summary["num_params"] < 16384
    meta = json.loads((export / "config.json").read_text())["bertnas"]
    assert meta["task"] == "sst2" and meta["dev"]["accuracy"] == results["best"]["accuracy"]

    loaded = load_export(export)
    assert loaded.arch == resolve_student(STUDENT, loaded.arch)
    task = get_task("sst2")
    dev_ex = read_split(task, "dev", data)
    dev = encode(task, dev_ex, loaded.tokenizer)
    exported = predict_features(loaded.model, loaded.params, dev)
    assert ((exported.argmax(-1) == dev.labels).mean()) == results["best"]["accuracy"]

    # The best checkpoint (student + projection + optimizer state) restores to the same predictions.
    ckpt = Checkpointer(out / "checkpoints")
    like = {**abstract_params(loaded.model), PROJ: {"kernel": np.zeros((24, 36), np.float32), "bias": np.zeros(36, np.float32)}}
    restored = ckpt.restore_params(ckpt.best_step(), like)
    ckpt.close()
    assert ckpt.best_step() == results["best"]["step"]
    student = {k: v for k, v in restored.items() if k != PROJ}
    np.testing.assert_array_equal(predict_features(loaded.model, student, dev), exported)


def test_export_is_redone_when_it_misses_the_best_step(sst2_run, tmp_path):
    """A run killed between exporting a new best and checkpointing it must not end with a stale export."""
    import shutil

    cfg, out, results = sst2_run
    run = tmp_path / "copy"
    shutil.copytree(out, run)
    config_file = run / "export" / "config.json"
    meta = json.loads(config_file.read_text())
    meta["bertnas"]["dev"]["step"] = -1  # as if the export came from another step
    config_file.write_text(json.dumps(meta))
    loaded = load_export(out / "export")
    like = {**abstract_params(loaded.model), PROJ: {"kernel": np.zeros((24, 36)), "bias": np.zeros(36)}}
    summary = ensure_export(run / "export", run, loaded.arch, get_task("sst2"), state_like(cfg, like), results["best"],
                            loaded.tokenizer, {})
    assert json.loads(config_file.read_text())["bertnas"]["dev"]["step"] == results["best"]["step"]
    assert summary["num_params"] == results["student_params"]
    again = load_export(run / "export")
    for a, b in zip(jax.tree.leaves(loaded.params), jax.tree.leaves(again.params)):
        np.testing.assert_array_equal(a, b)


def state_like(cfg: DistillConfig, like) -> TrainState:
    """A train state of `cfg`'s optimizer over parameters shaped as `like` (to restore checkpoints onto)."""
    params = jax.tree.map(lambda x: np.zeros(x.shape, np.float32), like)
    return TrainState.create(params, cfg.optimizer.build(params, 100, 2))


def test_a_moving_average_is_what_is_evaluated_and_exported(sst2, tmp_path):
    """`ema`: the export holds the average the optimizer state carries at the best step (not the weights),
    the evaluation that chose it saw that average, and a stale export is redone from it."""
    data, teacher = sst2
    cfg = config(teacher, data, loss=LossConfig(hard_weight=0.5),
                 optimizer=OptimizerConfig(learning_rate=3e-3, ema=0.9), loop=LoopConfig(epochs=2, batch_size=16))
    results = distill(cfg, tmp_path / "run")
    assert results["best"]["accuracy"] >= 0.85  # chance is 0.5
    loaded = load_export(tmp_path / "run" / "export")
    dev = encode(get_task("sst2"), read_split(get_task("sst2"), "dev", data), loaded.tokenizer)
    assert (predict_features(loaded.model, loaded.params, dev).argmax(-1) == dev.labels).mean() == \
        results["best"]["accuracy"]

    like = state_like(cfg, abstract_params(loaded.model))
    ckpt = Checkpointer(tmp_path / "run" / "checkpoints")
    params, opt_state, _ = ckpt.restore(results["best"]["step"], like.params, like.opt_state)
    ckpt.close()
    average = averaged(params, opt_state)
    for a, e in zip(jax.tree.leaves(average), jax.tree.leaves(loaded.params)):
        np.testing.assert_array_equal(e, a)
    assert not all(np.allclose(w, e) for w, e in zip(jax.tree.leaves(params), jax.tree.leaves(loaded.params)))

    meta_file = tmp_path / "run" / "export" / "config.json"
    meta = json.loads(meta_file.read_text())
    meta["bertnas"]["dev"]["step"] = -1  # as if the export came from another step
    meta_file.write_text(json.dumps(meta))
    ensure_export(tmp_path / "run" / "export", tmp_path / "run", loaded.arch, get_task("sst2"), like,
                  results["best"], loaded.tokenizer, {})
    for a, b in zip(jax.tree.leaves(loaded.params), jax.tree.leaves(load_export(tmp_path / "run" / "export").params)):
        np.testing.assert_array_equal(a, b)


def test_teacher_outputs_are_cached_across_runs(sst2_run, sst2, tmp_path, monkeypatch):
    cfg, out, first = sst2_run
    data, teacher = sst2
    monkeypatch.setenv("BERTNAS_CACHE", str(out.parent / "cache"))
    again = distill(config(teacher, data, loss=LossConfig(), loop=LoopConfig(max_steps=3, batch_size=16)), tmp_path / "o")
    assert first["seconds"]["labelling"] > 0
    assert again["seconds"]["labelling"] == 0  # logits come from the cache written by the first run
    assert again["steps"] == 3


def test_an_online_teacher_trains_as_its_cached_outputs_do(sst2_run, tmp_path, monkeypatch):
    """`teacher_outputs='online'`: the teacher runs in every step instead of labelling the training set once;
    the losses are the cached run's (whose hidden states were stored in bfloat16), nothing is labelled or
    cached, results.json says which it was, and the run resumes as a cached one (the same run key)."""
    cfg, out, cached = sst2_run
    monkeypatch.setenv("BERTNAS_CACHE", str(tmp_path / "cache"))
    online = distill(dataclasses.replace(cfg, teacher_outputs="online"), tmp_path / "online")
    assert (cached["teacher_outputs"], online["teacher_outputs"]) == ("cached", "online")
    assert online["seconds"]["labelling"] == 0 and not (tmp_path / "cache" / "outputs").exists()

    def first_record(run: Path) -> dict:
        return next(r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "train_loss" in r)

    a, b = first_record(out), first_record(tmp_path / "online")
    assert a["step"] == b["step"]
    for term in ("train_logits", "train_hard", "train_hidden"):
        assert b[term] == pytest.approx(a[term], rel=1e-2), term
    assert online["best"]["accuracy"] >= 0.85  # the cached run's bar
    again = distill(dataclasses.replace(cfg, teacher_outputs="cached"), tmp_path / "online", resume=True)
    assert again["teacher_outputs"] == "cached" and again["best"] == online["best"]


def test_auto_runs_the_teacher_online_where_its_hidden_states_would_not_fit(sst2_run, tmp_path, monkeypatch):
    """`teacher_outputs='auto'`: cached below `ONLINE_ABOVE` bytes of hidden states (the size the cache really
    takes), online above it or for attention scores; 'cached' with attention scores is refused."""
    cfg, out, _ = sst2_run  # hidden_weight 1: two teacher layers' hidden states, width 36
    entry = next(e for e in (out.parent / "cache" / "outputs").iterdir() if list(e.glob("hidden_*.npy")))
    stored = [np.load(f, mmap_mode="r") for f in sorted(entry.glob("hidden_*.npy"))]
    features = SimpleNamespace(lengths=np.diff(np.load(entry / "offsets.npy")))
    assert hidden_bytes(features, len(stored), 36) == sum(h.nbytes for h in stored)

    train = SimpleNamespace(lengths=np.full(1000, 20))  # 2.9 MB of hidden states
    assert not teacher_online(cfg, (0, 1), train, 36)
    assert teacher_online(dataclasses.replace(cfg, loss=LossConfig(attention_weight=1.0)), (0, 1), train, 36)
    assert not teacher_online(dataclasses.replace(cfg, loss=LossConfig(hard_weight=0.5)), (), train, 36)  # logits
    monkeypatch.setattr(distillation, "ONLINE_ABOVE", 2_000_000)
    assert teacher_online(cfg, (0, 1), train, 36)
    assert not teacher_online(dataclasses.replace(cfg, teacher_outputs="cached"), (0, 1), train, 36)
    with pytest.raises(UserError, match="teacher_outputs .*'cached' cannot hold attention scores"):
        dataclasses.replace(cfg, loss=LossConfig(attention_weight=1.0), teacher_outputs="cached")
    with pytest.raises(UserError, match="teacher_outputs .*'disk'"):
        dataclasses.replace(cfg, teacher_outputs="disk")

    monkeypatch.setattr(distillation, "ONLINE_ABOVE", 0)  # a whole run decides so too
    monkeypatch.setenv("BERTNAS_CACHE", str(tmp_path / "cache"))
    short = distill(dataclasses.replace(cfg, loop=dataclasses.replace(cfg.loop, max_steps=3)), tmp_path / "auto")
    assert short["teacher_outputs"] == "online" and short["seconds"]["labelling"] == 0


def test_random_init_and_augmentation(sst2, tmp_path):
    data, teacher = sst2
    cfg = config(
        teacher, data,
        init=InitConfig(method="random"),
        augment=AugmentConfig(copies=2, replace_prob=0.5),
        loss=LossConfig(hard_weight=1.0),
        loop=LoopConfig(max_steps=4, batch_size=16),
    )
    results = distill(cfg, tmp_path / "aug")
    assert results["augmented_examples"] == 400
    assert results["train_features"] == 600
    assert np.isfinite(results["history"][-1]["accuracy"])


def test_fine_tunes_an_untuned_teacher_first_stsb_with_two_stages(tmp_path):
    data = write_stsb(tmp_path / "stsb", n_train=96, n_dev=24)
    raw = write_tiny_teacher(tmp_path / "raw")
    cfg = DistillConfig(
        task="stsb", teacher=str(raw), student=STUDENT, data_dir=str(data), teacher_epochs=1,
        loss=LossConfig(hidden_weight=1.0, attention_weight=1.0, two_stage=True),
        loop=LoopConfig(epochs=2, batch_size=16, log_every=1),
    )
    results = distill(cfg, tmp_path / "out")
    assert (tmp_path / "out" / "teacher_finetune" / "teacher" / "config.json").is_file()
    assert load_bert(results["teacher_dir"]).meta["task"] == "stsb"
    assert np.isfinite(results["best"]["pearson"])
    records = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "train_loss" in r]
    assert "train_attention" in train[0] and "train_logits" not in train[0]  # stage 1: intermediate only
    assert "train_logits" in train[-1] and "train_attention" not in train[-1]  # stage 2: prediction only
    dev = [r["step"] for r in records if "dev_pearson" in r]
    assert dev and min(dev) >= results["steps"] // 2  # no evaluation (nor early stopping) in stage 1


def test_tagging_student(tmp_path):
    data = write_conll(tmp_path / "conll", n_train=40, n_dev=10)
    teacher = write_task_teacher(tmp_path / "teacher", "conll2003")
    cfg = DistillConfig(
        task="conll2003", teacher=str(teacher), student=STUDENT, data_dir=str(data),
        loss=LossConfig(temperature=2.0, hidden_weight=1.0), loop=LoopConfig(max_steps=4, batch_size=16),
    )
    results = distill(cfg, tmp_path / "out")
    assert np.isfinite(results["best"]["f1"])
    loaded = load_export(tmp_path / "out" / "export")
    assert loaded.head == "tagging" and loaded.num_labels == 9


def test_bad_student_and_overwrite_errors(sst2, tmp_path):
    data, teacher = sst2
    with pytest.raises(UserError, match="architecture name"):
        distill(config(teacher, data, student="four-layers"), tmp_path / "a")
    with pytest.raises(UserError, match="hidden_size"):
        distill(config(teacher, data, student="2L-48-H3-D8"), tmp_path / "b")
    with pytest.raises(UserError, match="not found"):
        distill(config(teacher, data, student=str(tmp_path / "missing.json")), tmp_path / "c")
    arch_file = tmp_path / "arch.json"
    arch_file.write_text(resolve_student(STUDENT, load_bert(teacher).arch).to_json())
    ok = distill(config(teacher, data, student=str(arch_file), loop=LoopConfig(max_steps=2, batch_size=16, checkpoint_every=1)), tmp_path / "d")
    assert ok["student"] == resolve_student(STUDENT, load_bert(teacher).arch).name
    with pytest.raises(UserError, match="--resume"):
        distill(config(teacher, data, loop=LoopConfig(max_steps=2, batch_size=16)), tmp_path / "d")
    assert (tmp_path / "d" / "export" / "model.safetensors").is_file()  # nothing lost
    other = config(teacher, data, optimizer=OptimizerConfig(learning_rate=1e-3),
                   loop=LoopConfig(max_steps=2, batch_size=16, checkpoint_every=1))
    with pytest.raises(UserError, match="other settings"):
        distill(other, tmp_path / "d", resume=True)


@pytest.mark.torch
def test_exported_student_loads_in_transformers(sst2_run):
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    _, out, _ = sst2_run
    loaded = load_export(out / "export")
    model = AutoModelForSequenceClassification.from_pretrained(str(out / "export")).eval()
    tok = AutoTokenizer.from_pretrained(str(out / "export"))
    enc = tok(["a great good movie", "bad awful"], padding=True, return_tensors="np")
    ours = loaded.model.apply(
        {"params": loaded.params}, enc["input_ids"], enc["token_type_ids"], enc["attention_mask"]
    ).logits
    with torch.no_grad():
        theirs = model(**{k: torch.tensor(v) for k, v in enc.items()}).logits.numpy()
    np.testing.assert_allclose(np.asarray(ours), theirs, atol=1e-4)


def test_a_bf16_student_learns_as_well_and_keeps_its_own_run_key(sst2_run, sst2, tmp_path):
    """`--precision bf16`: the same run in bfloat16 compute reaches the fp32 run's bar, exports float32
    weights, and cannot resume the fp32 run's checkpoints (another run key)."""
    cfg, _, _ = sst2_run
    data, teacher = sst2
    bf16 = dataclasses.replace(cfg, loop=dataclasses.replace(cfg.loop, precision="bf16"))
    results = distill(bf16, tmp_path / "bf16")
    assert results["best"]["accuracy"] >= 0.85  # the fp32 run's bar; measured 1.0 for both
    exported = load_bert(tmp_path / "bf16" / "export")
    assert all(p.dtype == np.float32 for p in jax.tree.leaves(exported.params))
    with pytest.raises(UserError, match="settings"):
        distill(cfg, tmp_path / "bf16", resume=True)


def test_a_student_is_compared_with_its_teacher_on_the_same_examples(sst2_run, sst2):
    """`paired_comparison`: each model's metric as `evaluate_dir` gives it, their difference inside its own
    bootstrap interval, the share of equal predictions; a model against itself differs by exactly 0."""
    _, out, _ = sst2_run
    data, teacher = sst2
    export = out / "export"
    result = paired_comparison(export, teacher, data_dir=str(data), samples=200)
    ours, theirs = evaluate_dir(export, data_dir=str(data)), evaluate_dir(teacher, data_dir=str(data))
    assert (result["model"], result["reference"]) == (ours["accuracy"], theirs["accuracy"])
    assert result["difference"] == pytest.approx(ours["accuracy"] - theirs["accuracy"])
    assert result["low"] <= result["difference"] <= result["high"] and 0 <= result["p_value"] <= 1
    _, a, refs = split_predictions(export, data_dir=str(data))
    _, b, _ = split_predictions(teacher, data_dir=str(data))
    assert result["agreement"] == np.mean(a == b) and result["examples"] == len(refs) == 40
    itself = paired_comparison(export, export, data_dir=str(data), samples=50)
    assert (itself["difference"], itself["low"], itself["high"], itself["p_value"], itself["agreement"]) == \
        (0.0, 0.0, 0.0, 1.0, 1.0)


def test_paired_comparisons_of_taggers_and_regressors(tmp_path):
    """Tagging: the difference is of entity F1 over the same sentences, agreement is whole tag sequences;
    regression: no agreement (scores are never equal)."""
    conll = write_conll(tmp_path / "conll", n_dev=12)
    a, b = (write_task_teacher(tmp_path / f"ner{i}", "conll2003", seed=i) for i in (0, 1))
    result = paired_comparison(a, b, data_dir=str(conll), samples=50)
    _, pa, refs = split_predictions(a, data_dir=str(conll))
    _, pb, _ = split_predictions(b, data_dir=str(conll))
    assert result["difference"] == pytest.approx(entity_f1(pa, refs) - entity_f1(pb, refs))
    assert result["agreement"] == np.mean([x == y for x, y in zip(pa, pb)]) and result["examples"] == 12
    stsb = write_stsb(tmp_path / "stsb", n_dev=10)
    a, b = (write_task_teacher(tmp_path / f"sts{i}", "stsb", seed=i) for i in (0, 1))
    result = paired_comparison(a, b, data_dir=str(stsb), samples=50)
    assert result["metric"] == "pearson" and result["agreement"] is None and result["difference"] != 0


def test_evaluate_against_prints_the_comparison(sst2_run, sst2):
    _, out, _ = sst2_run
    data, teacher = sst2
    script = Path(__file__).resolve().parents[3] / "scripts" / "evaluate.py"
    proc = subprocess.run([sys.executable, str(script), "--model", str(out / "export"), "--against", str(teacher),
                           "--data-dir", str(data), "--samples", "100", "--json"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    shown = json.loads(proc.stdout.strip().splitlines()[-1])
    direct = paired_comparison(out / "export", teacher, data_dir=str(data), samples=100)
    assert shown == pytest.approx(direct)
