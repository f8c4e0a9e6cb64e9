"""Quantization schemes by name (`--quantize int8`): what each quantizes. No JAX or qwix import, so the
command line and the search config check a name without loading either (`distill.export.int8` applies them)."""

from __future__ import annotations

import dataclasses
from typing import Any

from tasks.errors import UserError

ACTIVATIONS = ("dynamic", "none")
EMBEDDINGS = ("int8", "float32")

@dataclasses.dataclass(frozen=True)
class QuantConfig:
    """How a model is quantized; recorded in the export's config.json (`bertnas.quantization`)."""

    weights: str = "int8"
    """Dense kernels: int8, one float32 scale per output channel (the only choice)."""
    activations: str = "dynamic"
    """'dynamic': Dense inputs quantized to int8 per token at run time (int8 x int8 products);
    'none': float32 activations, weights dequantized before each product."""
    embeddings: str = "int8"
    """'int8': embedding tables stored int8 with a float32 scale per row; 'float32': kept as they are."""

    def __post_init__(self):
        for field, valid in (("weights", ("int8",)), ("activations", ACTIVATIONS), ("embeddings", EMBEDDINGS)):
            if getattr(self, field) not in valid:
                raise UserError(f"quantization {field}: {getattr(self, field)!r} is not one of {list(valid)}")

    def to_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> QuantConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


SCHEMES = {"int8": QuantConfig()}
"""`--quantize NAME` of scripts/distill_student.py and scripts/search.py (and the latency cost model's key)."""


def scheme(name: str) -> QuantConfig:
    if name not in SCHEMES:
        raise UserError(f"--quantize: {name!r} is not one of {list(SCHEMES)}")
    return SCHEMES[name]
