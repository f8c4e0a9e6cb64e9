"""Post-training int8 quantization of an exported student (with qwix), its export and its loader.

What `QuantConfig()` (the `int8` scheme of `--quantize int8`) quantizes:
- every Dense kernel (fused QKV, attention output, FFN in and out, pooler, task head): int8 with one float32
  scale per output channel, symmetric (scale = max |w| / 127.5, qwix's int8 bound; values rounded and
  clipped to [-128, 127]), through qwix's post-training provider (`qwix.PtqProvider`, `quantize_params`);
- their input activations, `activations="dynamic"`: quantized to int8 at run time with one scale per
  token, so each product runs int8 x int8 -> int32 (on this CPU faster than float32, see the README);
  `"none"` keeps activations float32 and dequantizes the weights before each product (slower on CPU);
- the embedding tables (word, position, token type), `embeddings="int8"`: int8 with one float32 scale per
  row (qwix numerics); they are dequantized when the model is built, since a lookup reads a few rows
  and what they cost is file size (the word embeddings are most of a small student's parameters);
- biases, LayerNorm and CRF scores stay float32; attention (scores, softmax, weighted values) runs in float32.

The quantized export (`export_quantized`, `quantize_export`) is a directory like the float32 export:
config.json (the float32 one plus `bertnas.quantization` and a Hugging Face `quantization_config`, with
`model_type` "bertnas-int8", which makes transformers refuse the directory rather than load random weights),
model.safetensors (no pickle) and the tokenizer files. Tensors are named by our Flax parameter paths
(`encoder.layer_0.attention.qkv.kernel`): int8 tensors in the parameter's own shape, each with a float32
`<name>_scale` (per output channel, flattened; per row for embeddings); everything else float32. Layers are
stored unpadded, so the file is about a quarter of the float32 export's. `distill.export.load.load_export`
loads it in one call (and `scripts/evaluate.py`, `scripts/predict.py` take it), as a `QuantizedBert`
whose `.model` is the qwix-quantized Flax module and `.params` its parameters.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import qwix
from flax import traverse_util

from distill.arch import BertArch
from distill.export.card import write_card
from distill.export.hf import (
    check_tokenizer,
    config_crf,
    config_head,
    is_quantized,
    is_quantized_dir,
    load_float_export,
)
from distill.export.scheme import QuantConfig
from distill.files import check_output_path
from distill.model.bert import abstract_params, build_model
from distill.model.hf import WeightsError
from distill.model.modeldir import OWN_FILES, inside
from distill.model.store import WEIGHTS, LoadedBert, TeacherError, load_tokenizer, read_config, write_model_dir
from tasks.errors import UserError

log = logging.getLogger(__name__)

QUANT_METHOD = "bertnas-int8"
"""`quantization_config.quant_method` of a quantized export's config.json."""
SCALE = "_scale"
# Module paths of the Dense layers (our names, see distill.model.bert); attention's own products are not here.
DENSE = r"encoder/layer_\d+/(attention/(qkv|output)|intermediate|output)|pooler|classifier|qa_outputs"


@dataclasses.dataclass(frozen=True, eq=False)
class QuantizedBert(LoadedBert):
    """A quantized model: `.model` is the qwix-quantized module, `.params` its parameters (int8 kernels as
    qwix arrays), `tensors` what its export stores (see the module doc)."""

    quantization: QuantConfig = QuantConfig()
    tensors: dict[str, np.ndarray] = dataclasses.field(default_factory=dict, repr=False)

    @property
    def model(self):
        return quantized_model(self.arch, self.head, self.num_labels, self.crf, self.quantization.activations)


@functools.lru_cache(maxsize=32)
def quantized_model(arch: BertArch, head: str, num_labels: int, crf: bool = False, activations: str = "dynamic"):
    """`build_model(...)` with qwix's post-training quantization of the Dense layers. One module per setting
    (cached), so jitted functions keyed by the module (`distill.model.infer.predict`) compile once."""
    rule = qwix.QuantizationRule(
        module_path=DENSE, weight_qtype=jnp.int8, act_qtype=jnp.int8 if activations == "dynamic" else None
    )
    return qwix.quantize_model(build_model(arch, head, num_labels, crf=crf), qwix.PtqProvider([rule]))


# --------------------------------------------------------------------------------------------- quantize


