"""Layer maps: which teacher layer each student layer copies (initialisation) or matches (losses).

'uniform' is TinyBERT's g(m) = m * T / S (rounded up), 'first' / 'last' the
first / last S teacher layers, or an explicit list of 0-based teacher layers.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from distill.arch import LAYER_MAPS, ArchError
from tasks.errors import UserError


def parse_layers(layers: Any) -> str | tuple[int, ...]:
    if isinstance(layers, str):
        if layers in LAYER_MAPS:
            return layers
        try:
            layers = tuple(int(v) for v in layers.split(","))
        except ValueError:
            raise UserError(
                f"layers: {layers!r} is not valid; valid: {', '.join(LAYER_MAPS)} or teacher layer indices "
                f"such as '0,2,5'"
            ) from None
    try:
        entries = tuple(layers)
    except TypeError:
        raise UserError(f"layers: {layers!r} is not valid; valid: {', '.join(LAYER_MAPS)} or a list of ints") from None
    bad = [v for v in entries if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0]
    if bad or not entries:
        raise UserError(f"layers: explicit map {entries!r} needs integers >= 0 (0-based teacher layers), got {bad!r}")
    return tuple(int(v) for v in entries)


def teacher_layers(cfg_layers: str | tuple[int, ...], teacher_layers: int, student_layers: int) -> tuple[int, ...]:
    """The 0-based teacher layer each student layer copies.

    'uniform': student layer j takes teacher layer ceil((j + 1) * T / S) - 1,
    so the last student layer copies the last teacher layer and each student
    layer stands for the block of teacher layers ending there (TinyBERT's
    g(m) = m * T / S, rounded up when S does not divide T: 6 -> 4 gives
    (1, 2, 4, 5)). 'first' / 'last': the first / last S layers. An explicit
    map needs one entry per student layer, each < T; it may repeat layers.
    """
    t, s = teacher_layers, student_layers
    if isinstance(cfg_layers, str) and cfg_layers not in LAYER_MAPS:
        cfg_layers = parse_layers(cfg_layers)
    if not isinstance(cfg_layers, str):
        entries = tuple(cfg_layers)
        if len(entries) != s:
            raise ArchError(f"layers: explicit map {entries} has {len(entries)} entries for {s} student layers")
        out = [v for v in entries if not 0 <= v < t]
        if out:
            raise ArchError(f"layers: explicit map {entries} has indices {out} outside the teacher's 0..{t - 1}")
        return tuple(int(v) for v in entries)
    if s > t:
        raise ArchError(
            f"num_layers: the student has {s} layers but the teacher only {t}; "
            f"layers={cfg_layers!r} needs student <= teacher (an explicit map may repeat layers)"
        )
    if cfg_layers == "first":
        return tuple(range(s))
    if cfg_layers == "last":
        return tuple(range(t - s, t))
    return tuple(-(-(j + 1) * t // s) - 1 for j in range(s))
