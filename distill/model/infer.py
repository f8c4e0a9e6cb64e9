"""Batched inference: a jitted forward per model, logits for every feature in feature order."""

from __future__ import annotations

import functools
from typing import Iterable, Iterator

import jax
import numpy as np

from distill.model.bert import BertForTask
from distill.model.sharding import for_batches
from tasks.packing import is_packed

PACKED_INPUTS = ("position_ids", "cls_index")
"""A packed batch's extra model inputs (`tasks.packing`)."""


def model_inputs(batch: dict) -> dict:
    """The model's keyword inputs from a batch, padded (`tasks.batching`) or packed (`tasks.packing`)."""
    inputs = {k: batch[k] for k in ("input_ids", "token_type_ids", "attention_mask")}
    return inputs | {k: batch[k] for k in PACKED_INPUTS if k in batch}


def logits_step(params, batch: dict, *, model: BertForTask):
    return model.apply({"params": params}, **model_inputs(batch)).logits


@functools.lru_cache(maxsize=32)
def _jitted_logits(model: BertForTask):
    return jax.jit(functools.partial(logits_step, model=model))


def predict(model: BertForTask, params, batches: Iterable[dict], num_features: int, max_length: int):
    """Logits for every feature, in feature order (rows of padding dropped).

    Sentence heads give (N, C); token heads give (N, max_length, C) with
    positions past each batch's length zero-filled; span heads return
    (start_logits, end_logits), each (N, max_length).
    """
    return collect(_batch_logits(model, params, batches), num_features, max_length, span=model.head == "span")


def _batch_logits(model: BertForTask, params, batches: Iterable[dict]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    fn = _jitted_logits(model)
    dp = None
    for batch in batches:
        if dp is None:  # every batch has the first one's rows (padded): split over the devices that divide it
            dp = for_batches(1 if is_packed(batch) else len(batch["index"]))  # packed: whole rows on one device
            params = dp.replicate(params)
        yield batch["index"], np.asarray(fn(params, dp.shard(batch)))


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