def quantize_params(arch: BertArch, head: str, num_labels: int, params, cfg: QuantConfig = QuantConfig(), *,
                    crf: bool = False) -> tuple[Any, dict, dict[str, np.ndarray]]:
    """Quantize float parameters of `build_model(arch, head, num_labels, crf=crf)`.

    Returns (quantized module, its parameters, the tensors an export stores). The parameters are built
    from the tensors (`runtime_params`), so a model loaded from its export computes exactly the same.
    """
    qmodel = quantized_model(arch, head, num_labels, crf, cfg.activations)
    host = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
    stored = _quantizer(qmodel, build_model(arch, head, num_labels, crf=crf), cfg.embeddings)(host)
    tensors = {name: np.asarray(value) for name, value in stored.items()}
    return qmodel, runtime_params(tensors, arch, head, num_labels, cfg, crf=crf), tensors


@functools.lru_cache(maxsize=32)
def _quantizer(qmodel, model, embeddings: str):
    """A jitted params -> stored tensors function for one model (compiled once, not op by op)."""
    abstract = _abstract(qmodel)
    float_shapes = traverse_util.flatten_dict(_abstract(model))

    def fn(params):
        quantized = traverse_util.flatten_dict(qwix.quantize_params(params, abstract))
        tensors = {}
        for path, ref in float_shapes.items():
            name, value = ".".join(path), quantized[path]
            if _is_int8(value):
                tensors[name] = value.array.qvalue.reshape(ref.shape)
                tensors[name + SCALE] = value.array.scale.astype(jnp.float32).reshape(-1)
            elif embeddings == "int8" and _is_embedding(path):
                rows = qwix.quantize(value, jnp.int8, channelwise_axes=[0])
                tensors[name], tensors[name + SCALE] = rows.qvalue, rows.scale.astype(jnp.float32).reshape(-1)
            else:
                tensors[name] = value.astype(jnp.float32)
        return tensors

    return jax.jit(fn)


@functools.lru_cache(maxsize=64)
def _abstract(model) -> dict:
    """`abstract_params`, traced once per module."""
    return abstract_params(model)


def quantize(loaded: LoadedBert, cfg: QuantConfig = QuantConfig()) -> QuantizedBert:
    """An in-memory quantized copy of a loaded float model (`load_export`)."""
    if isinstance(loaded, QuantizedBert) or is_quantized(loaded.hf_config):
        source = (loaded.meta.get("quantization") or {}).get("source")
        hint = f"; quantize the float32 export it came from ({source})" if source else ""
        raise UserError(f"{loaded.path}: already quantized{hint}")
    _, params, tensors = quantize_params(loaded.arch, loaded.head, loaded.num_labels, loaded.params, cfg,
                                         crf=loaded.crf)
    fields = {f.name: getattr(loaded, f.name) for f in dataclasses.fields(LoadedBert)}
    return QuantizedBert(**{**fields, "params": params}, quantization=cfg, tensors=tensors)


def runtime_params(tensors: dict[str, np.ndarray], arch: BertArch, head: str, num_labels: int,
                   cfg: QuantConfig, *, crf: bool = False, source: str = "quantized weights") -> dict:
    """The quantized module's parameters from stored tensors: int8 kernels as qwix arrays (reshaped to the
    product's 2-D shape), embedding tables dequantized. A WeightsError names what is missing or mis-shaped."""
    abstract = traverse_util.flatten_dict(_abstract(quantized_model(arch, head, num_labels, crf, cfg.activations)))
    float_shapes = traverse_util.flatten_dict(_abstract(build_model(arch, head, num_labels, crf=crf)))
    problems, out = [], {}

    def take(name: str, shape: tuple[int, ...], dtype) -> np.ndarray | None:
        value = tensors.get(name)
        if value is None:
            problems.append(f"missing {name}")
        elif tuple(value.shape) != tuple(shape) or value.dtype != dtype:
            problems.append(f"{name} is {value.dtype}{list(value.shape)}, expected {np.dtype(dtype)}{list(shape)}")
        else:
            return value
        return None

    for path, ref in float_shapes.items():
        name, spec = ".".join(path), abstract[path]
        if _is_int8(spec):
            q = take(name, ref.shape, np.int8)
            s = take(name + SCALE, (math.prod(spec.array.scale.shape),), np.float32)
            if q is not None and s is not None:
                qarray = qwix.QArray(qvalue=jnp.asarray(q.reshape(spec.array.qvalue.shape)),
                                     scale=jnp.asarray(s.reshape(spec.array.scale.shape)), qtype=jnp.int8)
                out[path] = spec.replace(array=qarray)
        elif cfg.embeddings == "int8" and _is_embedding(path):
            q = take(name, ref.shape, np.int8)
            s = take(name + SCALE, (ref.shape[0],), np.float32)
            if q is not None and s is not None:
                out[path] = jnp.asarray(q.astype(np.float32) * s[:, None])
        else:
            value = take(name, ref.shape, np.float32)
            if value is not None:
                out[path] = jnp.asarray(value)
    known = {".".join(p) for p in float_shapes} | {".".join(p) + SCALE for p in float_shapes}
    problems += [f"unexpected {name}" for name in tensors if name not in known]
    if problems:
        shown = "; ".join(problems[:6]) + (f"; ... {len(problems) - 6} more" if len(problems) > 6 else "")
        raise WeightsError(f"{source}: does not fit {arch.name} quantized ({head} head): {shown}")
    return traverse_util.unflatten_dict(out)


