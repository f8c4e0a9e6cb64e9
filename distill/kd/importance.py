"""How much each head, FFN neuron and hidden dimension of a teacher matters on a task.

`importance_scores`: first-order Taylor importance on task data (Michel et
al. 2019); `weight_scores`: weight norms alone. Scores have the structure
`{"heads": [(N_i,) per teacher layer], "ffn": [(F_i,) ...], "hidden": (h,)}`.
Students keep the top-scored parts (`distill.kd.init`).
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import logging
import os
from pathlib import Path
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np

from distill.arch import BertArch
from distill.files import cache_root, config_key, features_fingerprint
from distill.kd.losses import task_loss
from distill.model.bert import BertForTask
from distill.model.infer import model_inputs
from distill.model.store import LoadedBert, weights_fingerprint
from tasks.batching import batches, buckets_for
from tasks.errors import UserError
from tasks.features import Features
from tasks.registry import is_user_task

log = logging.getLogger(__name__)

Scores = dict[str, Any]


def layer_params(params: dict, arch: BertArch, i: int) -> dict:
    """Layer i's parameters (its group's, when layers share them)."""
    return params["encoder"][f"layer_{arch.groups[i]}"]


def as_f64(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def weight_scores(params: dict, arch: BertArch) -> Scores:
    """Scores from the weights alone.

    heads: ||W_o[n]||_F x ||v slice of head n||_F (qkv kernel and bias);
    ffn: ||intermediate column j (with its bias)|| x ||output row j||;
    hidden: sum of |scale| over every LayerNorm.
    """
    heads, ffn = [], []
    hidden = np.abs(as_f64(params["embeddings"]["LayerNorm"]["scale"]))
    for i in range(arch.num_layers):
        layer = layer_params(params, arch, i)
        qkv, wo = layer["attention"]["qkv"], as_f64(layer["attention"]["output"]["kernel"])
        v = np.concatenate([as_f64(qkv["kernel"])[:, 2], as_f64(qkv["bias"])[None, 2]], axis=0)  # (h + 1, N, D)
        heads.append(np.sqrt(np.sum(wo**2, axis=(1, 2)) * np.sum(v**2, axis=(0, 2))))
        w_in = np.concatenate([as_f64(layer["intermediate"]["kernel"]), as_f64(layer["intermediate"]["bias"])[None]], 0)
        w_out = as_f64(layer["output"]["kernel"])
        ffn.append(np.sqrt(np.sum(w_in**2, axis=0) * np.sum(w_out**2, axis=1)))
        hidden = hidden + np.abs(as_f64(layer["attention_norm"]["scale"])) + np.abs(as_f64(layer["output_norm"]["scale"]))
    return {"heads": heads, "ffn": ffn, "hidden": hidden}


def _importance_step(model: BertForTask, loss_fn: Callable, params: dict, batch: dict):
    """One batch's |gradient x weight| per head and FFN neuron, and hidden |activation| sums."""

    def loss(p):
        out = model.apply(
            {"params": p},
            **model_inputs(batch),
            deterministic=True,
            output_hidden_states=True,
        )
        total, count = loss_fn(out.logits, batch)
        return total, (count, out.hidden_states)

    grads, (count, hidden) = jax.grad(loss, has_aux=True)(params)
    heads, ffn = [], []
    for i in range(model.arch.num_layers):
        w, g = layer_params(params, model.arch, i), layer_params(grads, model.arch, i)
        wo, go = w["attention"]["output"]["kernel"], g["attention"]["output"]["kernel"]
        heads.append(jnp.abs(jnp.sum(wo * go, axis=(1, 2))))
        ffn.append(jnp.abs(jnp.sum(w["output"]["kernel"] * g["output"]["kernel"], axis=1)))
    mask = batch["attention_mask"].astype(jnp.float32)[..., None]
    act = sum(jnp.sum(jnp.abs(x.astype(jnp.float32)) * mask, axis=(0, 1)) for x in hidden)
    tokens = jnp.sum(mask) * len(hidden)
    return heads, ffn, act, tokens, count


@functools.lru_cache(maxsize=8)
def _jitted_importance_step(model: BertForTask, loss_fn: Callable):
    # One compiled step per (equal) model and loss, as `distill.model.bert._jitted_init` does for the init.
    return jax.jit(functools.partial(_importance_step, model, loss_fn))


