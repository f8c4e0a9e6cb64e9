"""Model cards (`distill.export.card`) of the float32, int8 and ONNX exports, and `--push-to-hub` without a
network: offline or failing, one line naming the flag, exit 2, the local export untouched.

Tiny odd sizes: hidden 36, 3 layers with heads 3,2,3 and FFN 37,20,37, layers 0 and 2 sharing their weights;
random parameters over the test vocabulary.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import jax
import numpy as np
import pytest
import yaml
from huggingface_hub import ModelCard

import nas.cli
from distill.arch import parse_arch_name
from distill.export import card
from distill.export.hf import export_model
from distill.export.int8 import quantize_export
from tasks.errors import UserError
from tasks.registry import get_task

RUN = {"dev": {"accuracy": 0.8125, "step": 4}, "teacher_dev": {"accuracy": 0.9375}, "teacher": "runs/teacher-sst2",
       "eval_split": "dev"}


def _export(tmp_path: Path, tokenizer, random_params, *, hf_layout=False, extra=RUN, name="fp32"):
    arch = parse_arch_name("3L-36-H3,2,3-F37,20,37-D12").replace(
        vocab_size=len(tokenizer), max_position_embeddings=16, layer_groups=(0, 1, 0))
    task = get_task("sst2")
    params = random_params(arch, task.kind, task.num_labels, seed=5)
    export_model(tmp_path / name, arch, params, tokenizer, task, extra=extra, hf_layout=hf_layout)
    return tmp_path / name, arch, sum(int(np.size(x)) for x in jax.tree.leaves(params))


def _card(path: Path) -> tuple[ModelCard, str]:
    loaded = ModelCard.load(path / "README.md")
    return loaded, (path / "README.md").read_text()


def _common(text: str, loaded: ModelCard, arch, num_params: int) -> None:
    assert "`sst2`" in text and "`0`, `1`" in text and arch.name in text
    assert f"| Parameters | {num_params:,} |" in text  # the model's real count, not the padded file's
    assert "| accuracy | 0.8125 | 0.9375 |" in text and "runs/teacher-sst2" in text
    assert "load_export(\"PATH\")" in text
    assert loaded.data.pipeline_tag == "text-classification" and "bertnas" in loaded.data.tags
    index = loaded.data.to_dict()["model-index"][0]["results"][0]
    assert index["metrics"][0] == {"type": "accuracy", "value": 0.8125}
    yaml.safe_load(text.split("---")[1])  # the metadata block is plain YAML


def test_float_int8_and_onnx_cards_say_what_the_export_is(tiny_tokenizer, random_params, tmp_path):
    fp32, arch, num_params = _export(tmp_path, tiny_tokenizer, random_params)
    loaded, text = _card(fp32)
    _common(text, loaded, arch, num_params)
    assert "shared layer groups [0, 1, 0]" in text and "--hf-layout" in text  # transformers cannot load it
    assert "AutoModelForSequenceClassification" not in text and loaded.data.library_name is None

    quantize_export(fp32, tmp_path / "int8")
    loaded, text = _card(tmp_path / "int8")
    _common(text, loaded, arch, num_params)
    assert "int8" in loaded.data.tags and f"`{fp32}`" in text and "do not read this int8 format" in text

    pytest.importorskip("onnxruntime")
    from distill.export.onnx import onnx_export

    onnx_export(fp32, tmp_path / "onnx", quantize="int8")
    loaded, text = _card(tmp_path / "onnx")
    _common(text, loaded, arch, num_params)
    assert loaded.data.library_name == "onnx" and "onnx-int8" in loaded.data.tags
    assert "ort.InferenceSession(\"PATH/model.onnx\")" in text and "# logits" in text


def test_hf_layout_card_loads_with_transformers_and_a_card_without_metrics(tiny_tokenizer, random_params, tmp_path):
    out, arch, num_params = _export(tmp_path, tiny_tokenizer, random_params, hf_layout=True, extra=None)
    loaded, text = _card(out)
    assert "AutoModelForSequenceClassification.from_pretrained(\"PATH\")" in text
    assert "No dev metrics" in text and "Not measured" in text and f"{num_params:,}" in text
    assert "model-index" not in loaded.data.to_dict() and loaded.data.library_name == "transformers"

    card.write_card(out, run={"speedup": 4.25, "latency_ms": 1.5, "device": "cpu-x", "other": 1},
                    command="bertnas distill --task sst2")
    _, text = _card(out)
    assert "4.25x faster than the teacher, 1.50 ms per example at batch 1, measured on `cpu-x`" in text
    assert "bertnas distill --task sst2" in text


def _digest(path: Path) -> dict[str, str]:
    return {str(f.relative_to(path)): hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(path.rglob("*"))
            if f.is_file()}


def test_push_offline_or_failing_is_one_line_and_keeps_the_export(tiny_tokenizer, random_params, tmp_path,
                                                                   monkeypatch, capsys):
    out, _, _ = _export(tmp_path, tiny_tokenizer, random_params)
    before = _digest(out)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match=r"--push-to-hub me/tiny: .*offline"):
        card.push_to_hub(out, "me/tiny")
    with pytest.raises(SystemExit) as done:  # the tool: checked before any work, nothing written
        nas.cli.main(["quantize", "--model", str(out), "--output", str(tmp_path / "q"), "--push-to-hub", "me/tiny"])
    err = capsys.readouterr().err.strip().splitlines()
    assert done.value.code == 2 and len(err) == 1 and "--push-to-hub me/tiny" in err[0]
    assert not (tmp_path / "q").exists() and _digest(out) == before

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(card, "is_offline_mode", lambda: False)
    monkeypatch.setattr(card, "get_token", lambda: "hf_fake")
    calls = []

    def fail(self, *args, **kwargs):
        calls.append(kwargs)
        raise ConnectionError("[Errno 111] Connection refused")  # the network down mid-way

    monkeypatch.setattr(card.HfApi, "create_repo", fail)
    with pytest.raises(UserError, match=r"--push-to-hub me/tiny: the upload failed \(\[Errno 111\] Connection refused\); the local export .* is kept"):
        card.push_to_hub(out, "me/tiny")
    assert calls == [{"private": True, "exist_ok": True, "repo_type": "model"}] and _digest(out) == before


def test_push_creates_a_private_repo_and_uploads_the_folder(tiny_tokenizer, random_params, tmp_path, monkeypatch):
    out, _, _ = _export(tmp_path, tiny_tokenizer, random_params)
    monkeypatch.setattr(card, "is_offline_mode", lambda: False)
    monkeypatch.setattr(card, "get_token", lambda: "hf_fake")
    calls = []
    monkeypatch.setattr(card.HfApi, "create_repo", lambda self, repo, **kw: calls.append(("create", repo, kw)))
    monkeypatch.setattr(card.HfApi, "upload_folder", lambda self, **kw: calls.append(("upload", kw)))
    assert card.push_to_hub(out, "me/tiny") == "https://huggingface.co/me/tiny"
    assert calls[0] == ("create", "me/tiny", {"private": True, "exist_ok": True, "repo_type": "model"})
    assert calls[1][1]["repo_id"] == "me/tiny" and calls[1][1]["folder_path"] == str(out)
    with pytest.raises(UserError, match="--push-to-hub not/a/repo: not a repository name"):
        card.check_hub("not/a/repo")