def _is_int8(leaf) -> bool:
    """A qwix-quantized kernel (qwix's `WithAux` around a `QArray`)."""
    return isinstance(getattr(leaf, "array", None), qwix.QArray)


def _is_embedding(path: tuple[str, ...]) -> bool:
    return path[0] == "embeddings" and path[-1] == "embedding"


# ----------------------------------------------------------------------------------------- export / load


def export_quantized(out_dir: str | os.PathLike, model: QuantizedBert) -> dict[str, Any]:
    """Write `model` as a quantized export (see the module doc), atomically: an existing directory is
    replaced whole, an interrupted write leaves it as it was. Returns a JSON-ready summary (sizes)."""
    out_dir = check_output_path(out_dir, "quantized export directory")
    if out_dir.resolve() == Path(model.path).resolve():
        raise UserError(f"{out_dir}: the quantized export would replace its own source; pick another output")
    cfg = json.loads(json.dumps(model.hf_config))  # a deep copy
    meta = cfg.setdefault("bertnas", {})
    meta.update(arch=model.arch.to_dict(), head=model.head, num_labels=model.num_labels)
    if model.crf:
        meta["crf"] = True
    meta["quantization"] = {**model.quantization.to_dict(), "method": QUANT_METHOD,
                            "library": f"qwix {qwix.__version__}", "source": str(model.path)}
    cfg["quantization_config"] = {"quant_method": QUANT_METHOD, "bits": 8, **model.quantization.to_dict()}
    # transformers ignores an unknown quant_method (and would load random weights); an unknown model type
    # it refuses. Our loaders read the architecture from the bertnas block.
    cfg["model_type"] = QUANT_METHOD
    tensors = {k: np.ascontiguousarray(v) for k, v in model.tensors.items()}
    write_model_dir(out_dir, tensors, cfg, model.tokenizer, {"format": QUANT_METHOD})
    write_card(out_dir)
    summary = size_summary(out_dir, model.path, model.arch, model.head, model.num_labels, model.crf)
    log.info("quantized %s to %s: %.2f MB, %.3f of the float32 weights file", model.arch.name, out_dir,
             summary["weight_bytes"] / 1e6, summary["weight_ratio"] or float("nan"))
    return summary


def quantize_export(src: str | os.PathLike, out_dir: str | os.PathLike, cfg: QuantConfig = QuantConfig(), *,
                    overwrite: bool = True) -> dict:
    """Load the float32 export `src`, quantize it and write the quantized export to `out_dir`; its summary.
    Without `overwrite`, an existing non-empty `out_dir` is an error (nothing is touched)."""
    src, out_dir = Path(src), Path(out_dir)
    if src.is_dir() and is_quantized_dir(src):
        source = (read_config(src).get("bertnas") or {}).get("quantization", {}).get("source")
        hint = f"; quantize the float32 export it came from ({source})" if source else ""
        raise UserError(f"{src}: already quantized{hint}")
    check_replaceable(out_dir, src, overwrite=overwrite)
    return export_quantized(out_dir, quantize(load_float_export(src), cfg))


EXPORT_FILES = frozenset({*OWN_FILES, "README.md", ".DS_Store", "merges.txt", "vocab.json", "spiece.model",
                          "sentencepiece.bpe.model", "tokenizer.model"})
"""Every name an export directory of ours may hold (`write_model_dir`: weights, config, tokenizer)."""


