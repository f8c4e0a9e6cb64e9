"""ONNX export of a float student (jax2onnx), its int8 variant (ONNX Runtime's own dynamic quantization), and
serving either with an onnxruntime `InferenceSession` in our API (`load_onnx`).

An ONNX export is a directory in optimum's layout, so optimum-style serving code (`ORTModelFor...`) and a
plain `onnxruntime.InferenceSession` both take it:
- model.onnx: inputs `input_ids`, `attention_mask`, `token_type_ids` (int64, shape (batch, sequence), both
  axes dynamic; sequence up to the model's max_position_embeddings); outputs by head as transformers names
  them: `logits` (classification (batch, labels), regression (batch, 1), tagging (batch, sequence, labels)),
  `start_logits` and `end_logits` (span, (batch, sequence) each), `last_hidden_state` (head 'none');
- config.json: the float export's (a `BertConfig` with id2label, our `bertnas` block) plus `bertnas.onnx`:
  opset, names, converter and runtime versions, the source, the parity measured at export and, for the
  int8 variant, its quantization;
- the tokenizer files; and for a CRF tagger crf.safetensors (transitions, start, end): the graph computes
  the CRF's emission scores as `logits`, and the constrained Viterbi decoding stays on our side
  (`distill.run.evaluation.task_outputs`), which reads the scores from that file.

The graph is the Flax model's float32 inference function converted by jax2onnx (parameters as
initializers), with the token inputs cast from int64 (what tokenizers and optimum feed) to the int32 it
was traced with. Heterogeneous students (per-layer heads and FFN sizes) convert as they are, unpadded;
shared layers (`BertArch.layer_groups`) reuse one set of initializers. Every export is checked before it
replaces anything: onnxruntime's outputs on a padded probe batch (a batch and length other than any the
graph was traced with) against the Flax model's, within `ATOL` for float32 (else nothing is written); the
int8 variant's difference is recorded.

The int8 variant is `onnxruntime.quantization.quantize_dynamic` on that graph (after ONNX Runtime's
`quant_pre_process`, shape inference and graph optimisation): MatMul/Gemm weights int8 with
one scale per output channel, activations quantized to uint8 at run time (MatMulInteger), embedding tables
int8 (Gather); LayerNorm, softmax and GELU stay float32.

jax2onnx, onnx and onnxruntime are the optional `onnx` extra (`pip install 'bertnas[onnx]'`): this module
imports them inside the functions that need them, and names the extra in one line when they are missing,
so the library imports without them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import logging
import os
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from distill.arch import BertArch
from distill.export.card import write_card
from distill.export.hf import (
    ONNX_FILE,
    check_tokenizer,
    config_crf,
    config_head,
    is_onnx,
    is_quantized_dir,
    load_float_export,
)
from distill.export.int8 import EXPORT_FILES, check_replaceable
from distill.export.scheme import SCHEMES
from distill.files import check_output_path
from distill.model.bert import build_model
from distill.model.infer import collect
from distill.model.modeldir import inside
from distill.model.store import LoadedBert, TeacherError, arch_from_config, load_tokenizer, read_config, write_dir
from tasks.errors import UserError

log = logging.getLogger(__name__)

EXTRA = "pip install 'bertnas[onnx]' && pip install --no-deps jax2onnx==0.17.1"
"""How to get the optional packages (pyproject.toml's `onnx` extra: onnx, onnx-ir, onnxruntime; jax2onnx without
its declared dependencies, which would move orbax-checkpoint back: see pyproject.toml)."""
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
"""The graph's inputs, in transformers' order and names."""
CRF_FILE = "crf.safetensors"
DATA_FILE = "model.onnx_data"
"""External initializers, for a graph over protobuf's 2 GB limit (optimum's name)."""
ONNX_FILES = EXPORT_FILES | {ONNX_FILE, DATA_FILE, CRF_FILE}
"""Every name an ONNX export directory may hold."""
DEFAULT_OPSET = 17
"""ONNX opset: 17 runs on onnxruntime >= 1.14 and most other runtimes (GELU as Erf; `Gelu` needs 20)."""
OPSETS = (17, 23)
"""The opsets `--opset` takes (lowest, highest): jax2onnx 0.17's range that our tests convert at."""
ATOL = 1e-4
"""Largest |ONNX - Flax| logit difference a float32 export may show on the probe batch."""
QUANTIZATION = {"method": "onnxruntime.quantization.quantize_dynamic", "preprocess": "quant_pre_process",
                "weight_type": "QInt8",
                "activations": "uint8, dynamic per tensor", "per_channel": True, "reduce_range": False}
