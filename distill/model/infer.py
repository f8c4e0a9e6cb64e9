"""Batched inference: a jitted forward per model, logits for every feature in feature order.

`staged=True` runs the forward in stages instead (`staged_logits`): the embeddings, each layer and the head
jitted apart, each once per width and batch shape. A search scores hundreds of architectures that differ in
each layer's heads and FFN size: compiled whole, each would cost seconds of compilation; masked inside a wider
model (`distill.kd.supernet.masked`), each would compute every masked head and neuron. Staged, they share a
few dozen compiled layers and compute only their own widths.
"""

from __future__ import annotations

import functools
from typing import Iterable, Iterator

import jax
import numpy as np

from distill.arch import BertArch
from distill.model.bert import BertForTask, Dtype, Embeddings, Layer, TaskHead, build_mask
from distill.model.sharding import for_batches
from tasks.batching import inference_tokens
from tasks.packing import is_packed

PACKED_INPUTS = ("position_ids", "cls_index")
"""A packed batch's extra model inputs (`tasks.packing`)."""


def token_cap() -> int | None:
    """The token cap of padded inference batches here (`tasks.batching.inference_tokens`): on one CPU
    device, `INFERENCE_TOKENS`; else none."""
    return inference_tokens(jax.default_backend(), jax.local_device_count())


def model_inputs(batch: dict) -> dict:
    """The model's keyword inputs from a batch, padded (`tasks.batching`) or packed (`tasks.packing`)."""
    inputs = {k: batch[k] for k in ("input_ids", "token_type_ids", "attention_mask")}
    return inputs | {k: batch[k] for k in PACKED_INPUTS if k in batch}


def logits_step(params, batch: dict, *, model: BertForTask):
    return model.apply({"params": params}, **model_inputs(batch)).logits


@functools.lru_cache(maxsize=32)
def _jitted_logits(model: BertForTask):
    return jax.jit(functools.partial(logits_step, model=model))


def predict(model: BertForTask, params, batches: Iterable[dict], num_features: int, max_length: int, *,
            staged: bool = False):
    """Logits for every feature, in feature order (rows of padding dropped).

    Sentence heads give (N, C); token heads give (N, max_length, C) with
    positions past each batch's length zero-filled; span heads return
    (start_logits, end_logits), each (N, max_length). `staged`: on the default
    device, stage by stage (`staged_logits`).
    """
    if staged:
        outputs = ((b["index"], np.asarray(staged_logits(model, params, b))) for b in batches)
    else:
        outputs = _batch_logits(model, params, batches)
    return collect(outputs, num_features, max_length, span=model.head == "span")


def _batch_logits(model: BertForTask, params, batches: Iterable[dict]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    fn = _jitted_logits(model)
    dp = None
    for batch in batches:
        if dp is None:  # over several devices every batch has the first one's rows (no `token_cap` there)
            dp = for_batches(1 if is_packed(batch) else len(batch["index"]))  # packed: whole rows on one device
            params = dp.replicate(params)
        yield batch["index"], np.asarray(fn(params, dp.shard(batch)))


def staged_logits(model: BertForTask, params, batch: dict) -> jax.Array:
    """`model`'s logits of one batch (its dropout off), as `logits_step` gives them, computed stage by stage:
    the embeddings once per hidden size, each layer once per (hidden, heads, FFN) and the head once per hidden
    size are compiled, for each batch shape; architectures that share widths share those compilations.
    Attention is XLA's (`model.attention` 'cudnn' is not used)."""
    arch, dtype = model.arch, model.dtype
    inputs = model_inputs(batch)
    packed = "cls_index" in inputs
    outer = _width(arch, 1, 1)  # the embeddings and the head: the same for any layer widths
    x, mask = _embed_stage(outer, dtype, packed)(params["embeddings"], inputs)
    for g in arch.groups:
        i = arch.group_starts[g]
        layer = _width(arch, arch.num_heads[i], arch.ffn_sizes[i])
        x = _layer_stage(layer, dtype)(params["encoder"][f"layer_{g}"], x, mask)
    head = {k: params[k] for k in ("pooler", "classifier", "qa_outputs") if k in params}
    return _head_stage(outer, model.head, model.num_labels, dtype)(head, x, inputs.get("cls_index"))


def _width(arch: BertArch, heads: int, ffn: int) -> BertArch:
    """What a stage's compilation depends on: a one-layer `arch` with these heads and FFN size."""
    return arch.replace(num_layers=1, num_heads=(heads,), ffn_sizes=(ffn,), layer_groups=None)


@functools.lru_cache(maxsize=64)
def _embed_stage(arch: BertArch, dtype: Dtype, packed: bool):
    embeddings = Embeddings(arch, dtype)

    def stage(params, inputs):
        x = embeddings.apply({"params": params}, inputs["input_ids"], inputs["token_type_ids"], True,
                             inputs.get("position_ids"))
        return x, build_mask(inputs["attention_mask"], packed)

    return jax.jit(stage)


@functools.lru_cache(maxsize=512)
def _layer_stage(arch: BertArch, dtype: Dtype):
    layer = Layer(arch, arch.num_heads[0], arch.ffn_sizes[0], dtype)
    return jax.jit(lambda params, x, mask: layer.apply({"params": params}, x, mask, True, False)[0])


@functools.lru_cache(maxsize=64)
def _head_stage(arch: BertArch, head: str, num_labels: int, dtype: Dtype):
    module = TaskHead(arch, head, num_labels, dtype)
    return jax.jit(lambda params, x, cls_index: module.apply({"params": params}, x, cls_index))


def collect(outputs: Iterable[tuple[np.ndarray, np.ndarray]], num_features: int, max_length: int, *,
            span: bool = False):
    """`predict`'s result from (feature index, logits) per batch, whatever computed them (rows of index < 0
    are padding and dropped): another runtime's logits (`distill.export.onnx`) come back in the same form."""
    out = None
    for idx, logits in outputs:
        keep = idx >= 0
        if out is None:
            shape = (num_features,) + ((max_length,) + logits.shape[2:] if logits.ndim == 3 else logits.shape[1:])
            out = np.zeros(shape, np.float32)
        if logits.ndim == 3:
            out[idx[keep], : logits.shape[1]] = logits[keep]
        else:
            out[idx[keep]] = logits[keep]
    if out is None:
        raise ValueError("predict: no batches")
    if span:
        return out[..., 0], out[..., 1]
    return out