def check_replaceable(out_dir: Path, src: Path, *, overwrite: bool, allowed: frozenset[str] = EXPORT_FILES) -> None:
    """A UserError unless writing the export `out_dir` loses nothing: it is new or empty, or, with
    `overwrite`, an export of ours holding only an export's files (names in `allowed`); never the source
    `src`, a directory holding it or one inside it."""
    out_r, src_r = out_dir.resolve(), src.resolve()
    if out_r == src_r or out_r in src_r.parents or src_r in out_r.parents:
        raise UserError(f"--output {out_dir}: is, holds or lies inside the source model {src}; pick a directory "
                        f"outside it")
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise UserError(f"--output {out_dir}: exists and is not a directory")
    held = sorted(p.name for p in out_dir.iterdir())
    if not held:
        return
    if not overwrite:
        raise UserError(f"--output {out_dir}: already exists; pass --overwrite to replace it")
    others = [name for name in held if name not in allowed]
    try:
        ours = "bertnas" in read_config(out_dir)
    except UserError:  # no config.json, or one that is not a model's
        ours = False
    if others or not ours:
        what = f"files an export does not write ({', '.join(others[:4])})" if others else "no bertnas export"
        raise UserError(f"--output {out_dir}: holds {what}; --overwrite replaces only an export of ours")


def size_summary(path: Path, source: str | os.PathLike | None, arch: BertArch, head: str, num_labels: int,
                 crf: bool = False) -> dict[str, Any]:
    """Bytes of a quantized export, against its float32 source when that is still there."""
    num_params = arch.num_params(head, num_labels, crf=crf)
    summary = {"path": str(path), "arch": arch.name, "num_params": num_params,
               "weight_bytes": (path / WEIGHTS).stat().st_size, "total_bytes": _dir_bytes(path)}
    summary["bytes_per_param"] = summary["weight_bytes"] / num_params
    src = Path(source) if source else None
    ok = src is not None and (src / WEIGHTS).is_file()
    summary.update(source=str(src) if src else None,
                   source_weight_bytes=(src / WEIGHTS).stat().st_size if ok else None,
                   source_total_bytes=_dir_bytes(src) if ok else None)
    summary["weight_ratio"] = summary["weight_bytes"] / summary["source_weight_bytes"] if ok else None
    summary["total_ratio"] = summary["total_bytes"] / summary["source_total_bytes"] if ok else None
    return summary


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def load_quantized(path: str | os.PathLike, cfg: dict[str, Any] | None = None) -> QuantizedBert:
    """A quantized export (called by `distill.export.load.load_export`, which reads config.json first)."""
    from safetensors.numpy import load_file

    path = Path(path)
    cfg = cfg if cfg is not None else read_config(path)
    where = path / "config.json"
    meta = cfg.get("bertnas") or {}
    method = (cfg.get("quantization_config") or {}).get("quant_method")
    if method != QUANT_METHOD or "quantization" not in meta or "arch" not in meta:
        raise TeacherError(
            f"{where}: quantized with {method!r}; only {QUANT_METHOD!r} exports (scripts/quantize.py) load here"
        )
    try:
        arch = BertArch.from_dict(meta["arch"])
        qcfg = QuantConfig.from_dict(meta["quantization"])
    except UserError as e:
        raise TeacherError(f"{where}: {e}") from None
    except (KeyError, TypeError, ValueError) as e:
        raise TeacherError(f"{where}: invalid quantized config ({e!r})") from None
    head, num_labels = config_head(cfg)
    crf = config_crf(cfg) and head == "tagging"
    weights = inside(path, WEIGHTS)  # a link out of the directory is refused
    if not weights.is_file():
        raise TeacherError(f"{path}: no weights ({WEIGHTS} not found)")
    try:
        tensors = load_file(str(weights))
    except Exception as e:  # noqa: BLE001
        raise TeacherError(f"{weights}: cannot read safetensors weights ({e})") from None
    num_labels = build_model(arch, head, num_labels, crf=crf).num_labels
    params = runtime_params(tensors, arch, head, num_labels, qcfg, crf=crf, source=str(weights))
    # transformers' tokenizer loader reads config.json too and warns about its model_type (unknown on purpose).
    quiet = logging.getLogger("transformers.configuration_utils")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        tokenizer = load_tokenizer(path)
    finally:
        quiet.setLevel(level)
    check_tokenizer(tokenizer, arch)
    log.info("loaded %s (%s int8, head=%s, %d outputs) from %s", path.name, arch.name, head, num_labels, path)
    return QuantizedBert(arch, head, num_labels, params, tokenizer, path, cfg, crf=crf, quantization=qcfg,
                         tensors=tensors)
