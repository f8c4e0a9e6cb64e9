"""Load any export (float32, int8 or ONNX) or saved BERT directory in one call."""

from __future__ import annotations

import os
from pathlib import Path

from distill.export.hf import is_onnx_dir, is_quantized_dir, load_float_export
from distill.export.int8 import load_quantized
from distill.export.onnx import load_onnx
from distill.model.store import LoadedBert


def load_export(path: str | os.PathLike) -> LoadedBert:
    """Load an exported (or any saved BERT) directory in our Flax API, head and labels from config.json.

    A float32 export loads through `load_float_export` (strict: a weight the model needs but the
    directory lacks is an error, never a random initialisation); an int8 export as a `QuantizedBert`
    (`distill.export.int8`): the same fields, with the quantized module as `.model`; an ONNX export
    (`distill.export.onnx`, needs the `onnx` extra) as an `OnnxBert`, whose `.model` runs an onnxruntime
    session.
    """
    if Path(path).is_dir() and is_onnx_dir(path):
        return load_onnx(path)
    if Path(path).is_dir() and is_quantized_dir(path):
        return load_quantized(path)
    return load_float_export(path)