def importance_scores(
    model: BertForTask,
    params: dict,
    batches: Iterable[dict],
    loss_fn: Callable,
    *,
    max_batches: int | None = None,
) -> Scores:
    """First-order Taylor importance of heads and FFN neurons on task data.

    Head n of layer i scores |sum_{D,h} W_o[n] * dL/dW_o[n]| (= |dL/dm_n| for a
    mask m_n scaling the head's output), FFN neuron j |sum_h W_out[j] *
    dL/dW_out[j]|; both are taken in absolute value per batch, summed over the
    batches and divided by the loss count (examples, or tokens for tagging).
    `loss_fn(logits, batch) -> (sum, count)` (e.g. `losses.task_loss(kind)`).
    hidden: the mean |activation| of each hidden dimension over the embeddings
    output and every layer's output, over real (unmasked) tokens.
    """
    if max_batches is not None:
        batches = itertools.islice(batches, max_batches)
    step = _jitted_importance_step(model, loss_fn)
    params = jax.device_put(params)  # once, not with every batch
    arch = model.arch
    heads = [np.zeros(n) for n in arch.num_heads]
    ffn = [np.zeros(f) for f in arch.ffn_sizes]
    act, tokens, count, seen = np.zeros(arch.hidden_size), 0.0, 0.0, 0
    for batch in batches:
        b_heads, b_ffn, b_act, b_tokens, b_count = step(params, {k: jnp.asarray(v) for k, v in batch.items()})
        for i in range(arch.num_layers):
            heads[i] += as_f64(b_heads[i])
            ffn[i] += as_f64(b_ffn[i])
        act += as_f64(b_act)
        tokens += float(b_tokens)
        count += float(b_count)
        seen += 1
    if not seen:
        raise UserError("importance scores: no batches of task data")
    scale = 1.0 / count if count > 0 else 1.0
    return {
        "heads": [h * scale for h in heads],
        "ffn": [f * scale for f in ffn],
        "hidden": act / max(tokens, 1.0),
    }


def cached_importance(teacher: LoadedBert, train: Features, task: str, kind: str, *, seed: int, num_batches: int) -> Scores:
    """The teacher's head / FFN / hidden importance on `num_batches` shuffled batches of `train`, cached
    on disk like its outputs (every search trial initialises from the same scores)."""
    key = {"teacher": weights_fingerprint(teacher.path), "train": features_fingerprint(train),
           "seed": seed, "batches": num_batches}
    if is_user_task(task):  # the gold labels drive the scores: the same texts of two CSVs may differ in them
        key["labels"] = _labels_fingerprint(train)
    key = config_key(key)
    path = cache_root() / "importance" / f"{task}-{key}.npz"
    if path.is_file():
        try:
            return _read_scores(path)
        except (OSError, ValueError, KeyError) as e:
            log.warning("%s: unreadable importance cache (%s); recomputing", path, e)
    sample = batches(train, 32, buckets=buckets_for(train), shuffle=True, seed=seed)
    sample = itertools.islice(sample, num_batches)
    scores = jax.device_get(importance_scores(teacher.model, teacher.params, sample, task_loss(kind)))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
    arrays = {f"{k}_{i}": np.asarray(a) for k in ("heads", "ffn") for i, a in enumerate(scores[k])}
    np.savez(tmp, hidden=np.asarray(scores["hidden"]), **arrays)
    os.replace(tmp, path)
    return scores


def _labels_fingerprint(train: Features) -> str:
    """A hash of the gold labels of `train` (class ids, scores, or each feature's tag ids)."""
    h = hashlib.sha256()
    labels = train.labels if isinstance(train.labels, list) else [train.labels]
    for row in labels:
        if row is not None:
            h.update(np.ascontiguousarray(row).tobytes())
    return h.hexdigest()[:16]


def _read_scores(path: Path) -> dict:
    """Importance scores saved by `cached_importance` (plain arrays: nothing is unpickled)."""
    with np.load(path, allow_pickle=False) as z:
        layers = sum(1 for k in z.files if k.startswith("heads_"))
        return {
            "heads": [z[f"heads_{i}"] for i in range(layers)],
            "ffn": [z[f"ffn_{i}"] for i in range(layers)],
            "hidden": z["hidden"],
        }
