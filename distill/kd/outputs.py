"""The teacher's outputs on the training set, computed once and cached on disk.

Before distillation the fine-tuned teacher labels every training feature
(originals and augmented copies) once. Its logits, and only when an
intermediate loss needs them the selected hidden states in bfloat16, go to
`cache_root()/outputs/<task>-<key>/`, keyed by the teacher's weights, the
task, the exact token ids of the features and the hidden layers kept. Every
later run and every search trial with the same key memory-maps them, and the
train step gathers each batch's rows instead of running the teacher.

Token-level outputs (tagging and span logits, hidden states) are stored
ragged: one (sum of lengths, ...) array plus per-feature offsets.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from tqdm.auto import tqdm

from distill.files import cache_root, config_key, features_fingerprint, write_json
from distill.kd.objective import TeacherOutputs
from distill.model.infer import model_inputs, token_cap
from distill.model.sharding import for_batches
from tasks.batching import batch_plan, collate
from tasks.features import Features
from tasks.packing import is_packed, pack_shape, packed_batches, packed_plan, packing_pays, packs_on

log = logging.getLogger(__name__)
FORMAT = 1


@dataclass
class OutputCache:
    """Teacher outputs for features 0..N-1 (arrays may be read-only memory maps)."""

    logits: np.ndarray
    """(N, C) for sentence heads; (sum T_i, C) ragged for token heads."""
    offsets: np.ndarray
    """int64 (N + 1,): feature i's tokens are rows offsets[i]:offsets[i+1] of the ragged arrays."""
    token_level: bool
    hidden: dict[int, np.ndarray] = field(default_factory=dict)
    """Teacher hidden-state index -> (sum T_i, H) bfloat16."""
    seconds: float = 0.0
    """Time it took to compute them (0 when read from the cache)."""
    labelled: int = 0
    """Features that went through the teacher for this (0 when read from the cache; fewer than all when
    a cached prefix was reused)."""
    recorded_seconds: float = 0.0
    """The labelling time recorded with the entry when it was computed (what a cold run spends on it)."""

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def gather(self, batch: dict, hidden_layers: tuple[int, ...] = ()) -> TeacherOutputs:
        """The rows of `batch` (by its `index`), padded like the batch; zeros for padding rows."""
        idx = batch["index"]
        b, length = batch["input_ids"].shape  # packed (`tasks.packing`): rows, and idx has one entry per example
        if self.token_level:
            logits = self._ragged(self.logits, idx, length, np.float32)
        else:
            logits = np.zeros((len(idx),) + self.logits.shape[1:], np.float32)
            real = idx >= 0
            logits[real] = self.logits[idx[real]]
        hidden = None
        if hidden_layers and is_packed(batch):  # packed: each example's tokens where the batch put them
            hidden = np.stack([self._packed(self.hidden[i], idx, batch["cls_index"], (b, length)) for i in hidden_layers])
        elif hidden_layers:
            hidden = np.stack([self._ragged(self.hidden[i], idx, length, np.float32) for i in hidden_layers])
        return TeacherOutputs(logits, hidden)

    def _packed(self, flat: np.ndarray, idx: np.ndarray, cls_index: np.ndarray, rows: tuple[int, int]) -> np.ndarray:
        out = np.zeros(rows + flat.shape[1:], np.float32)
        for i, at in zip(idx, cls_index):
            if i >= 0:
                lo, hi = self.offsets[i], self.offsets[i + 1]
                r, t = divmod(int(at), rows[1])
                out[r, t : t + hi - lo] = flat[lo:hi]
        return out

    def _ragged(self, flat: np.ndarray, idx: np.ndarray, length: int, dtype) -> np.ndarray:
        out = np.zeros((len(idx), length) + flat.shape[1:], dtype)
        for r, i in enumerate(idx):
            if i >= 0:
                lo, hi = self.offsets[i], self.offsets[i + 1]
                out[r, : hi - lo] = flat[lo:hi]
        return out


@functools.lru_cache(maxsize=8)
def _jitted_forward(model, hidden_layers: tuple[int, ...]):
    def forward(params, batch):
        out = model.apply(
            {"params": params},
            **model_inputs(batch),
            output_hidden_states=bool(hidden_layers),
        )
        hidden = tuple(out.hidden_states[i].astype(jnp.bfloat16) for i in hidden_layers)
        return out.logits, hidden

    return jax.jit(forward)


