"""Supernet training end to end: the saved supernet, the cache, scoring, a space refused before any
training, and a SIGKILLed run that resumes to the weights of an uninterrupted one."""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import traverse_util
from helpers import write_sst2, write_task_teacher, write_tiny_teacher

from distill.arch import resolve_student
from distill.cli import distill as distill_tool
from distill.kd.supernet import Subnet, extract
from distill.model.store import load_bert
from distill.run import (
    DistillConfig,
    InitConfig,
    LoopConfig,
    LossConfig,
    OptimizerConfig,
    SubnetChoices,
    SupernetConfig,
    distill,
    score_subnets,
    train_supernet,
)
from distill.run.distillation import supernet_init
from distill.train.checkpoint import Checkpointer
from nas import cli as nas_cli
from tasks.errors import UserError
from tasks.features import encode
from tasks.readers import load_task, read_split

REPO = Path(__file__).resolve().parents[3]
SPACE = ["--layers", "1,2", "--hidden", "24,36", "--heads", "1,2,3", "--ffn", "7,37"]
CHOICES = SubnetChoices(layers=(1, 2), hidden=(24, 36), heads=(1, 2, 3), ffn=(7, 37))


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("supernet")
    return write_task_teacher(tmp / "teacher", "sst2"), write_sst2(tmp / "data", n_train=96, n_dev=24)


def _cmd(teacher, data, out, *extra):
    return [
        sys.executable, str(REPO / "scripts" / "train_supernet.py"), "--task", "sst2", "--teacher", str(teacher),
        "--data-dir", str(data), "--output", str(out), *SPACE, "--epochs", "3", "--batch-size", "8", "--lr", "1e-3",
        "--checkpoint-every", "4", "--eval-every", "12", *extra,
    ]


def _flat(tree) -> dict:
    return {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(tree).items()}


def test_trained_supernet_is_saved_cached_and_scored(files, tmp_path):
    teacher, data = files
    cfg = SupernetConfig(task="sst2", teacher=str(teacher), data_dir=str(data), choices=CHOICES,
                         optimizer=OptimizerConfig(learning_rate=1e-3), loop=LoopConfig(epochs=1, batch_size=8))
    first = train_supernet(cfg, tmp_path / "a")
    assert first["steps"] == 12 and "cached" not in first
    supernet = load_bert(first["supernet_dir"])
    assert supernet.arch == load_bert(teacher).arch and supernet.head == "classification"
    assert supernet.meta["supernet"]["choices"]["hidden"] == [24, 36]
    assert set(first["best"]) >= {"score", "largest_accuracy", "smallest_accuracy"}

    again = train_supernet(cfg, tmp_path / "b")  # same settings: the cached supernet, not a second training
    assert again["cached"] and again["steps"] == 12
    for (k, x), (_, y) in zip(sorted(_flat(supernet.params).items()),
                              sorted(_flat(load_bert(again["supernet_dir"]).params).items())):
        np.testing.assert_array_equal(x, y, err_msg=k)

    task, _ = load_task("sst2", str(data))
    examples = read_split(task, "dev", str(data))
    features = encode(task, examples, supernet.tokenizer)
    subs = [CHOICES.largest(supernet.arch), CHOICES.smallest(supernet.arch),
            CHOICES.sample(supernet.arch, np.random.default_rng(0))]
    exact, masked, staged = (score_subnets(supernet.params, supernet.arch, subs, task, features, examples, 16, how=how)
                             for how in ("exact", "masked", "staged"))
    assert [m["accuracy"] for m in masked] == [m["accuracy"] for m in exact] == [m["accuracy"] for m in staged]
    # bfloat16 scoring (a search's `--precision bf16`) flips at most one prediction of a sub-network here
    bf16 = score_subnets(supernet.params, supernet.arch, subs, task, features, examples, 16, precision="bf16")
    assert all(abs(a["accuracy"] - b["accuracy"]) <= 1 / len(examples) + 1e-9 for a, b in zip(bf16, exact))
    # The saved supernet is the best one: its sub-networks score on dev what that evaluation logged.
    assert (first["best"]["largest_accuracy"], first["best"]["smallest_accuracy"]) == \
        (exact[0]["accuracy"], exact[1]["accuracy"])


def test_a_space_the_teacher_cannot_hold_is_refused_before_any_training(tmp_path):
    pretrained = write_tiny_teacher(tmp_path / "pretrained")  # not fine-tuned: a run would fine-tune it first
    data = write_sst2(tmp_path / "data", n_train=16, n_dev=8)
    out = tmp_path / "run"
    cmd = _cmd(pretrained, data, out)
    cmd[cmd.index("--hidden") + 1] = "24,48"
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1] == "error: hidden: choice 48 exceeds the supernet's 36"
    assert not (out / "teacher_finetune").exists() and not (out / "checkpoints").exists()


