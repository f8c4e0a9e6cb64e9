"""`python -m bench --quick` end to end on a tiny fake search, and the parsing parts on synthetic files.

The fake search directory holds what a finished search leaves: results.json,
search_config.json, final/plan.json, a final run (results.json,
metrics.jsonl, a real Orbax checkpoint and a real export) and one exported
student, beside a random tiny SST-2 teacher and a tiny SST-2 data set.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import optax
import pytest
from helpers import make_tokenizer, write_sst2, write_task_teacher

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import plot, search_time, size  # noqa: E402
from bench.__main__ import table  # noqa: E402
from bench.common import Skip  # noqa: E402
from distill.arch import BertArch, parse_arch_name  # noqa: E402
from distill.export.hf import export_model  # noqa: E402
from distill.model.bert import abstract_params, build_model  # noqa: E402
from distill.train.checkpoint import Checkpointer  # noqa: E402
from tasks.registry import get_task  # noqa: E402

HAS_TORCH = importlib.util.find_spec("torch") is not None
STUDENT = "1L-36-H3-F20"
SECONDS = {"teacher": 10.0, "labelling": 5.0, "data_and_importance": 1.0, "teacher_cost_and_eval": 2.0,
           "trials": 40.0, "final": 30.0, "export": 2.0, "total": 100.0}
TRIALS = [  # seconds, steps, steps_per_second: start-up = seconds - steps / speed
    {"trial_id": "a", "status": "completed", "seconds": 30.0, "steps": 40, "steps_per_second": 2.0},
    {"trial_id": "b", "status": "stopped", "seconds": 14.0, "steps": 20, "steps_per_second": None},
    {"trial_id": "c", "status": "failed", "seconds": 2.0, "steps": 0},
]
# Train logs every 10 steps at 0.5 s/step after a first interval of 9 s: 4 s of compilation; an eval in between.
METRICS = [{"step": 10, "time": 9.0, "train_loss": 1.0}, {"step": 20, "time": 14.0, "train_loss": 0.9},
           {"step": 20, "time": 14.5, "dev_accuracy": 0.5}, {"step": 30, "time": 19.5, "train_loss": 0.8},
           {"step": 40, "time": 24.5, "train_loss": 0.7}]


def _write(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path


def _student_params(arch):
    task = get_task("sst2")
    rng = np.random.default_rng(0)
    shapes = abstract_params(build_model(arch, task.kind, task.num_labels))
    return jax.tree.map(lambda x: rng.normal(0.0, 0.02, x.shape).astype(np.float32), shapes)


@pytest.fixture(scope="module")
def fake_search(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fake_search")
    data = write_sst2(root / "SST-2", n_train=40, n_dev=24)
    teacher = write_task_teacher(root / "teacher", "sst2")
    tok = make_tokenizer(root / "vocab")
    arch = parse_arch_name(STUDENT).replace(vocab_size=len(tok), max_position_embeddings=128)  # as the teacher
    params = _student_params(arch)
    search = root / "search"
    run = search / "final" / "run"
    export_model(run / "export", arch, params, tok, get_task("sst2"))
    export = search / "export" / f"01-{arch.name}"
    export_model(export, arch, params, tok, get_task("sst2"))
    ckpt = Checkpointer(run / "checkpoints")
    ckpt.save(40, params, optax.adamw(1e-3).init(params), {"step": 40})
    ckpt.close()
    (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in METRICS))
    _write(run / "results.json", {"student": arch.name, "steps": 40, "train_features": 200,
                                  "augmented_examples": 160, "seconds": {"distill": 25.0},
                                  "train_examples_per_second": 50.0})
    _write(search / "final" / "plan.json", {"arch": arch.name, "steps": 40, "prepare_seconds": 4.0,
                                            "labelling_seconds": 3.0})
    _write(search / "search_config.json", {"data_dir": str(data), "batch_size": 4, "augment": 0, "latency_threads": 1})
    final = {"trial_id": "final", "status": "final", "arch": arch.name, "speedup": 1.5, "export": str(export)}
    _write(search / "results.json", {"task": "sst2", "seq_len": 16, "seconds": SECONDS,
                                     "teacher": {"path": str(teacher)}, "trials": TRIALS + [final]})
    return search


def test_search_breakdown_from_synthetic_results(fake_search):
    b = search_time.breakdown(fake_search)
    assert b["total_seconds"] == 100.0
    assert b["stages"]["trials"] == 40.0 and b["stages"]["other"] == pytest.approx(10.0)
    assert b["shares"]["final training"] == pytest.approx(0.3)
    t = b["trials"]
    assert t["counts"] == {"completed": 1, "stopped": 1, "failed": 1}  # the final run is not a trial
    assert t["seconds"]["sum"] == 46.0 and t["concurrency"] == pytest.approx(46.0 / 40.0)
    assert t["startup_seconds"]["sum"] == pytest.approx(30.0 - 40 / 2.0)  # only the trial with a measured speed
    assert t["startup_share"] == pytest.approx(10.0 / 30.0)
    f = b["final"]
    assert f["compile_seconds"] == pytest.approx(9.0 - 10 * 0.5)
    assert (f["steps"], f["prepare_seconds"], f["train_loop_seconds"]) == (40, 4.0, 25.0)
    fw = b["teacher_forwards"]
    # An older search (no count recorded): the final run labelled its 40 originals again and 160 copies.
    assert (fw["training_examples"], fw["labelled_by_search"], fw["labelled_by_final"]) == (200, 40, 200)
    assert fw["per_training_example"] == pytest.approx(240 / 200)
    assert fw["student_examples"] == 4 * (40 + 20 + 0 + 40)
    assert fw["per_student_example"] == pytest.approx(240 / 400)
    rows = {r["name"]: r for r in search_time.ratio_rows(b)}
    assert rows["stage: trials"]["ratio"] == pytest.approx(0.4)
    assert rows["teacher forwards / training feature"]["ratio"] == pytest.approx(1.2)
    counted = search_time.recorded_forwards(
        {"trials": 40, "final": 160, "total": 200, "distinct_features": 200, "per_feature": 1.0}, TRIALS, {"batch_size": 4})
    assert counted["per_training_example"] == 1.0 and counted["student_examples"] == 4 * 60


def test_compile_estimate_uses_the_first_segment_only(tmp_path):
    resumed = METRICS + [{"step": 50, "time": 8.0, "train_loss": 0.6}, {"step": 60, "time": 100.0, "train_loss": 0.5}]
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(m) + "\n" for m in resumed))
    assert search_time.compile_estimate(path) == pytest.approx(4.0)
    assert search_time.compile_estimate(tmp_path / "missing.jsonl") is None


def test_not_a_search_is_skipped(tmp_path):
    with pytest.raises(Skip, match="no results.json"):
        search_time.breakdown(tmp_path)
    with pytest.raises(Skip, match="no export"):
        size.sizes(tmp_path)


def test_size_of_export_and_checkpoint(fake_search):
    run = size.find_run(fake_search)
    assert run == fake_search / "final" / "run"
    s = size.sizes(run)
    arch = BertArch.from_hf_config(json.loads((run / "export" / "config.json").read_text()))
    assert arch.name == parse_arch_name(STUDENT).name and s["arch"] == arch.name
    assert s["params"] == arch.num_params("classification", 2)
    assert 4.0 < s["export"]["bytes_per_param"] < 4.3  # float32 plus the safetensors header
    items = s["checkpoint"]["items"]
    assert {"params", "opt_state"} <= set(items) and s["checkpoint"]["kept_steps"] == [40]
    assert s["checkpoint_bytes_per_param"] == pytest.approx(s["checkpoint"]["bytes"] / s["params"])
    assert s["checkpoint_over_export"] == pytest.approx(s["checkpoint"]["bytes"] / s["export"]["weight_bytes"])


def test_plot_of_a_search(tmp_path):
    trials = [
        {"trial_id": "a", "arch": "2L-36", "speedup": 4.0, "val_metric": 0.80, "pareto": True, "dev_metric": 0.78},
        {"trial_id": "b", "arch": "3L-36", "speedup": 2.0, "val_metric": 0.70, "pareto": False},
        {"trial_id": "c", "arch": "1L-36", "speedup": 9.0, "val_metric": None},  # failed: not plotted
        {"trial_id": "final", "arch": "2L-36", "speedup": 4.0, "val_metric": 0.85, "pareto": True, "dev_metric": 0.82},
    ]
    teacher = {"arch": "6L-384", "val_metric": 0.9, "dev_metric": 0.88}
    _write(tmp_path / "results.json", {"task": "sst2", "metric": "accuracy", "trials": trials, "teacher": teacher})
    students = _write(tmp_path / "students.json", {"students": [{"arch": "2L-36", "vs_teacher": {"speedup": 5.0}}]})
    points = plot.load(tmp_path, students)
    assert [r["trial_id"] for r in points["candidates"]] == ["a", "b", "final"]
    assert {r["trial_id"]: r["dev_speedup"] for r in points["front"]} == {"a": 5.0, "final": 5.0}  # measured
    assert points["measured"] and plot.load(tmp_path)["front"][0]["dev_speedup"] == 4.0  # else the search's
    out = plot.plot(points, tmp_path / "p" / "plot.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    _write(tmp_path / "results.json", {"task": "sst2", "trials": trials, "teacher": {"arch": "6L-384"}})
    with pytest.raises(ValueError, match="no teacher scores"):
        plot.load(tmp_path)
    assert plot.main(["--search", str(tmp_path / "nowhere")]) == 2


def test_table_lists_skips_and_errors():
    text = table({"inference": {"skipped": "no torch"}, "size": {"error": "ValueError: bad"},
                  "peak": {"ratios": [{"name": "x", "ours": 5.0, "reference": 10.0, "unit": "GFLOP/s",
                                       "ratio": 0.5, "ratio_is": "ours / peak"}]}})
    assert "skipped: no torch" in text and "ERROR: ValueError: bad" in text and "50.0%" in text


@pytest.mark.slow  # three to four minutes on 2 cores: eight children (JAX, PyTorch) and some tiny compiles
def test_quick_suite_end_to_end(fake_search, tmp_path):
    out = tmp_path / "results"
    # Compile fast (the children inherit it): the timings mean nothing here.
    env = {**os.environ, "XLA_FLAGS": "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"}
    cmd = [sys.executable, "-m", "bench", "--quick", "--out", str(out), "--search", str(fake_search)]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=480)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "plot: skipped" in done.stdout  # the fake search has no validation scores
    parts = {p: json.loads((out / f"{p}.json").read_text()) for p in
             ("inference", "train_step", "peak", "students", "quantize", "onnx", "search_time", "compile_cache",
              "size", "accelerator", "realdata")}
    for name, rec in parts.items():
        assert "error" not in rec, (name, rec.get("traceback"))

    for name, n_cases in (("inference", 6), ("train_step", 3)):
        comparison = parts[name]["comparison"]
        assert len(comparison) == n_cases
        for c in comparison:
            assert c["ours_examples_per_s"] > 0
            if HAS_TORCH:
                assert c["torch_examples_per_s"] > 0
                assert c["ratio"] == pytest.approx(c["ours_examples_per_s"] / c["torch_examples_per_s"])
                if c["mode"] == "infer":  # same weights on both sides
                    assert c["max_abs_logit_diff"] < 1e-4
            else:
                assert c["ratio"] is None and c["torch_examples_per_s"] is None
        if not HAS_TORCH:
            assert any("torch is not installed" in m for m in parts[name]["messages"])

    peak = parts["peak"]
    assert peak["peak"]["gflops"] > 0 and len(peak["utilisation"]) == 9
    for e in peak["utilisation"]:
        assert e["ours_of_peak"] == pytest.approx(e["ours_gflops"] / peak["peak"]["gflops"])

    st = parts["students"]
    assert st["seq_len"] == 16 and st["teacher"]["latency_ms_p50"] > 0 and len(st["students"]) == 1
    assert st["threads"] == 1  # measured like the search's cost model: a child pinned to one CPU
    s = st["students"][0]
    c = s["vs_teacher"]
    assert c["speedup"] == pytest.approx(st["teacher"]["latency_ms_p50"] / s["latency_ms_p50"])
    assert c["disagreement"] == pytest.approx(c["speedup_cost_model"] / c["speedup"] - 1)
    assert c["speedup_search"] == 1.5 and 0 < c["param_ratio"] < 1 and s["throughput"] > 0

    q = parts["quantize"]  # the exported float32 student against its int8 quantization
    assert q["threads"] == 1 and len(q["students"]) == 1
    s = q["students"][0]
    assert s["examples"] == 24 and s["seq_len"] == 16 and s["drop"] == pytest.approx(s["float32"] - s["int8"])
    assert 0 < s["weight_ratio"] < 0.5 and s["weight_bytes"]["int8"] < s["weight_bytes"]["float32"]
    assert s["latency_ratio"] == pytest.approx(s["latency_ms"]["int8"] / s["latency_ms"]["float32"])
    assert {r["ratio_is"] for r in q["ratios"]} == {"int8 / float32"} and len(q["ratios"]) == 4

    o = parts["onnx"]  # the student and the teacher, each in JAX and ONNX Runtime (float32, int8), b1/b32, t1/t2
    assert o["seq_len"] == 16 and len(o["models"]) == 2 and len(o["rows"]) == 2 * 3 * 2 * 2
    assert all(r["ms"] > 0 for r in o["rows"]) and {r["threads"] for r in o["rows"]} == {1, 2}
    speedups = {r["name"].split(", ")[1]: r for r in o["ratios"] if r["ratio_is"] == "teacher / student"}
    assert set(speedups) == {"jax b1 t1", "ort_float32 b1 t1", "ort_int8 b1 t1"}
    assert all(r["ratio"] == pytest.approx(r["reference"] / r["ours"]) for r in speedups.values())

    cc = parts["compile_cache"]
    assert [r["cache"] for r in cc["runs"]] == ["empty cache", "warm cache"] and cc["arch"] == STUDENT  # the final's
    for r in cc["runs"]:
        assert [b["seq"] for b in r["buckets"]] == cc["buckets"] and r["compile_s"] > 0
    assert cc["ratios"][0]["ratio"] == pytest.approx(cc["runs"][1]["compile_s"] / cc["runs"][0]["compile_s"])

    rd = parts["realdata"]["tasks"]["sst2"]  # 512 real SST-2 sentences, the minilm teacher, 4 steps
    fixed, fitted = rd["ours"]["before"], rd["ours"]["after"]
    for workload in ("finetune", "label"):
        assert fixed[workload]["examples_per_s"] > 0 and fitted[workload]["examples_per_s"] > 0
        assert fitted[workload]["tokens_per_real_token"] >= 1.0 and fixed[workload]["tokens_per_real_token"] >= 1.0
        if HAS_TORCH:
            torch_side = rd["torch"][workload]
            assert torch_side["examples_per_s"] > 0 and torch_side["tokens_per_real_token"] >= 1.0
    # a few shuffled training batches may go either way; the length-ordered labelling pads less
    assert fitted["label"]["tokens_per_real_token"] < fixed["label"]["tokens_per_real_token"]
    assert len(fitted["buckets"]) <= 8 and fixed["buckets"] == [16, 32, 48, 64, 96, 128]
    bf16 = rd["ours"]["after-bf16"]  # bfloat16 compute on the fitted buckets
    assert bf16["precision"] == "bf16" and bf16["buckets"] == fitted["buckets"]
    for workload in ("finetune", "label"):
        assert bf16[workload]["examples_per_s"] > 0
        assert bf16[workload]["tokens_per_real_token"] == fitted[workload]["tokens_per_real_token"]
    packed = rd["ours"]["packed"]  # several sentences per row: one shape, about one computed token per real one
    for workload in ("finetune", "label"):
        assert packed[workload]["examples_per_s"] > 0 and packed[workload]["shapes"] == 1
        assert 1.0 <= packed[workload]["tokens_per_real_token"] < fitted[workload]["tokens_per_real_token"]
    assert rd["ours"]["packed-bf16"]["precision"] == "bf16"
    names = [r["name"] for r in parts["realdata"]["ratios"]]
    assert {"sst2 finetune (after-bf16)", "sst2 label (after-bf16)", "sst2 finetune (packed)",
            "sst2 label (packed-bf16)"} <= set(names)
    if HAS_TORCH:
        row = next(r for r in parts["realdata"]["ratios"] if r["name"] == "sst2 finetune (after)")
        torch_rate = rd["torch"]["finetune"]["examples_per_s"]
        assert row["ratio"] == pytest.approx(fitted["finetune"]["examples_per_s"] / torch_rate)

    assert parts["search_time"]["stages"]["trials"] == 40.0
    assert parts["size"]["checkpoint"]["kept_steps"] == [40]
    if jax.default_backend() == "cpu":
        assert "no GPU or TPU" in parts["accelerator"]["skipped"]
    suite = json.loads((out / "suite.json").read_text())
    assert suite["parts"]["accelerator"] == "skipped" and suite["table"]
    assert "ours / torch" in done.stdout and "teacher / student" in done.stdout
