"""Hugging Face BERT weights <-> our Flax parameter tree.

`from_hf` turns a PyTorch-layout state dict (numpy arrays named like
`bert.encoder.layer.0.attention.self.query.weight`) into our tree, merged
onto a fresh initialisation: it logs missing and unexpected keys and fails on
any shape mismatch. `to_hf` writes the inverse, padding heterogeneous layers
to the uniform HF shape with zero heads and zero FFN neurons, which leaves the
function unchanged (a zero value head adds nothing; a neuron with zero input
weights and bias outputs GELU(0) = 0 into zero output weights).

Shared layers (`BertArch.layer_groups`): HF BERT cannot share, so `to_hf`
writes a group's weights into every layer of the group; `to_hf(grouped=True)`
writes each group once, under the names of its first layer (our export's
layout; config.json records the grouping). `from_hf` reads both: each layer
present fills its group, and copies of one group must be equal.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import numpy as np
from flax import traverse_util

from distill.arch import BertArch
from tasks.errors import UserError

log = logging.getLogger(__name__)

# HF buffers that are not parameters.
_IGNORED = ("embeddings.position_ids",)
_PREFIXES = ("bert.", "model.")

Flat = dict[tuple[str, ...], np.ndarray]


class WeightsError(UserError, ValueError):
    """Checkpoint weights that do not fit the model."""


def _strip(name: str) -> str:
    for prefix in _PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def _ln(prefix: str, path: tuple[str, ...]) -> dict[str, tuple]:
    return {f"{prefix}.weight": path + ("scale",), f"{prefix}.bias": path + ("bias",)}


def _simple_map(num_layers: int) -> dict[str, tuple[tuple[str, ...], bool]]:
    """HF name -> (our path, transpose?) for the tensors that map one to one."""
    m: dict[str, tuple[tuple[str, ...], bool]] = {
        "embeddings.word_embeddings.weight": (("embeddings", "word_embeddings", "embedding"), False),
        "embeddings.position_embeddings.weight": (("embeddings", "position_embeddings", "embedding"), False),
        "embeddings.token_type_embeddings.weight": (("embeddings", "token_type_embeddings", "embedding"), False),
        "pooler.dense.weight": (("pooler", "kernel"), True),
        "pooler.dense.bias": (("pooler", "bias"), False),
        "classifier.weight": (("classifier", "kernel"), True),
        "classifier.bias": (("classifier", "bias"), False),
        "qa_outputs.weight": (("qa_outputs", "kernel"), True),
        "qa_outputs.bias": (("qa_outputs", "bias"), False),
        "crf.transitions": (("crf", "transitions"), False),  # a CRF tagger's (no HF counterpart)
        "crf.start": (("crf", "start"), False),
        "crf.end": (("crf", "end"), False),
    }
    for k, v in _ln("embeddings.LayerNorm", ("embeddings", "LayerNorm")).items():
        m[k] = (v, False)
    for i in range(num_layers):
        hf, ours = f"encoder.layer.{i}", ("encoder", f"layer_{i}")
        m[f"{hf}.intermediate.dense.weight"] = (ours + ("intermediate", "kernel"), True)
        m[f"{hf}.intermediate.dense.bias"] = (ours + ("intermediate", "bias"), False)
        m[f"{hf}.output.dense.weight"] = (ours + ("output", "kernel"), True)
        m[f"{hf}.output.dense.bias"] = (ours + ("output", "bias"), False)
        for k, v in _ln(f"{hf}.attention.output.LayerNorm", ours + ("attention_norm",)).items():
            m[k] = (v, False)
        for k, v in _ln(f"{hf}.output.LayerNorm", ours + ("output_norm",)).items():
            m[k] = (v, False)
    return m


def _convert(state: dict[str, np.ndarray], arch: BertArch) -> tuple[Flat, list[str]]:
    """HF state dict -> (flat tree of converted arrays, unexpected HF names)."""
    simple = _simple_map(arch.num_layers)
    flat: Flat = {}
    unexpected = []
    qkv: dict[int, dict[str, dict[str, np.ndarray]]] = {}
    out_proj: dict[int, dict[str, np.ndarray]] = {}
    for raw_name, value in state.items():
        name = _strip(raw_name)
        if name in _IGNORED:
            continue
        if name in simple:
            path, transpose = simple[name]
            flat[path] = np.asarray(value).T if transpose else np.asarray(value)
            continue
        parts = name.split(".")
        if len(parts) == 7 and parts[:2] == ["encoder", "layer"] and parts[3:5] == ["attention", "self"]:
            i = int(parts[2])
            if i < arch.num_layers and parts[5] in ("query", "key", "value"):
                qkv.setdefault(i, {}).setdefault(parts[6], {})[parts[5]] = np.asarray(value)
                continue
        if len(parts) == 7 and parts[:2] == ["encoder", "layer"] and parts[3:6] == ["attention", "output", "dense"]:
            i = int(parts[2])
            if i < arch.num_layers:
                out_proj.setdefault(i, {})[parts[6]] = np.asarray(value)
                continue
        unexpected.append(raw_name)

    hidden, head_size = arch.hidden_size, arch.head_size
    for i, tensors in qkv.items():
        path = ("encoder", f"layer_{i}", "attention", "qkv")
        if "weight" in tensors and len(tensors["weight"]) == 3:
            w = np.stack([tensors["weight"][n] for n in ("query", "key", "value")])  # (3, out, in)
            _need(w.shape[1:] == (w.shape[1], hidden) and w.shape[1] % head_size == 0, path, w.shape, arch)
            heads = w.shape[1] // head_size
            flat[path + ("kernel",)] = w.reshape(3, heads, head_size, w.shape[2]).transpose(3, 0, 1, 2)
        if "bias" in tensors and len(tensors["bias"]) == 3:
            b = np.stack([tensors["bias"][n] for n in ("query", "key", "value")])
            flat[path + ("bias",)] = b.reshape(3, -1, head_size)
    for i, tensors in out_proj.items():
        path = ("encoder", f"layer_{i}", "attention", "output")
        if "weight" in tensors:
            w = tensors["weight"]  # (hidden, heads * head_size)
            _need(w.shape[1] % head_size == 0, path, w.shape, arch)
            flat[path + ("kernel",)] = w.T.reshape(-1, head_size, w.shape[0])
        if "bias" in tensors:
            flat[path + ("bias",)] = tensors["bias"]
    return flat, unexpected


def _need(ok: bool, path, shape, arch: BertArch) -> None:
    if not ok:
        raise WeightsError(f"{'/'.join(path)}: checkpoint shape {tuple(shape)} does not fit {arch.name}")


def from_hf(
    state: dict[str, np.ndarray],
    arch: BertArch,
    target: dict[str, Any],
    *,
    init_fn: Callable[[], dict[str, Any]] | None = None,
    source: str = "checkpoint",
) -> tuple[dict[str, Any], list[str], list[str]]:
    """Fit HF weights onto our tree. Returns (params, missing, unexpected).

    `target` gives the model's parameter shapes (arrays or
    `jax.ShapeDtypeStruct`s). Parameters the checkpoint lacks (a new task head)
    come from `init_fn()`, called only when something is missing. Heterogeneous
    students are stored padded (see module doc): the leading heads / neurons
    of a padded tensor are taken when our layer is smaller and the rest must
    be zero.
    """
    flat, unexpected = _convert(state, arch)
    flat = _group_layers(flat, arch, source)
    target_flat = traverse_util.flatten_dict(target)
    merged, missing = {}, []
    for path, ref in target_flat.items():
        if path not in flat:
            missing.append(path)
            continue
        value = _unpad(flat.pop(path), tuple(ref.shape), path, source)
        merged[path] = value.astype(ref.dtype)
    unexpected += ["/".join(p) for p in flat]  # converted but not in this model (e.g. another head)
    if missing:
        if init_fn is None:
            raise WeightsError(f"{source}: missing weights {['/'.join(p) for p in missing]}")
        fresh = traverse_util.flatten_dict(init_fn())
        for path in missing:
            merged[path] = np.asarray(fresh[path])
        log.warning(
            "%s: %d parameters missing, left at their initial values: %s",
            source,
            len(missing),
            ["/".join(p) for p in missing],
        )
    if unexpected:
        log.warning("%s: %d unexpected weights ignored: %s", source, len(unexpected), unexpected)
    return traverse_util.unflatten_dict(merged), ["/".join(p) for p in missing], unexpected


def _layer_index(path: tuple[str, ...]) -> int | None:
    """i for an `encoder/layer_{i}/...` path, else None."""
    is_layer = len(path) > 2 and path[0] == "encoder" and path[1].startswith("layer_")
    return int(path[1][len("layer_"):]) if is_layer else None


def _group_layers(flat: Flat, arch: BertArch, source: str) -> Flat:
    """Converted HF layer i (`encoder/layer_{i}`) -> our `encoder/layer_{group of i}`; copies of a group must agree."""
    if arch.layer_groups is None:
        return flat
    out: Flat = {}
    origin: dict[tuple[str, ...], int] = {}
    for path, value in flat.items():
        i = _layer_index(path)
        if i is None:
            out[path] = value
            continue
        g = arch.groups[i]
        ours = ("encoder", f"layer_{g}") + path[2:]
        if ours not in out:
            out[ours], origin[ours] = value, i
        elif not (np.shape(out[ours]) == np.shape(value) and np.array_equal(out[ours], value)):
            raise WeightsError(
                f"{source}: layers {origin[ours]} and {i} share parameter group {g} (layer_groups) but their "
                f"{'/'.join(path[2:])} weights differ"
            )
    return out


def _unpad(value: np.ndarray, shape: tuple[int, ...], path, source: str) -> np.ndarray:
    if value.shape == shape:
        return value
    axis = _padded_axis(path)
    if axis is not None and value.ndim == len(shape):
        same_elsewhere = all(value.shape[d] == shape[d] for d in range(len(shape)) if d != axis)
        if same_elsewhere and value.shape[axis] > shape[axis]:
            extra = np.take(value, np.arange(shape[axis], value.shape[axis]), axis=axis)
            if not np.any(extra):
                return np.take(value, np.arange(shape[axis]), axis=axis)
    raise WeightsError(f"{source}: shape mismatch for {'/'.join(path)}: checkpoint {value.shape}, model {shape}")


def _padded_axis(path: tuple[str, ...]) -> int | None:
    """The axis along which `to_hf` pads a heterogeneous layer's tensor."""
    module, leaf = path[-2], path[-1]
    if module == "qkv":
        return {"kernel": 2, "bias": 1}[leaf]
    if module == "intermediate":
        return {"kernel": 1, "bias": 0}[leaf]
    if module == "output" and leaf == "kernel" and path[0] == "encoder":
        return 0  # attention output (heads, H, h) and FFN output (ffn, h)
    return None


