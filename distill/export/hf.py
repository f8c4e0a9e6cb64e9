"""Export a distilled student for serving, and load it back in one call.

Modeled on levanter's `export_lm_to_hf`: a small function that writes only what
serving needs (config.json, float32 model.safetensors, tokenizer files) in the
Hugging Face BERT layout, so transformers' PyTorch `AutoModelFor...` classes
load it too. No training imports: optimizer state and training checkpoints
never reach this module, let alone the exported directory.

config.json is a `BertConfig` plus our `bertnas` block (exact student arch,
head, labels, task, max_length and the caller's `extra`). Heterogeneous
students are stored padded to uniform HF shapes with zero heads / neurons
(see `distill.model.hf`), so the file holds more elements than the model has
parameters; the summary reports both.

A student whose layers share parameters (`BertArch.layer_groups`, recorded in
the `bertnas.arch` block) is stored with each group once, under the HF names of
the group's first layer: `load_export` (and `load_bert`) rebuild the sharing,
but transformers would see the other layers missing. `hf_layout=True` writes
the shared weights into every layer instead, for transformers (HF BERT cannot
share); our loaders read that too.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import traverse_util

from distill.arch import BertArch
from distill.export.card import write_card
from distill.files import check_output_path
from distill.model.bert import abstract_params, build_model
from distill.model.hf import WeightsError, from_hf
from distill.model.store import (
    WEIGHTS,
    LoadedBert,
    TeacherError,
    arch_from_config,
    load_tokenizer,
    read_config,
    read_weights,
    save_bert,
)
from tasks.base import Task
from tasks.errors import UserError
from tasks.registry import task_record

log = logging.getLogger(__name__)

# Keys of the `bertnas` block that export_model writes itself; `extra` may not override them.
RESERVED = ("arch", "head", "num_labels", "labels", "task", "max_length", "text_columns", "label_column")

# HF `architectures[0]` -> our head, for config.json files without a `bertnas` block.
HF_HEADS = {
    "BertForSequenceClassification": "classification",
    "BertForTokenClassification": "tagging",
    "BertForQuestionAnswering": "span",
    "BertModel": "none",
}


def export_model(
    out_dir: str | os.PathLike,
    arch: BertArch,
    params: dict[str, Any],
    tokenizer,
    task: Task,
    *,
    extra: dict[str, Any] | None = None,
    hf_layout: bool = False,
) -> dict[str, Any]:
    """Write a servable model directory for `task`; returns a JSON-ready summary.

    <out_dir> gets config.json, model.safetensors (parameters only, float32)
    the tokenizer files and a model card (README.md, `distill.export.card`), written atomically (an existing directory is
    replaced whole; a path with `..` is refused). `params` may be jax or numpy
    arrays of any float dtype.
    Summary: path, arch, task, num_params (the model's real parameters),
    stored_params (elements in the file; more than num_params for a padded
    heterogeneous arch, or shared layers written with `hf_layout`),
    weight_bytes (model.safetensors), bytes_per_param (weight_bytes /
    num_params) and total_bytes (the whole directory). Shared layers are stored
    once per group unless `hf_layout` (see the module doc).
    """
    out_dir = check_output_path(out_dir, "export directory")
    check_params(params, arch, task.kind, task.num_labels, crf="crf" in params)  # a CRF tagger: bertnas.crf
    check_tokenizer(tokenizer, arch)
    meta = _meta(task, extra)
    host = jax.tree.map(lambda x: np.asarray(jax.device_get(x), np.float32), params)
    labels = task.labels if task.kind in ("classification", "tagging") else ()
    out = save_bert(out_dir, arch, host, tokenizer, head=task.kind, labels=labels, extra=meta, grouped=not hf_layout)
    write_card(out, transformers=hf_layout or arch.num_groups == arch.num_layers)
    summary = export_summary(out, arch, task)
    log.info(
        "exported %s (%s params, %.2f bytes/param) to %s",
        arch.name,
        f"{summary['num_params']:,}",
        summary["bytes_per_param"],
        out,
    )
    return summary


def check_params(params: dict[str, Any], arch: BertArch, head: str, num_labels: int, crf: bool = False) -> None:
    """WeightsError naming each missing, unexpected or mis-shaped parameter of
    `build_model(arch, head, num_labels, crf=crf)`."""
    expected = traverse_util.flatten_dict(abstract_params(build_model(arch, head, num_labels, crf=crf)))
    got = traverse_util.flatten_dict(params)
    problems = [f"missing {'/'.join(p)}" for p in expected if p not in got]
    problems += [f"unexpected {'/'.join(p)}" for p in got if p not in expected]
    for path, ref in expected.items():
        if path in got and tuple(np.shape(got[path])) != tuple(ref.shape):
            problems.append(f"{'/'.join(path)} has shape {tuple(np.shape(got[path]))}, expected {tuple(ref.shape)}")
    if not problems:
        return
    hint = " (pass variables['params'], not the whole variables dict)" if set(params) == {"params"} else ""
    shown = "; ".join(problems[:8]) + (f"; ... {len(problems) - 8} more" if len(problems) > 8 else "")
    raise WeightsError(f"parameters do not fit {arch.name} with a {head} head ({num_labels} outputs){hint}: {shown}")


def check_tokenizer(tokenizer, arch: BertArch) -> None:
    if len(tokenizer) > arch.vocab_size:
        raise UserError(f"tokenizer has {len(tokenizer)} tokens but {arch.name} only {arch.vocab_size} embeddings")


def _meta(task: Task, extra: dict[str, Any] | None) -> dict[str, Any]:
    extra = dict(extra or {})
    clash = sorted(set(extra) & set(RESERVED))
    if clash:
        raise UserError(f"export extra: keys {clash} are written by the exporter itself; reserved: {list(RESERVED)}")
    try:
        json.dumps(extra)
    except TypeError as e:
        raise UserError(f"export extra: not JSON-serialisable ({e})") from None
    return {**task_record(task), **extra}


def export_summary(out: Path, arch: BertArch, task: Task) -> dict[str, Any]:
    num_params = arch.num_params(task.kind, task.num_labels, crf=config_crf(read_config(out)))
    weight_bytes = (out / WEIGHTS).stat().st_size
    return {
        "path": str(out),
        "arch": arch.name,
        "task": task.name,
        "num_params": num_params,
        "stored_params": stored_params(out / WEIGHTS),
        "weight_bytes": weight_bytes,
        "bytes_per_param": weight_bytes / num_params,
        "total_bytes": sum(f.stat().st_size for f in out.rglob("*") if f.is_file()),
    }


def stored_params(weights_file: Path) -> int:
    """Number of tensor elements in a safetensors file (read from its header only)."""
    from safetensors import safe_open

    with safe_open(str(weights_file), framework="numpy") as f:
        return sum(int(np.prod(f.get_slice(k).get_shape())) for k in f.keys())


def load_float_export(path: str | os.PathLike) -> LoadedBert:
    """Load a float32 export (or any saved BERT directory) in our Flax API, head and labels from config.json.

    Strict, unlike `load_bert` with a new head: a weight the model needs but
    the directory lacks is an error, never a random initialisation. An int8
    export is refused here: `distill.export.load.load_export` loads either kind.
    """
    path = Path(path)
    if not path.is_dir():
        raise TeacherError(f"{path}: not a model directory (config.json, model.safetensors, tokenizer files)")
    cfg = read_config(path)
    if is_quantized(cfg):
        raise TeacherError(f"{path}: a quantized export; load it with distill.export.load.load_export")
    if is_onnx_dir(path):
        raise TeacherError(f"{path}: an ONNX export (it serves with onnxruntime: evaluate, predict, "
                           "distill.export.load.load_export); give the float32 export it came from")
    arch = arch_from_config(cfg, path / "config.json")
    head, num_labels = config_head(cfg)
    crf = config_crf(cfg) and head == "tagging"
    model = build_model(arch, head, num_labels, crf=crf)
    params, _, _ = from_hf(read_weights(path), arch, abstract_params(model), source=str(path))
    tokenizer = load_tokenizer(path)
    check_tokenizer(tokenizer, arch)
    log.info("loaded %s (%s, head=%s, %d outputs) from %s", path.name, arch.name, head, model.num_labels, path)
    return LoadedBert(arch, head, model.num_labels, params, tokenizer, path, cfg, crf=crf)


def is_quantized(cfg: dict[str, Any]) -> bool:
    """Whether config.json describes a quantized model (`distill.export.int8`; or another library's)."""
    if not isinstance(cfg, dict):
        return False  # not a config at all: the loader names the problem
    meta = cfg.get("bertnas")
    return "quantization_config" in cfg or (isinstance(meta, dict) and "quantization" in meta)


def is_quantized_dir(path: str | os.PathLike) -> bool:
    """Whether `path` is a model directory whose config.json describes a quantized model."""
    try:
        return (Path(path) / "config.json").is_file() and is_quantized(read_config(Path(path)))
    except UserError:
        return False  # the loader reports it


ONNX_FILE = "model.onnx"
"""The ONNX graph of an ONNX export (`distill.export.onnx`), optimum's name for it."""


def is_onnx(cfg: dict[str, Any]) -> bool:
    """Whether config.json describes an ONNX export of ours (a `bertnas.onnx` block)."""
    meta = cfg.get("bertnas") if isinstance(cfg, dict) else None
    return isinstance(meta, dict) and isinstance(meta.get("onnx"), dict)


def is_onnx_dir(path: str | os.PathLike) -> bool:
    """Whether `path` is an ONNX model directory: model.onnx with our `bertnas.onnx` block in config.json, or
    model.onnx without safetensors weights beside it (another exporter's, optimum's layout)."""
    path = Path(path)
    if not (path / ONNX_FILE).is_file():
        return False
    try:
        return is_onnx(read_config(path)) or not (path / WEIGHTS).is_file()
    except UserError:
        return not (path / WEIGHTS).is_file()  # the ONNX loader names the problem with config.json


def config_crf(cfg: dict[str, Any]) -> bool:
    """Whether config.json records a CRF tagger (`bertnas.crf`; its weights are `crf.*`)."""
    return bool((cfg.get("bertnas") or {}).get("crf", False))


def config_head(cfg: dict[str, Any]) -> tuple[str, int]:
    """(head, num_labels) from our `bertnas` block, else from HF's `architectures` and `id2label`."""
    meta = cfg.get("bertnas")
    if meta:
        return meta.get("head", "none"), meta.get("num_labels", 0)
    names = cfg.get("architectures") or ["BertModel"]
    head = HF_HEADS.get(names[0])
    if head is None:
        raise TeacherError(f"config.json: cannot tell the task head of {names[0]!r}; supported: {list(HF_HEADS)}")
    if head == "span":
        return head, 2
    if head == "none":
        return head, 0
    n = len(cfg.get("id2label") or {}) or int(cfg.get("num_labels") or 2)
    if head == "classification" and (cfg.get("problem_type") == "regression" or n == 1):
        return "regression", 1
    return head, n