def label_features(
    model,
    params,
    features: Features,
    hidden_layers: tuple[int, ...] = (),
    *,
    batch_size: int = 128,
    desc: str = "",
    directory: Path | None = None,
    head: OutputCache | None = None,
) -> OutputCache:
    """Run the teacher over `features` (no dropout) and keep logits and the listed hidden states.

    With `directory`, the hidden states are written straight into `.npy`
    memory maps there (they can outgrow the RAM: 67k SST-2 sentences x 20
    augmented copies x 5 layers is tens of GB), else kept in memory. With
    `head`, the outputs of the first `len(head)` features computed before
    (the originals, when the rest are their augmented copies), those rows are
    copied and only the other features go through the teacher.
    """
    token_level = model.head in ("tagging", "span")
    offsets = np.zeros(len(features) + 1, np.int64)
    np.cumsum(features.lengths, out=offsets[1:])
    fn = _jitted_forward(model, tuple(hidden_layers))
    logits = hidden = None
    done = 0 if head is None else len(head)
    if done:
        if done > len(features) or not np.array_equal(head.offsets, offsets[: done + 1]):
            raise ValueError(f"label_features: `head` ({done} features) is not a prefix of the {len(features)} features")
        logits, hidden = _allocate(directory, features, offsets, token_level, head.logits.shape[1:],
                                   {i: head.hidden[i].shape[-1] for i in hidden_layers})
        logits[: len(head.logits)] = head.logits
        for i in hidden_layers:
            hidden[i][: head.offsets[-1]] = head.hidden[i]
    t0 = time.perf_counter()
    todo = rows(features, done)
    made, total, dp = _labelling_batches(todo, batch_size)
    bar = tqdm(made, desc=desc or "teacher labelling", unit="batch", mininterval=2.0, total=total)
    params = dp.replicate(params)
    for batch in bar:
        out_logits, out_hidden = jax.device_get(fn(params, dp.shard(batch)))
        out_logits = np.asarray(out_logits, np.float32)
        if logits is None:
            width = out_logits.shape[2:] if token_level else out_logits.shape[1:]
            logits, hidden = _allocate(directory, features, offsets, token_level, width,
                                       {i: h.shape[-1] for i, h in zip(hidden_layers, out_hidden)})
        _store(batch, done, offsets, (out_logits, out_hidden), (logits, hidden), hidden_layers, token_level)
    bar.close()
    if logits is None:
        raise ValueError("label_features: no features")
    seconds = time.perf_counter() - t0
    log.info("teacher labelled %d features in %.1fs (%.0f/s)%s", len(todo), seconds, len(todo) / max(seconds, 1e-9),
             f"; {done} more were labelled before" if done else "")
    return OutputCache(logits, offsets, token_level, hidden, seconds, len(todo), recorded_seconds=seconds)


def _store(batch: dict, done: int, offsets: np.ndarray, outputs: tuple, into: tuple, hidden_layers: tuple[int, ...],
           token_level: bool) -> None:
    """Write one batch's teacher outputs (logits, hidden states) into the cache arrays `into`, each example at
    its feature's place (`done` features before this labelling pass); a packed batch's examples are found by
    their first token (`cls_index`)."""
    out_logits, out_hidden = outputs
    logits, hidden = into
    length = batch["input_ids"].shape[1]
    for e, i in enumerate(batch["index"]):
        if i < 0:
            continue
        i += done
        lo, hi = offsets[i], offsets[i + 1]
        r, t = divmod(int(batch["cls_index"][e]), length) if is_packed(batch) else (e, 0)
        if token_level:
            logits[lo:hi] = out_logits[r, : hi - lo]
        else:
            logits[i] = out_logits[e]
        for k, layer in enumerate(hidden_layers):
            hidden[layer][lo:hi] = out_hidden[k][r, t : t + hi - lo]


def _labelling_batches(todo: Features, batch_size: int):
    """(batches, their count, the devices) of the teacher's labelling: packed (`tasks.packing`) for
    sentence-level features on one CPU device where packing saves compute (`packing_pays`), else
    length-bucketed batches of `batch_size` (capped in tokens on one CPU device: `token_cap`) split over the
    devices that divide it."""
    if not len(todo):
        return iter(()), 0, for_batches(batch_size)
    if packs_on(jax.default_backend(), jax.local_device_count()) and packing_pays(todo, batch_size):
        shape = pack_shape(todo, batch_size)
        return packed_batches(todo, shape), len(packed_plan(todo, shape, shuffle=False)), for_batches(1)
    plan = batch_plan(todo, batch_size, tokens=token_cap())  # planned once: the batches and their count
    return (collate(todo, rows, length) for length, rows in plan), len(plan), for_batches(batch_size)


