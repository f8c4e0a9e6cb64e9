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
import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from tqdm.auto import tqdm

from distill.objective import TeacherOutputs
from distill.runlog import cache_root, config_key, write_json
from tasks.batching import batches, default_buckets, num_batches
from tasks.features import Features

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

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def gather(self, batch: dict, hidden_layers: tuple[int, ...] = ()) -> TeacherOutputs:
        """The rows of `batch` (by its `index`), padded like the batch; zeros for padding rows."""
        idx = batch["index"]
        b, length = batch["input_ids"].shape
        if self.token_level:
            logits = self._ragged(self.logits, idx, length, np.float32)
        else:
            logits = np.zeros((b,) + self.logits.shape[1:], np.float32)
            real = idx >= 0
            logits[real] = self.logits[idx[real]]
        hidden = None
        if hidden_layers:
            hidden = np.stack([self._ragged(self.hidden[i], idx, length, np.float32) for i in hidden_layers])
        return TeacherOutputs(logits, hidden)

    def _ragged(self, flat: np.ndarray, idx: np.ndarray, length: int, dtype) -> np.ndarray:
        out = np.zeros((len(idx), length) + flat.shape[1:], dtype)
        for r, i in enumerate(idx):
            if i >= 0:
                lo, hi = self.offsets[i], self.offsets[i + 1]
                out[r, : hi - lo] = flat[lo:hi]
        return out


def features_fingerprint(features: Features) -> str:
    """A hash of the exact inputs (token ids, segment ids, lengths) of every feature."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(features.lengths, np.int64).tobytes())
    for ids, types in zip(features.input_ids, features.token_type_ids):
        h.update(np.ascontiguousarray(ids, np.int32).tobytes())
        h.update(np.ascontiguousarray(types, np.int32).tobytes())
    return h.hexdigest()[:16]


@functools.lru_cache(maxsize=8)
def _jitted_forward(model, hidden_layers: tuple[int, ...]):
    def forward(params, batch):
        out = model.apply(
            {"params": params},
            batch["input_ids"],
            batch["token_type_ids"],
            batch["attention_mask"],
            output_hidden_states=bool(hidden_layers),
        )
        hidden = tuple(out.hidden_states[i].astype(jnp.bfloat16) for i in hidden_layers)
        return out.logits, hidden

    return jax.jit(forward)


def label_features(
    model, params, features: Features, hidden_layers: tuple[int, ...] = (), *, batch_size: int = 128, desc: str = ""
) -> OutputCache:
    """Run the teacher over `features` (no dropout) and keep logits and the listed hidden states."""
    token_level = model.head in ("tagging", "span")
    offsets = np.zeros(len(features) + 1, np.int64)
    np.cumsum(features.lengths, out=offsets[1:])
    fn = _jitted_forward(model, tuple(hidden_layers))
    logits = hidden = None
    t0 = time.perf_counter()
    buckets = default_buckets(features.max_length)
    bar = tqdm(
        batches(features, batch_size, buckets=buckets),
        desc=desc or "teacher labelling",
        unit="batch",
        mininterval=2.0,
        total=num_batches(features, batch_size, buckets),
    )
    for batch in bar:
        out_logits, out_hidden = jax.device_get(fn(params, batch))
        out_logits = np.asarray(out_logits, np.float32)
        if logits is None:
            width = out_logits.shape[2:] if token_level else out_logits.shape[1:]
            rows = offsets[-1] if token_level else len(features)
            logits = np.zeros((rows,) + width, np.float32)
            hidden = {i: np.zeros((offsets[-1], h.shape[-1]), ml_dtypes.bfloat16) for i, h in zip(hidden_layers, out_hidden)}
        for r, i in enumerate(batch["index"]):
            if i < 0:
                continue
            lo, hi = offsets[i], offsets[i + 1]
            if token_level:
                logits[lo:hi] = out_logits[r, : hi - lo]
            else:
                logits[i] = out_logits[r]
            for k, layer in enumerate(hidden_layers):
                hidden[layer][lo:hi] = out_hidden[k][r, : hi - lo]
    bar.close()
    if logits is None:
        raise ValueError("label_features: no features")
    seconds = time.perf_counter() - t0
    log.info("teacher labelled %d features in %.1fs (%.0f/s)", len(features), seconds, len(features) / seconds)
    return OutputCache(logits, offsets, token_level, hidden, seconds)


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
) -> OutputCache:
    """Teacher outputs for `features`, from the on-disk cache or computed (and stored) now.

    A cache entry holding more hidden layers than needed serves too; one
    with fewer is recomputed and replaced.
    """
    key = config_key({"format": FORMAT, "teacher": teacher_key, "task": task, "features": features_fingerprint(features)})
    directory = cache_root() / "outputs" / f"{task}-{key}"
    if use_cache:
        found = _read(directory, set(hidden_layers))
        if found is not None:
            log.info("reusing cached teacher outputs %s", directory)
            return found
    result = label_features(model, params, features, tuple(hidden_layers), batch_size=batch_size, desc=f"{task}: teacher labelling")
    if use_cache:
        _write(directory, result, {"teacher": teacher_key, "task": task, "features": len(features)})
    return result


def _read(directory: Path, hidden_layers: set[int]) -> OutputCache | None:
    meta_file = directory / "meta.json"
    if not meta_file.is_file():
        return None
    meta = json.loads(meta_file.read_text())
    if not hidden_layers <= set(meta["hidden_layers"]):
        return None
    load = lambda name: np.load(directory / f"{name}.npy", mmap_mode="r")  # noqa: E731
    hidden = {i: load(f"hidden_{i}").view(ml_dtypes.bfloat16) for i in sorted(hidden_layers)}
    return OutputCache(load("logits"), np.asarray(load("offsets")), meta["token_level"], hidden)


def _write(directory: Path, out: OutputCache, meta: dict) -> None:
    """Write atomically: a temporary sibling renamed into place."""
    tmp = directory.with_name(f".{directory.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    np.save(tmp / "logits.npy", out.logits)
    np.save(tmp / "offsets.npy", out.offsets)
    for i, h in out.hidden.items():
        np.save(tmp / f"hidden_{i}.npy", h.view(np.uint16))
    meta = {**meta, "format": FORMAT, "token_level": out.token_level, "hidden_layers": sorted(out.hidden), "seconds": out.seconds}
    write_json(tmp / "meta.json", meta)
    shutil.rmtree(directory, ignore_errors=True)
    tmp.rename(directory)
    log.info("cached teacher outputs at %s", directory)
