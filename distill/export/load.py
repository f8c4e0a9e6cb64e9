"""Load any export (float32 or int8) or saved BERT directory in our Flax API, in one call."""

from __future__ import annotations

import os
from pathlib import Path

from distill.export.hf import is_quantized_dir, load_float_export
from distill.export.int8 import load_quantized
from distill.model.store import LoadedBert


def load_export(path: str | os.PathLike) -> LoadedBert:
    """Load an exported (or any saved BERT) directory in our Flax API, head and labels from config.json.

    A float32 export loads through `load_float_export` (strict: a weight the model needs but the
    directory lacks is an error, never a random initialisation); an int8 export as a `QuantizedBert`
    (`distill.export.int8`): the same fields, with the quantized module as `.model`.
    """
    if Path(path).is_dir() and is_quantized_dir(path):
        return load_quantized(path)
    return load_float_export(path)