def rows(features: Features, start: int = 0, stop: int | None = None) -> Features:
    """Features `start`..`stop` with just what the teacher and the cache key need: ids, segments, lengths."""
    if start == 0 and stop is None:
        return features
    part = slice(start, stop)
    return Features(features.kind, features.max_length, features.input_ids[part], features.token_type_ids[part],
                    features.lengths[part], features.example_index[part])


def _allocate(directory, features, offsets, token_level: bool, width: tuple, hidden_widths: dict[int, int]):
    n = offsets[-1] if token_level else len(features)
    logits = np.zeros((n,) + tuple(width), np.float32)
    hidden = {i: _hidden_array(directory, i, (offsets[-1], w)) for i, w in hidden_widths.items()}
    return logits, hidden


def hidden_bytes(features: Features, layers: int, width: int) -> int:
    """What `layers` cached hidden states of `features` take (`_hidden_array`: one bfloat16 row per real
    token), without computing them: how a caller tells whether caching them pays."""
    return int(np.sum(features.lengths, dtype=np.int64)) * width * np.dtype(np.uint16).itemsize * layers


def _hidden_array(directory: Path | None, layer: int, shape: tuple[int, int]) -> np.ndarray:
    if directory is None:
        return np.zeros(shape, ml_dtypes.bfloat16)
    shape = tuple(int(n) for n in shape)  # numpy ints would put `np.int64(...)` in the .npy header
    mm = np.lib.format.open_memmap(directory / f"hidden_{layer}.npy", mode="w+", dtype=np.uint16, shape=shape)
    return mm.view(ml_dtypes.bfloat16)