def to_hf(
    params: dict[str, Any], arch: BertArch, *, prefix: str = "bert.", grouped: bool = False
) -> dict[str, np.ndarray]:
    """Our tree -> HF state dict (PyTorch layout, float32 numpy), padded to uniform HF shapes.

    Encoder, embeddings and pooler names get `prefix` (`bert.` for the
    `BertFor...` task classes); head tensors (classifier, qa_outputs) do not.
    Shared layers: every layer gets its group's weights (what HF BERT loads),
    or, with `grouped`, only each group's first layer (each group stored once).
    """
    layers = arch.group_starts if grouped else tuple(range(arch.num_layers))
    flat = _per_layer(traverse_util.flatten_dict(params), arch, layers)
    heads_hf, ffn_hf = arch.hf_padded_sizes()
    head_size = arch.head_size
    out: dict[str, np.ndarray] = {}
    for name, (path, transpose) in _simple_map(arch.num_layers).items():
        if path not in flat:
            continue
        value = np.asarray(flat[path], np.float32)
        if path[-2] == "intermediate":
            value = _pad(value, value.ndim - 1, ffn_hf)
        elif path[-2] == "output" and path[0] == "encoder" and path[-1] == "kernel":
            value = _pad(value, 0, ffn_hf)
        value = value.T if transpose else value
        head = path[0] in ("classifier", "qa_outputs", "crf")
        out[(name if head else prefix + name)] = np.ascontiguousarray(value)
    for i in layers:
        base = ("encoder", f"layer_{i}", "attention")
        hf = f"{prefix}encoder.layer.{i}.attention"
        kernel = _pad(np.asarray(flat[base + ("qkv", "kernel")], np.float32), 2, heads_hf)  # (h, 3, N, H)
        bias = _pad(np.asarray(flat[base + ("qkv", "bias")], np.float32), 1, heads_hf)  # (3, N, H)
        for j, n in enumerate(("query", "key", "value")):
            out[f"{hf}.self.{n}.weight"] = np.ascontiguousarray(kernel[:, j].reshape(arch.hidden_size, -1).T)
            out[f"{hf}.self.{n}.bias"] = bias[j].reshape(-1)
        w = _pad(np.asarray(flat[base + ("output", "kernel")], np.float32), 0, heads_hf)  # (N, H, h)
        out[f"{hf}.output.dense.weight"] = np.ascontiguousarray(w.reshape(heads_hf * head_size, -1).T)
        out[f"{hf}.output.dense.bias"] = np.asarray(flat[base + ("output", "bias")], np.float32)
    return out


def _per_layer(flat: Flat, arch: BertArch, layers: tuple[int, ...]) -> Flat:
    """Our flat tree with `encoder/layer_{g}` per group -> `encoder/layer_{i}` (HF layer i) for each of `layers`."""
    if arch.layer_groups is None:
        return flat
    out = {path: value for path, value in flat.items() if _layer_index(path) is None}
    for path, value in flat.items():
        g = _layer_index(path)
        if g is not None:
            out.update({("encoder", f"layer_{i}") + path[2:]: value for i in layers if arch.groups[i] == g})
    return out


def _pad(value: np.ndarray, axis: int, size: int) -> np.ndarray:
    if value.shape[axis] == size:
        return value
    widths = [(0, 0)] * value.ndim
    widths[axis] = (0, size - value.shape[axis])
    return np.pad(value, widths)