"""The int8 variant's settings (recorded in config.json's `bertnas.onnx.quantization`)."""


def require(*names: str) -> tuple:
    """The optional modules `names` (of jax2onnx, onnx, onnxruntime), imported here, not at the top: they
    are the `onnx` extra, and the library imports without them. A UserError naming the extra when absent."""
    modules = []
    for name in names:
        try:
            with _quiet("jax2onnx.plugins.plugin_system"):  # a warning per example plugin whose extra package
                modules.append(importlib.import_module(name))  # (equinox, dm-pix) is absent: not ours to use
        except ImportError:
            raise UserError(f"ONNX export and serving need the optional packages jax2onnx, onnx and onnxruntime "
                            f"({name} is not installed): {EXTRA}") from None
    return tuple(modules)


def output_names(head: str) -> tuple[str, ...]:
    """The graph's outputs for a head, as transformers names them."""
    return {"span": ("start_logits", "end_logits"), "none": ("last_hidden_state",)}.get(head, ("logits",))


# ------------------------------------------------------------------------------------------------ convert


def forward_fn(loaded: LoadedBert):
    """The float32 inference function `(input_ids, attention_mask, token_type_ids) -> outputs` with the
    parameters closed over (a CRF's scores left out: its emissions are the logits)."""
    model = build_model(loaded.arch, loaded.head, loaded.num_labels)
    params = {k: jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), v) for k, v in loaded.params.items()
              if k != "crf"}
    head = loaded.head

    def forward(input_ids, attention_mask, token_type_ids):
        out = model.apply({"params": params}, input_ids, token_type_ids, attention_mask)
        if head == "none":
            return out.sequence_output
        if head == "span":
            return out.logits[..., 0], out.logits[..., 1]
        return out.logits

    return forward


def to_onnx_model(loaded: LoadedBert, opset: int = DEFAULT_OPSET):
    """`loaded` as an `onnx.ModelProto` (see the module doc), checked by onnx's checker."""
    jax2onnx, onnx = require("jax2onnx", "onnx")
    check_opset(opset)
    spec = jax.ShapeDtypeStruct(jax.export.symbolic_shape("batch, sequence"), jnp.int32)
    # onnx_ir warns once per shape constant it serialises untyped, and jax2onnx's plugin loader once per example
    # plugin whose package (equinox, dm-pix: not installed, see pyproject.toml) is absent: nothing to act on
    with _quiet("onnx_ir"), _quiet("jax2onnx.plugins.plugin_system"):
        proto = jax2onnx.to_onnx(forward_fn(loaded), [spec] * len(INPUTS), model_name=loaded.arch.name,
                                 opset=opset, input_names=list(INPUTS), output_names=list(output_names(loaded.head)))
    int64_inputs(proto)
    proto.producer_name, proto.producer_version = "bertnas (jax2onnx)", metadata.version("jax2onnx")
    onnx.helper.set_model_props(proto, {"head": loaded.head, "arch": loaded.arch.name})
    onnx.checker.check_model(proto)
    return proto


@contextlib.contextmanager
def _quiet(name: str) -> Iterator[None]:
    """Logger `name` at ERROR for the duration."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def check_opset(opset: int) -> None:
    if not OPSETS[0] <= opset <= OPSETS[1]:
        raise UserError(f"--opset: {opset} is outside {OPSETS[0]}..{OPSETS[1]}")


def int64_inputs(proto) -> None:
    """Make the graph's inputs int64 (tokenizers' and optimum's dtype), each cast to the int32 it was traced
    with by a Cast node in front of its former consumers."""
    (onnx,) = require("onnx")
    graph, casts = proto.graph, []
    for value in graph.input:
        inner = f"{value.name}_int32"
        for node in graph.node:
            node.input[:] = [inner if name == value.name else name for name in node.input]
        casts.append(onnx.helper.make_node("Cast", [value.name], [inner], name=f"cast_{value.name}",
                                           to=onnx.TensorProto.INT32))
        value.type.tensor_type.elem_type = onnx.TensorProto.INT64
    nodes = casts + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)


def save_model(proto, path: Path) -> None:
    """model.onnx, one file; a graph over protobuf's 2 GB limit with its initializers in model.onnx_data."""
    (onnx,) = require("onnx")
    big = proto.ByteSize() > 2**31 - 2**26
    onnx.save_model(proto, str(path), save_as_external_data=big, all_tensors_to_one_file=True, location=DATA_FILE)