def cached_teacher_outputs(
    model,
    params,
    features: Features,
    *,
    teacher_key: str,
    task: str,
    hidden_layers: tuple[int, ...] = (),
    batch_size: int = 128,
    use_cache: bool = True,
    prefixes: Sequence[int] = (),
) -> OutputCache:
    """Teacher outputs for `features`, from the on-disk cache or computed (and stored) now.

    A cache entry holding more hidden layers than needed serves too; one
    with fewer is recomputed with the union of both and replaced. Entries are
    written to a private temporary directory and renamed into place, so
    concurrent runs (search trials) never see a half-written entry.

    `prefixes`: feature counts p such that the first p features (the
    originals, or the originals with fewer augmented copies) may be cached as
    a set of their own; the longest one cached is reused and only the rest
    are labelled, so no feature goes through the teacher twice (a search
    labels the originals for its trials, then copies for its finals, more
    copies for a faster final).
    """
    directory = _entry(task, teacher_key, features)
    desc = f"{task}: teacher labelling"
    if not use_cache:
        return label_features(model, params, features, tuple(hidden_layers), batch_size=batch_size, desc=desc)
    found = _read(directory, set(hidden_layers), features)
    if found is not None:
        log.info("reusing cached teacher outputs %s", directory)
        return found
    layers = tuple(sorted(set(hidden_layers) | set(_meta(directory).get("hidden_layers", ()))))
    head = _cached_prefix(task, teacher_key, features, prefixes, set(layers))
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        result = label_features(model, params, features, layers, batch_size=batch_size, desc=desc, directory=tmp,
                                head=head)
        _write(tmp, result, {"teacher": teacher_key, "task": task, "features": len(features)})
        _publish(tmp, directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    stored = _read(directory, set(hidden_layers), features)
    if stored is None:
        return result
    stored.seconds, stored.labelled = result.seconds, result.labelled
    return stored


def _cached_prefix(task: str, teacher_key: str, features: Features, prefixes: Sequence[int],
                   layers: set[int]) -> OutputCache | None:
    """The outputs of the longest of `prefixes` (first features) that the cache holds with `layers`, or None."""
    for n in sorted({p for p in prefixes if 0 < p < len(features)}, reverse=True):
        first = rows(features, 0, n)
        if (head := _read(_entry(task, teacher_key, first), layers, first)) is not None:
            log.info("reusing the cached teacher outputs of the first %d features", n)
            return head
    return None


def _entry(task: str, teacher_key: str, features: Features) -> Path:
    key = config_key({"format": FORMAT, "teacher": teacher_key, "task": task, "features": features_fingerprint(features)})
    return cache_root() / "outputs" / f"{task}-{key}"


def _meta(directory: Path) -> dict:
    """The entry's meta.json; {} when there is none or it is damaged (`_read` tells which)."""
    try:
        meta = json.loads((directory / "meta.json").read_text())
    except (OSError, ValueError):
        return {}
    layers = meta.get("hidden_layers") if isinstance(meta, dict) else None
    ok = isinstance(layers, list) and all(isinstance(i, int) for i in layers)
    return meta if ok else {}


def _read(directory: Path, hidden_layers: set[int], features: Features) -> OutputCache | None:
    """The entry in `directory` when it holds `hidden_layers` for exactly `features`; else None.

    A damaged entry (unreadable meta.json or arrays, shapes or offsets that do
    not fit the features, non-finite logits) is logged as such and gives None
    too: the caller labels the features again and replaces it.
    """
    problem: Exception | None = None
    for _ in range(2):  # another run may replace the entry while we read it: read the new one
        if not directory.is_dir():
            return None
        try:
            return _load(directory, hidden_layers, features)
        except OSError as e:
            problem = e
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            problem = e
            break
    log.warning("damaged teacher-output cache %s (%s); labelling again and replacing it", directory, problem)
    return None


def _load(directory: Path, hidden_layers: set[int], features: Features) -> OutputCache | None:
    """Memory-map an entry after checking it against `features`; None when it lacks some of `hidden_layers`."""
    meta = json.loads((directory / "meta.json").read_text())
    if not isinstance(meta, dict) or not isinstance(meta.get("hidden_layers"), list):
        raise ValueError("meta.json is not an entry's metadata")
    if not hidden_layers <= set(meta["hidden_layers"]):
        return None
    load = lambda name: np.load(directory / f"{name}.npy", mmap_mode="r")  # noqa: E731 (never pickles)
    offsets = np.asarray(load("offsets"))
    expected = np.zeros(len(features) + 1, np.int64)
    np.cumsum(features.lengths, out=expected[1:])
    if offsets.shape != expected.shape or not np.array_equal(offsets, expected):
        raise ValueError(f"offsets.npy has {offsets.shape} entries that do not match the {len(features)} features")
    logits = load("logits")
    token_level = bool(meta["token_level"])
    rows_needed = int(expected[-1]) if token_level else len(features)
    if logits.ndim != 2 or logits.shape[0] != rows_needed or not np.isfinite(logits).all():
        raise ValueError(f"logits.npy holds {logits.shape}, not {rows_needed} finite rows")
    hidden = {}
    for i in sorted(hidden_layers):
        h = load(f"hidden_{i}")
        if h.ndim != 2 or h.shape[0] != expected[-1] or h.dtype != np.uint16:
            raise ValueError(f"hidden_{i}.npy holds {h.shape} {h.dtype}, not {int(expected[-1])} bfloat16 rows")
        hidden[i] = h.view(ml_dtypes.bfloat16)
    seconds = meta.get("seconds")
    recorded = float(seconds) if isinstance(seconds, (int, float)) and math.isfinite(seconds) else 0.0
    return OutputCache(logits, offsets, token_level, hidden, recorded_seconds=recorded)


def _write(tmp: Path, out: OutputCache, meta: dict) -> None:
    """Logits, offsets and meta into `tmp` (the hidden states are already there as memory maps)."""
    np.save(tmp / "logits.npy", out.logits)
    np.save(tmp / "offsets.npy", out.offsets)
    for i, h in out.hidden.items():
        f = tmp / f"hidden_{i}.npy"
        if isinstance(h, np.memmap) and Path(h.filename) == f.absolute():
            h.flush()
        else:
            np.save(f, np.asarray(h).view(np.uint16))
    meta = {**meta, "format": FORMAT, "token_level": out.token_level, "hidden_layers": sorted(out.hidden), "seconds": out.seconds}
    write_json(tmp / "meta.json", meta)


def _publish(tmp: Path, directory: Path) -> None:
    """Move a finished entry into place, replacing an older one (another run may have just done the same)."""
    old = directory.with_name(f".{directory.name}.old-{tmp.name}")
    try:
        directory.rename(old)
    except OSError:
        pass
    try:
        tmp.rename(directory)
    except OSError:  # another run published the same entry first
        log.info("teacher outputs %s were cached by another run meanwhile", directory)
    shutil.rmtree(old, ignore_errors=True)
    log.info("cached teacher outputs at %s", directory)