@pytest.mark.slow
def test_sigkill_then_resume_gives_the_same_supernet(files, tmp_path):
    teacher, data = files
    out = tmp_path / "run"
    proc = subprocess.Popen(_cmd(teacher, data, out, "--no-cache"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpts = out / "checkpoints"
    deadline = time.time() + 300
    try:
        while time.time() < deadline and proc.poll() is None:  # kill once a checkpoint is complete
            if ckpts.is_dir() and [p for p in ckpts.iterdir() if p.name.isdigit()]:
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"run finished before it could be killed:\n{proc.stderr.read().decode()[-2000:]}"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    assert not (out / "results.json").exists()

    refused = subprocess.run(_cmd(teacher, data, out, "--no-cache"), capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "--resume" in refused.stderr.strip().splitlines()[-1]
    resumed = subprocess.run(_cmd(teacher, data, out, "--no-cache", "--resume"), capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr
    ref_out = tmp_path / "ref"
    ref = subprocess.run(_cmd(teacher, data, ref_out, "--no-cache"), capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr[-3000:]

    results, ref_results = (json.loads((d / "results.json").read_text()) for d in (out, ref_out))
    assert results["steps"] == ref_results["steps"] == 36
    assert [h["score"] for h in results["history"]] == [h["score"] for h in ref_results["history"]]
    like = jax.tree_util.tree_map(np.asarray, load_bert(teacher).params)
    finals = []
    for d in (out, ref_out):  # the last checkpoint: every step of the sandwich replayed identically
        ckpt = Checkpointer(d / "checkpoints")
        try:
            assert ckpt.latest_step() == 36
            finals.append(_flat(ckpt.restore_params(None, like)))
        finally:
            ckpt.close()
    for k in finals[1]:
        np.testing.assert_allclose(finals[0][k], finals[1][k], rtol=0, atol=1e-6, err_msg=k)
    assert any(not np.allclose(finals[1][k], _flat(like)[k]) for k in finals[1])  # it trained


def test_a_student_taken_from_the_supernet_is_its_slice_and_distils(files, tmp_path):
    teacher, data = files
    cfg = SupernetConfig(task="sst2", teacher=str(teacher), data_dir=str(data), choices=CHOICES,
                         loop=LoopConfig(epochs=1, max_steps=4, batch_size=8))
    supernet_dir = train_supernet(cfg, tmp_path / "supernet", use_cache=False)["supernet_dir"]
    supernet = load_bert(supernet_dir)
    student = DistillConfig(task="sst2", teacher=str(teacher), data_dir=str(data), student="1L-24-H2-F31",
                            init=InitConfig(layers="last", source=supernet_dir),
                            loss=LossConfig(hard_weight=0.5, hidden_weight=1.0),
                            loop=LoopConfig(epochs=1, max_steps=6, batch_size=8))
    task, _ = load_task("sst2", str(data))
    arch = resolve_student(student.student, supernet.arch)
    params, start = supernet_init(student, task, load_bert(teacher), arch)
    want = extract(supernet.params, supernet.arch, Subnet((1,), 24, (2,), (31,)))
    got = _flat(params)
    assert got.keys() == _flat(want).keys()
    for k, v in _flat(want).items():
        np.testing.assert_array_equal(got[k], v, err_msg=k)
    # The hidden loss's projection starts at the teacher dims behind the supernet's first 24.
    order = supernet.meta["supernet"]["hidden_order"]
    assert sorted(order) == list(range(36)) and start.shape == (36, 24)
    np.testing.assert_array_equal(np.argmax(start, axis=0), order[:24])

    results = distill(student, tmp_path / "student")
    assert results["steps"] == 6 and results["student"] == arch.name
    assert load_bert(tmp_path / "student" / "export").arch == arch

    # A full-width student keeps every dim: it is put back in the teacher's dim order (its hidden states
    # then line up with the teacher's for the hidden loss), an exact relabelling of the supernet's slice.
    full = resolve_student("1L-36-H3-F37", supernet.arch)
    params, start = supernet_init(dataclasses.replace(student, student="1L-36-H3-F37"), task, load_bert(teacher), full)
    assert start is None
    words = np.asarray(supernet.params["embeddings"]["word_embeddings"]["embedding"])
    np.testing.assert_array_equal(params["embeddings"]["word_embeddings"]["embedding"], words[:, np.argsort(order)])

    plain = InitConfig(layers="last", source=str(teacher))  # a model directory that is no supernet
    for bad, message in ((dataclasses.replace(student, student="1L-48-H4-F31"), "hidden_size: 48 exceeds"),
                         (dataclasses.replace(student, student="1L-24-H1-F31-D24"), "head_size"),
                         (dataclasses.replace(student, init=plain), "not a supernet"),
                         (dataclasses.replace(student, loss=LossConfig(attention_weight=1.0)), "attention")):
        bad_out = tmp_path / f"bad-{len(message)}"
        with pytest.raises(UserError, match=message):
            distill(bad, bad_out)
        assert not (bad_out / "checkpoints").exists()


def test_init_from_takes_the_layers_the_supernet_was_trained_on(files, tmp_path):
    """`bertnas distill --init-from` without --layers slices the supernet layers its sub-networks of that depth
    ran in training (its recorded layer map), not the uniform default; --layers still overrides."""
    teacher, _ = files
    supernet = tmp_path / "supernet"
    supernet.mkdir()
    cfg = json.loads((teacher / "config.json").read_text())
    cfg["bertnas"]["supernet"] = {"choices": {**dataclasses.asdict(CHOICES), "layer_map": "last"}}
    (supernet / "config.json").write_text(json.dumps(cfg))

    def layers(*extra):
        return distill_tool.config(nas_cli.parse(["distill", "--output", str(tmp_path / "o"), *extra])).init.layers

    assert layers("--init-from", str(supernet)) == "last"
    assert layers("--init-from", str(supernet), "--layers", "first") == "first"
    assert layers() == "uniform"