def quantize_file(src: Path, dest: Path) -> None:
    """ONNX Runtime's dynamic int8 quantization of the graph `src` into `dest` (`QUANTIZATION`), after its
    recommended pre-processing (symbolic shape inference, graph optimisation) into a file beside `dest`."""
    quantization, shape_inference = require("onnxruntime.quantization", "onnxruntime.quantization.shape_inference")
    prepared = dest.with_name(f".{dest.stem}.prepared.onnx")
    shape_inference.quant_pre_process(str(src), str(prepared))
    quantization.quantize_dynamic(prepared, dest, weight_type=quantization.QuantType.QInt8, per_channel=True,
                                  reduce_range=False)
    prepared.unlink()


# ------------------------------------------------------------------------------------------------- export


def export_onnx(out_dir: str | os.PathLike, loaded: LoadedBert, *, opset: int = DEFAULT_OPSET,
                quantize: str | None = None) -> dict[str, Any]:
    """Write `loaded` (a float model: `load_float_export`) as an ONNX export to `out_dir` (see the module
    doc), int8 with `quantize='int8'`; atomically: an existing directory is replaced whole (the caller
    checks it may be: `onnx_export`), a failed export leaves it as it was. Returns a JSON-ready summary."""
    out_dir = check_output_path(out_dir, "ONNX export directory")
    if quantize is not None and quantize not in SCHEMES:
        raise UserError(f"--quantize: {quantize!r} is not one of {list(SCHEMES)}")
    require("jax2onnx", "onnx", "onnxruntime")  # all three, before any work
    check_tokenizer(loaded.tokenizer, loaded.arch)
    proto = to_onnx_model(loaded, opset)
    parity: dict[str, Any] = {}

    def fill(tmp: Path) -> None:
        if quantize:
            save_model(proto, tmp / ".float.onnx")
            quantize_file(tmp / ".float.onnx", tmp / ONNX_FILE)
            (tmp / ".float.onnx").unlink()
        else:
            save_model(proto, tmp / ONNX_FILE)
        if loaded.crf:
            from safetensors.numpy import save_file

            save_file({k: np.asarray(v, np.float32) for k, v in loaded.params["crf"].items()}, str(tmp / CRF_FILE))
        loaded.tokenizer.save_pretrained(str(tmp))
        parity.update(check_parity(tmp / ONNX_FILE, loaded, atol=None if quantize else ATOL))
        cfg = onnx_config(loaded, opset, quantize, parity)
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")

    write_dir(out_dir, fill)
    write_card(out_dir)
    summary = onnx_summary(out_dir, loaded, quantize, parity)
    log.info("exported %s to ONNX%s at %s: %.2f MB, max |ONNX - Flax| %.2e on the probe batch", loaded.arch.name,
             f" ({quantize})" if quantize else "", out_dir, summary["onnx_bytes"] / 1e6, parity["max_abs_diff"])
    return summary


def onnx_config(loaded: LoadedBert, opset: int, quantize: str | None, parity: dict) -> dict[str, Any]:
    """config.json of an ONNX export: the source's, with `bertnas.onnx` (see the module doc)."""
    cfg = json.loads(json.dumps(loaded.hf_config))  # a deep copy
    meta = cfg.setdefault("bertnas", {})
    meta.update(arch=loaded.arch.to_dict(), head=loaded.head, num_labels=loaded.num_labels)
    if loaded.crf:
        meta["crf"] = True
    meta["onnx"] = {
        "file": ONNX_FILE, "opset": opset, "inputs": list(INPUTS), "input_dtype": "int64",
        "outputs": list(output_names(loaded.head)), "dynamic_axes": ["batch", "sequence"],
        "max_sequence": loaded.arch.max_position_embeddings,
        "converter": f"jax2onnx {metadata.version('jax2onnx')}", "onnx": metadata.version("onnx"),
        "onnxruntime": metadata.version("onnxruntime"), "source": str(loaded.path), "parity": parity,
        "quantization": {"scheme": quantize, **QUANTIZATION} if quantize else None,
        **({"crf": f"logits are the CRF's emission scores; its transitions, start and end scores are in "
                   f"{CRF_FILE}, for Viterbi decoding outside the graph"} if loaded.crf else {}),
    }
    return cfg


