"""Fixed-shape batches from ragged features, bucketed by length.

Each feature goes to the smallest bucket length >= its token count, batches
never mix buckets, and every batch has exactly `batch_size` rows (the last
batch of a bucket is filled with dummy rows of weight 0 and index -1), so a
jitted step compiles once per bucket. With `shuffle`, the order inside each
bucket and the order of the batches depend only on (seed, epoch): batch i
of epoch e is the same batch in a resumed run (`start=i`).
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

from tasks.features import IGNORE, Features

_FRACTIONS_OF_8 = (1, 2, 3, 4, 6, 8)


def default_buckets(max_length: int) -> tuple[int, ...]:
    """About six lengths, multiples of 8 up to `max_length` (16..128 for 128)."""
    if max_length < 1:
        raise ValueError(f"max_length must be positive, got {max_length}")
    lengths = {min(max_length, -(-max_length * k // 64) * 8) for k in _FRACTIONS_OF_8}
    return tuple(sorted(lengths | {max_length}))


def _check_buckets(features: Features, buckets: Sequence[int] | None) -> np.ndarray:
    b = np.asarray(default_buckets(features.max_length) if buckets is None else buckets)
    if b.ndim != 1 or not len(b) or b.min() < 1 or np.any(np.diff(b) <= 0):
        raise ValueError(f"buckets must be increasing positive lengths, got {buckets}")
    if len(features) and features.lengths.max() > b[-1]:
        longest = int(np.argmax(features.lengths))
        raise ValueError(
            f"feature {longest} has {features.lengths[longest]} tokens, "
            f"more than the largest bucket {b[-1]}"
        )
    return b.astype(np.int64)


def batch_plan(
    features: Features,
    batch_size: int,
    *,
    buckets: Sequence[int] | None = None,
    shuffle: bool = False,
    seed: int = 0,
    epoch: int = 0,
) -> list[tuple[int, np.ndarray]]:
    """(bucket length, feature indices (batch_size,), -1 for padding) per batch."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    b = _check_buckets(features, buckets)
    which = np.searchsorted(b, features.lengths, side="left")
    rng = np.random.default_rng((seed, epoch)) if shuffle else None
    plan = []
    for k, length in enumerate(b):
        members = np.flatnonzero(which == k)
        if rng is not None:
            members = rng.permutation(members)
        for lo in range(0, len(members), batch_size):
            rows = np.full(batch_size, -1, dtype=np.int64)
            chunk = members[lo : lo + batch_size]
            rows[: len(chunk)] = chunk
            plan.append((int(length), rows))
    if rng is not None:
        plan = [plan[i] for i in rng.permutation(len(plan))]
    return plan


def num_batches(features: Features, batch_size: int, buckets: Sequence[int] | None = None) -> int:
    """How many batches one epoch of `batches` yields."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    b = _check_buckets(features, buckets)
    counts = np.bincount(np.searchsorted(b, features.lengths, side="left"), minlength=len(b))
    return int(sum(-(-c // batch_size) for c in counts))


def batches(
    features: Features,
    batch_size: int,
    *,
    buckets: Sequence[int] | None = None,
    shuffle: bool = False,
    seed: int = 0,
    epoch: int = 0,
    start: int = 0,
) -> Iterator[dict[str, np.ndarray]]:
    """One epoch of padded batches, from batch number `start` on.

    Keys: input_ids, token_type_ids, attention_mask int32 (B, L); weights
    float32 (B,); index int32 (B,); labels ((B,) int32 / float32, or (B, L)
    int32 for tagging) when the features have labels; start_positions and
    end_positions int32 (B,) for labelled span features.
    """
    plan = batch_plan(features, batch_size, buckets=buckets, shuffle=shuffle, seed=seed, epoch=epoch)
    for length, rows in plan[start:]:
        yield collate(features, rows, length)


def collate(features: Features, rows: np.ndarray, length: int) -> dict[str, np.ndarray]:
    """The batch of features `rows` (-1 = padding row) padded to `length` tokens."""
    size = len(rows)
    real = rows >= 0
    safe = np.where(real, rows, 0)
    ids = np.zeros((size, length), dtype=np.int32)
    types = np.zeros((size, length), dtype=np.int32)
    mask = np.zeros((size, length), dtype=np.int32)
    tags = np.full((size, length), IGNORE, dtype=np.int32) if features.kind == "tagging" else None
    for r in np.flatnonzero(real):
        i = rows[r]
        n = features.lengths[i]
        ids[r, :n] = features.input_ids[i]
        types[r, :n] = features.token_type_ids[i]
        mask[r, :n] = 1
        if tags is not None and features.labels is not None:
            tags[r, :n] = features.labels[i]
    batch = {
        "input_ids": ids,
        "token_type_ids": types,
        "attention_mask": mask,
        "weights": real.astype(np.float32),
        "index": rows.astype(np.int32),
    }
    if features.labels is not None:
        if tags is not None:
            batch["labels"] = tags
        else:
            labels = np.asarray(features.labels)
            batch["labels"] = np.where(real, labels[safe], 0).astype(labels.dtype)
    for key in ("start_positions", "end_positions"):
        value = getattr(features, key)
        if value is not None:
            batch[key] = np.where(real, value[safe], 0).astype(np.int32)
    return batch
