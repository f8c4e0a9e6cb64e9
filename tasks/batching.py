"""Fixed-shape batches from ragged features, bucketed by length.

The buckets of a feature set (`buckets_for`) are fitted to its lengths: at
most `MAX_BUCKETS` lengths, multiples of 8, chosen to pad as few tokens as
possible (SST-2 train with the minilm tokenizer: 1.26 computed tokens per
real token, against 1.62 with the fixed lengths of `default_buckets`), so a
jitted step still compiles at most `MAX_BUCKETS` times per feature set.
Each feature goes to the smallest bucket length >= its token count, training
batches never mix buckets, and every training batch has exactly `batch_size`
rows (the last batch of a bucket is filled with dummy rows of weight 0 and
index -1), so a jitted step compiles once per bucket. With `shuffle`, the
order inside each bucket and the order of the batches depend only on (seed,
epoch): batch i of epoch e is the same batch in a resumed run (`start=i`).
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

from tasks.features import IGNORE, Features

_FRACTIONS_OF_8 = (1, 2, 3, 4, 6, 8)
MAX_BUCKETS = 8
"""At most this many bucket lengths per feature set: a step compiles once per bucket."""
MULTIPLE = 8
"""Bucket lengths are multiples of this (or the feature set's maximum length)."""
INFERENCE_TOKENS = 2048
"""Tokens (rows x length) of an inference batch on one CPU device (`inference_tokens`). XLA:CPU's forward
slows down as a batch's activations outgrow the caches: the minilm teacher's bfloat16 forward on a 2-core
Xeon, rows of 32 tokens, ran at 23.8k tokens/s in batches of 2,048 tokens and 12.5k in batches of 16,384
(float32: 10.3k and 7.6k); rows of 128, 15.7k and 9.7k (docs/benchmarks.md)."""


def default_buckets(max_length: int) -> tuple[int, ...]:
    """About six lengths, multiples of 8 up to `max_length` (16..128 for 128)."""
    if max_length < 1:
        raise ValueError(f"max_length must be positive, got {max_length}")
    lengths = {min(max_length, -(-max_length * k // 64) * 8) for k in _FRACTIONS_OF_8}
    return tuple(sorted(lengths | {max_length}))


def fit_buckets(
    lengths: np.ndarray, max_length: int, k: int = MAX_BUCKETS, multiple: int = MULTIPLE
) -> tuple[int, ...]:
    """At most `k` bucket lengths, each a multiple of `multiple` (or `max_length`), the largest covering the
    longest of `lengths`, that minimise the padding tokens of `lengths` (an exact dynamic programme over
    the candidate lengths). Empty `lengths`: `default_buckets(max_length)`."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if not len(lengths):
        return default_buckets(max_length)
    if k < 1 or multiple < 1:
        raise ValueError(f"fit_buckets: need k >= 1 and multiple >= 1, got {k}, {multiple}")
    longest = int(lengths.max())
    cands = sorted({c for c in range(multiple, max_length + 1, multiple) if c < longest} | {
        min(max_length, -(-longest // multiple) * multiple)})
    count = np.array([np.sum(lengths <= c) for c in cands])  # features fitting candidate i
    # cost[j][i]: padded tokens of the features in (cands[j-1], cands[i]] when cands[i] is their bucket
    best = {(i, 1): (count[i] * cands[i], None) for i in range(len(cands))}
    for m in range(2, k + 1):
        for i in range(len(cands)):
            options = [
                (best[(j, m - 1)][0] + (count[i] - count[j]) * cands[i], j)
                for j in range(i) if (j, m - 1) in best
            ]
            if options:
                best[(i, m)] = min(options)
    last = len(cands) - 1
    m = min((m for m in range(1, k + 1) if (last, m) in best), key=lambda m: (best[(last, m)][0], m))
    chosen, i = [], last
    while i is not None:
        chosen.append(cands[i])
        i, m = best[(i, m)][1], m - 1
    return tuple(sorted(chosen))


def buckets_for(features: Features) -> tuple[int, ...]:
    """The bucket lengths of a feature set: fitted to its lengths (`fit_buckets`), so the same features
    always get the same buckets."""
    return fit_buckets(features.lengths, features.max_length)


def inference_tokens(backend: str, devices: int) -> int | None:
    """The token cap of inference batches (`batch_plan`'s `tokens`) on this JAX backend and local device
    count: `INFERENCE_TOKENS` on one CPU device; None (rows = the batch size) on accelerators, whose
    throughput grows with the batch, and where a batch's rows are split over several devices."""
    return INFERENCE_TOKENS if backend == "cpu" and devices == 1 else None


def _check_buckets(features: Features, buckets: Sequence[int] | None) -> np.ndarray:
    b = np.asarray(buckets_for(features) if buckets is None else buckets)
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
    tokens: int | None = None,
) -> list[tuple[int, np.ndarray]]:
    """(bucket length, feature indices (rows,), -1 for padding) per batch.

    With `shuffle` (training): batches never mix buckets, their order and contents depend only on
    (seed, epoch), and each bucket's last batch is filled up with padding rows. Without (inference):
    the features in length order, cut into consecutive batches, each padded to the bucket of its
    longest feature. Rows: `batch_size`, or with `tokens` (inference only) `batch_size` capped at
    `tokens // length` (at least 1) for a batch of bucket `length`; a batch takes longer features while
    its rows allow, so padding rows are left only where the rows shrink (and in the last batch).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if tokens is not None and (shuffle or tokens < 1):
        raise ValueError(f"tokens: a positive cap of inference (unshuffled) batches, got {tokens} (shuffle={shuffle})")
    b = _check_buckets(features, buckets)
    if not shuffle:
        return _sorted_plan(features, batch_size, b, tokens)
    which = np.searchsorted(b, features.lengths, side="left")
    rng = np.random.default_rng((seed, epoch))
    plan = []
    for k, length in enumerate(b):
        members = rng.permutation(np.flatnonzero(which == k))
        for lo in range(0, len(members), batch_size):
            plan.append((int(length), _rows(members[lo : lo + batch_size], batch_size)))
    return [plan[i] for i in rng.permutation(len(plan))]


def _sorted_plan(features: Features, batch_size: int, b: np.ndarray,
                 tokens: int | None) -> list[tuple[int, np.ndarray]]:
    order = np.argsort(features.lengths, kind="stable")
    which = np.searchsorted(b, features.lengths[order], side="left")  # each sorted feature's bucket
    ends = np.searchsorted(which, np.arange(len(b)), side="right")  # where each bucket's features end
    room = [batch_size if tokens is None else min(batch_size, max(1, tokens // int(n))) for n in b]
    plan, lo = [], 0
    while lo < len(order):
        k = which[lo]
        hi = min(lo + room[k], ends[k])
        while hi - lo < room[k] and hi < len(order) and hi - lo < room[which[hi]]:  # longer ones still fit
            k = which[hi]
            hi = min(lo + room[k], ends[k])
        plan.append((int(b[k]), _rows(order[lo:hi], room[k])))
        lo = hi
    return plan


def _rows(chunk: np.ndarray, batch_size: int) -> np.ndarray:
    rows = np.full(batch_size, -1, dtype=np.int64)
    rows[: len(chunk)] = chunk
    return rows


def num_batches(features: Features, batch_size: int, buckets: Sequence[int] | None = None, *,
                shuffle: bool = True, tokens: int | None = None) -> int:
    """How many batches one epoch of `batches` yields (`shuffle` and `tokens` as given to it; `tokens`
    implies unshuffled inference batches)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if tokens is not None:  # inference batches: unshuffled
        return len(batch_plan(features, batch_size, buckets=buckets, tokens=tokens))
    b = _check_buckets(features, buckets)
    if not shuffle:
        return -(-len(features) // batch_size)
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
    tokens: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """One epoch of padded batches, from batch number `start` on (`tokens`: see `batch_plan`).

    Keys: input_ids, token_type_ids, attention_mask int32 (B, L); weights
    float32 (B,); index int32 (B,); labels ((B,) int32 / float32, or (B, L)
    int32 for tagging) when the features have labels; start_positions and
    end_positions int32 (B,) for labelled span features.
    """
    plan = batch_plan(features, batch_size, buckets=buckets, shuffle=shuffle, seed=seed, epoch=epoch, tokens=tokens)
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