def check_parity(model_file: Path, loaded: LoadedBert, *, atol: float | None) -> dict[str, Any]:
    """onnxruntime's outputs on a probe batch (3 rows of 11 tokens or fewer, padded, with segment ids:
    shapes no trace used) against the Flax model's: the largest difference, and a ValueError over `atol`."""
    (ort,) = require("onnxruntime")
    length = min(11, loaded.arch.max_position_embeddings)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, len(loaded.tokenizer), (3, length))
    mask = (np.arange(length)[None, :] < np.array([length, max(1, length // 2), 1])[:, None]).astype(np.int64)
    types = (np.arange(length)[None, :] >= length // 2).astype(np.int64) * mask
    session = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    got = session.run(None, dict(zip(INPUTS, (ids * mask, mask, types))))
    want = jax.tree.leaves(jax.jit(forward_fn(loaded))(*(jnp.asarray(x, jnp.int32) for x in (ids * mask, mask, types))))
    diff = max(float(np.max(np.abs(np.asarray(w) - g))) for w, g in zip(want, got))
    if atol is not None and not diff <= atol:
        raise ValueError(f"ONNX export of {loaded.path}: onnxruntime's outputs differ from the Flax model's by "
                         f"{diff:.3g} (> {atol:g}) on a probe batch; nothing was written")
    return {"max_abs_diff": diff, "batch": 3, "sequence": length, "atol": atol}


def onnx_summary(out: Path, loaded: LoadedBert, quantize: str | None, parity: dict) -> dict[str, Any]:
    num_params = loaded.arch.num_params(loaded.head, loaded.num_labels, crf=loaded.crf)
    onnx_bytes = sum((out / n).stat().st_size for n in (ONNX_FILE, DATA_FILE) if (out / n).is_file())
    return {"path": str(out), "format": "onnx", "arch": loaded.arch.name, "task": loaded.meta.get("task"),
            "quantization": quantize, "num_params": num_params, "onnx_bytes": onnx_bytes,
            "bytes_per_param": onnx_bytes / num_params, "max_abs_diff": parity["max_abs_diff"],
            "total_bytes": sum(f.stat().st_size for f in out.rglob("*") if f.is_file())}


def onnx_export(src: str | os.PathLike, out_dir: str | os.PathLike, *, opset: int = DEFAULT_OPSET,
                quantize: str | None = None, overwrite: bool = False) -> dict[str, Any]:
    """`bertnas export --format onnx`: load the float32 export (or any saved BERT with a head) `src` and
    write its ONNX export to `out_dir`. Without `overwrite` an existing non-empty `out_dir` is an error;
    with it, only an export of ours is replaced (nothing is touched otherwise)."""
    require("jax2onnx", "onnx", "onnxruntime")  # first: one line naming the extra, before any loading
    check_opset(opset)
    src, out_dir = Path(src), check_output_path(out_dir, "--output")
    if src.is_dir() and is_quantized_dir(src):
        raise UserError(f"--model {src}: an int8 export; give the float32 export it came from (--quantize int8 "
                        f"makes the ONNX int8 variant)")
    check_replaceable(out_dir, src, overwrite=overwrite, allowed=ONNX_FILES)
    return export_onnx(out_dir, load_float_export(src), opset=opset, quantize=quantize)


# --------------------------------------------------------------------------------------------------- load


@dataclasses.dataclass(frozen=True, eq=False)
class OnnxModel:
    """An ONNX graph served by onnxruntime, in the shape our evaluation and prediction take
    (`distill.run.evaluation.predict_features` calls `predict`)."""

    session: Any
    head: str
    num_labels: int
    crf: bool = False

    def logits(self, input_ids, token_type_ids, attention_mask) -> np.ndarray:
        """Our model's logits for one batch (span: (B, T, 2), start and end stacked)."""
        given = dict(zip(INPUTS, (input_ids, attention_mask, token_type_ids)))
        wanted = {i.name for i in self.session.get_inputs()}  # another exporter's graph may take fewer
        out = self.session.run(list(output_names(self.head)),
                               {k: np.asarray(v, np.int64) for k, v in given.items() if k in wanted})
        return np.stack(out, -1) if self.head == "span" else out[0]

    def predict(self, batches: Iterable[dict], num_features: int, max_length: int):
        """As `distill.model.infer.predict`; rows of padding (index < 0) are not computed at all."""

        def outputs() -> Iterator[tuple[np.ndarray, np.ndarray]]:
            for batch in batches:
                keep = batch["index"] >= 0
                if keep.any():
                    rows = [batch[k][keep] for k in ("input_ids", "token_type_ids", "attention_mask")]
                    yield batch["index"][keep], self.logits(*rows)

        return collect(outputs(), num_features, max_length, span=self.head == "span")


@dataclasses.dataclass(frozen=True, eq=False)
class OnnxBert(LoadedBert):
    """A loaded ONNX export: `.model` is an `OnnxModel`; `.params` holds only a CRF's scores (or nothing)."""

    session: Any = None

    @property
    def model(self) -> OnnxModel:
        return OnnxModel(self.session, self.head, self.num_labels, self.crf)


def load_onnx(path: str | os.PathLike) -> OnnxBert:
    """An ONNX export (ours, or another exporter's BERT in optimum's layout) served by onnxruntime."""
    (ort,) = require("onnxruntime")
    path = Path(path)
    cfg = read_config(path)
    arch, head, num_labels, crf = _describe(path, cfg)
    model_file = inside(path, ONNX_FILE)
    check_external_data(path, model_file)
    try:
        session = ort.InferenceSession(str(model_file), providers=ort.get_available_providers())
    except Exception as e:  # noqa: BLE001 - onnxruntime's own errors (invalid graph, unsupported op)
        raise TeacherError(f"{model_file}: onnxruntime cannot load it ({' '.join(str(e).split())[:200]})") from None
    missing = set(output_names(head)) - {o.name for o in session.get_outputs()}
    if missing or not {i.name for i in session.get_inputs()} <= set(INPUTS):
        raise TeacherError(f"{model_file}: a {head} head needs outputs {list(output_names(head))} and inputs among "
                           f"{list(INPUTS)}; the graph has {[o.name for o in session.get_outputs()]} and "
                           f"{[i.name for i in session.get_inputs()]}")
    params = {"crf": _crf_scores(path, num_labels)} if crf else {}
    tokenizer = load_tokenizer(path)
    check_tokenizer(tokenizer, arch)
    log.info("loaded %s (ONNX, %s, head=%s, %d outputs) from %s", path.name, arch.name, head, num_labels, path)
    return OnnxBert(arch, head, num_labels, params, tokenizer, path, cfg, crf=crf, session=session)


def _describe(path: Path, cfg: dict) -> tuple[BertArch, str, int, bool]:
    """(arch, head, num_labels, crf) from config.json: our `bertnas` block, else the HF config."""
    where = path / "config.json"
    meta = cfg.get("bertnas") or {}
    try:
        arch = BertArch.from_dict(meta["arch"]) if "arch" in meta else arch_from_config(cfg, where)
    except UserError as e:
        raise TeacherError(f"{where}: {e}") from None
    except (KeyError, TypeError, ValueError) as e:
        raise TeacherError(f"{where}: invalid bertnas.arch ({e!r})") from None
    head, num_labels = config_head(cfg)
    crf = config_crf(cfg) and head == "tagging"
    if crf and not is_onnx(cfg):
        raise TeacherError(f"{where}: a CRF tagger without a bertnas.onnx block; export it with bertnas export")
    return arch, head, build_model(arch, head, num_labels, crf=crf).num_labels, crf


def check_external_data(path: Path, model_file: Path) -> None:
    """Every file the graph keeps initializers in must lie inside the model directory (as every file a
    model directory names: `distill.model.modeldir.inside`)."""
    (onnx,) = require("onnx")
    try:
        proto = onnx.load(str(model_file), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - not a protobuf, truncated
        raise TeacherError(f"{model_file}: not an ONNX model ({' '.join(str(e).split())[:160]})") from None
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                inside(path, entry.value, named_in=model_file)


def _crf_scores(path: Path, num_tags: int) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    crf_file = inside(path, CRF_FILE)
    try:
        scores = load_file(str(crf_file))
    except Exception as e:  # noqa: BLE001 - missing or unreadable
        raise TeacherError(f"{crf_file}: cannot read the CRF's scores ({e})") from None
    shapes = {"transitions": (num_tags, num_tags), "start": (num_tags,), "end": (num_tags,)}
    bad = [k for k, shape in shapes.items() if k not in scores or scores[k].shape != shape]
    if bad:
        raise TeacherError(f"{crf_file}: needs transitions {shapes['transitions']}, start and end ({num_tags},); "
                           f"{bad} missing or mis-shaped")
    return {k: scores[k].astype(np.float32) for k in shapes}
