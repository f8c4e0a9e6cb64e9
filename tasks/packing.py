"""Packed batches: several examples laid end to end in each row, for sentence-level tasks.

Real sentences are short and their lengths vary (SST-2 train: 13.3 tokens on average, 66 at most), so
length buckets still compute on padding (1.25 tokens per real token with `tasks.batching`'s fitted
buckets). A packed batch has one shape for the whole feature set (`PackShape`: R rows of L tokens, room
for E examples), so a jitted step compiles once, and its rows are filled from a window of the shuffled
examples by first fit (1.01 tokens per real token on SST-2). The model keeps the examples apart: it
attends within an example only, restarts positions at each example's first token and pools each
example's own [CLS] (`distill.model.bert.BertForTask`).

A training batch holds as many examples as fit, not a fixed count: the shape is sized so that
`batch_size` examples fit on average (at most E = 2 x `batch_size`), and an epoch has as many batches as
its packing makes (`epoch_sizes`), which depends only on (seed, epoch). Inference batches take the
features in a fixed order.

Keys of a packed batch:
  input_ids, token_type_ids  int32 (R, L)
  attention_mask             int32 (R, L): the example's number within its row (1, 2, ...), 0 on padding
  position_ids               int32 (R, L): 0, 1, ... from each example's first token
  cls_index                  int32 (E,): r * L + t of each example's first token, 0 for padding examples
  weights, index, labels     (E,) as in `tasks.batching.collate` (index -1 and weight 0: padding examples)

Only sentence-level kinds pack (`PACKED_KINDS`): taggers, span models and a CRF's chain read every
token of one example in one row.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import math
from typing import Iterator

import numpy as np

from tasks.batching import MULTIPLE, buckets_for
from tasks.errors import UserError
from tasks.features import Features

PACKED_KINDS = ("classification", "regression")
"""The task kinds whose features pack: one output per example, from its first token."""
WINDOW = 128
"""Examples the packer looks ahead to fill a batch's rows (first fit over them, in order); at least twice a
batch's room for examples."""
FILL = 0.97
"""The share of a batch's tokens that packing fills on short sentences: the first guess of the row count."""
SAMPLE = 4096
"""Features packed to measure how many a row count holds (`pack_shape`)."""
ATTENTION_COST = 0.003
"""The cost of a token grows by this share per token of its row (attention over the row): fitted to the
measured speeds of bucketed and packed SST-2 and STS-B training on a 2-core CPU (docs/benchmarks.md)."""
PACKINGS = ("off", "on", "auto")
"""The packing settings of a training loop (`distill.train.loop.LoopConfig.packing`, `--packing`)."""
PAYS = 0.95
"""`packing_pays`: packing is chosen where its estimated compute is below this share of the buckets'."""


@dataclasses.dataclass(frozen=True)
class PackShape:
    """R rows of L tokens with room for E examples: every packed batch of a feature set has this shape."""

    rows: int
    length: int
    examples: int

    def __post_init__(self):
        if min(self.rows, self.length, self.examples) < 1:
            raise ValueError(f"PackShape: rows, length and examples must be >= 1, got {self}")


def packable(features: Features) -> bool:
    return features.kind in PACKED_KINDS and len(features) > 0


def packs_on(backend: str, devices: int) -> bool:
    """Whether inference (evaluation, labelling) packs on this JAX backend and local device count: on one
    CPU device. A mesh splits rows and examples apart, and GPUs keep bucketed rows for cuDNN's attention."""
    return backend == "cpu" and devices == 1


def pack_shape(features: Features, batch_size: int) -> PackShape | None:
    """The shape of `features`' packed batches of `batch_size` examples on average: rows as long as the
    longest feature (rounded up to a multiple of 8; longer rows would only add attention cost), as many as
    hold `batch_size` features on average when packed (measured by packing up to `SAMPLE` of them: lengths
    close to the longest leave gaps that the mean length does not show), room for 2 x `batch_size`; where
    whole rows would miss `batch_size` by more than 15%, enough rows for exactly `batch_size`. None
    where one row holds more than `batch_size` features: so small a batch pads less in length buckets."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if not packable(features):
        raise ValueError(f"features of kind {features.kind!r} do not pack; only {PACKED_KINDS}")
    digest = _digest(features)
    key = (digest, features.max_length, batch_size)
    if key not in _SHAPES:
        _SHAPES[key] = _fitted_shape(features.lengths.astype(np.int64), features.max_length, batch_size)
    return _SHAPES[key]


def packing_setting(value) -> str:
    """A loop's packing setting as one of `PACKINGS`: True and False (configs saved before 'auto') read as
    'on' and 'off'; anything else is a UserError naming the field."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if value not in PACKINGS:
        raise UserError(f"packing: {value!r} is not one of {list(PACKINGS)}")
    return value


def packing_cost(features: Features, shape: PackShape, batch_size: int) -> float:
    """Estimated compute of `features` in packed batches of `shape` over that in length buckets
    (`tasks.batching.buckets_for`): each token costs 1 + `ATTENTION_COST` x its row's length, a packed batch
    holds `batch_size` examples on average, a bucketed feature pads to its bucket. Below 1: packing saves."""
    lengths = features.lengths.astype(np.int64)
    buckets = np.asarray(buckets_for(features), np.int64)
    padded = buckets[np.searchsorted(buckets, lengths)]
    bucketed = float(np.mean(padded * (1 + ATTENTION_COST * padded)))
    packed = shape.rows * shape.length * (1 + ATTENTION_COST * shape.length) / batch_size
    return packed / bucketed


def packing_pays(features: Features, batch_size: int) -> bool:
    """Whether packed batches of `batch_size` examples on average are worth it for `features`: they pack
    (`pack_shape`) and save at least 1 - `PAYS` of the bucketed compute (`packing_cost`). At batch 32,
    SST-2 (rows of 72 for 13-token sentences) packs at 0.92 of the bucketed cost; STS-B (rows of 128 for
    28-token pairs) would cost 1.08 and keeps buckets, as would SST-2 at batch 8 (1.23)."""
    shape = pack_shape(features, batch_size) if packable(features) else None
    return shape is not None and packing_cost(features, shape, batch_size) < PAYS


def _digest(features: Features) -> str:
    """The key of a feature set's lengths, which alone decide its shape, plans and epoch sizes."""
    return hashlib.sha1(np.ascontiguousarray(features.lengths, np.int64).tobytes()).hexdigest()


def _fitted_shape(lengths: np.ndarray, max_length: int, batch_size: int) -> PackShape | None:
    length = -(-int(lengths.max()) // MULTIPLE) * MULTIPLE
    guess = PackShape(max(1, round(batch_size * float(lengths.mean()) / (length * FILL))), length, 2 * batch_size)
    sample = np.random.default_rng(0).permutation(len(lengths))[:SAMPLE]
    made = list(_first_fit(list(range(len(sample))), lengths[sample].tolist(), guess))
    if len(made) < 2:  # one batch: no measure of the rows
        return guess
    per_batch = (len(sample) - int((made[-1][:, 0] >= 0).sum())) / (len(made) - 1)  # the last one is a rest
    per_row = per_batch / guess.rows
    if per_row > batch_size:
        return None
    shape = PackShape(max(1, round(batch_size / per_row)), length, 2 * batch_size)
    if abs(shape.rows * per_row / batch_size - 1) > 0.15:  # whole rows are too coarse: exactly batch_size each
        shape = PackShape(math.ceil(batch_size / per_row), length, batch_size)
    return shape


def packed_plan(features: Features, shape: PackShape, *, shuffle: bool = True, seed: int = 0,
                epoch: int = 0) -> tuple[np.ndarray, ...]:
    """Per batch an int32 array (E, 3): each example's feature index, row and first token (feature -1 for
    padding examples). With `shuffle` the examples come in an order drawn from (seed, epoch), else in
    feature order; every feature is in exactly one batch."""
    if len(features) and int(features.lengths.max()) > shape.length:
        longest = int(np.argmax(features.lengths))
        raise ValueError(f"feature {longest} has {features.lengths[longest]} tokens, more than the rows' {shape.length}")
    digest = _digest(features)
    return _plan(digest, features.lengths.astype(np.int64).tolist(), shape, shuffle, seed, epoch)


_SHAPES: dict = {}
"""`pack_shape`'s answers by (lengths digest, max_length, batch size): the loop asks more than once."""
_PLANS: dict = {}
"""Plans by (lengths digest, shape, shuffle, seed, epoch), the last 16: the loop asks for an epoch's batches."""
_SIZES: dict = {}
"""Epoch sizes by (lengths digest, shape, seed, epoch): the loop asks for them more than once."""


def _plan(digest: str, lengths: list[int], shape: PackShape, shuffle: bool, seed: int, epoch: int):
    key = (digest, shape, shuffle, seed, epoch)
    if key not in _PLANS:
        if len(_PLANS) >= 16:  # a few feature sets x epochs: drop the oldest
            _PLANS.pop(next(iter(_PLANS)))
        order = np.random.default_rng((seed, epoch)).permutation(len(lengths)) if shuffle else np.arange(len(lengths))
        _PLANS[key] = tuple(_first_fit(order.tolist(), lengths, shape))
    return _PLANS[key]


def _first_fit(order: list[int], lengths: list[int], shape: PackShape) -> Iterator[np.ndarray]:
    """Batches of `order`'s features: each batch's rows filled by first fit over the next waiting features
    (`WINDOW`, or twice the batch's room for examples), in order; a feature that fits nowhere waits for the
    next batch (it always fits an empty one)."""
    stream, waiting = iter(order), []
    window, shortest = max(WINDOW, 2 * shape.examples), min(lengths, default=1)
    while True:
        waiting.extend(itertools.islice(stream, window - len(waiting)))
        if not waiting:
            return
        fill, placed, room = [0] * shape.rows, [], shape.rows * shape.length
        for i in waiting:
            if len(placed) == shape.examples or room < shortest:  # full: the rest waits, in order
                break
            n = lengths[i]
            row = next((r for r in range(shape.rows) if fill[r] + n <= shape.length), -1)
            if row >= 0:
                placed.append((i, row, fill[row]))
                fill[row] += n
                room -= n
        taken = {i for i, _, _ in placed}
        waiting = [i for i in waiting if i not in taken]
        batch = np.full((shape.examples, 3), -1, np.int32)
        batch[: len(placed)] = placed
        yield batch


def epoch_size(features: Features, shape: PackShape, seed: int, epoch: int) -> int:
    """The number of packed training batches of epoch `epoch` (remembered: the loop asks more than once)."""
    digest = _digest(features)
    key = (digest, shape, seed, epoch)
    if key not in _SIZES:
        _SIZES[key] = len(packed_plan(features, shape, seed=seed, epoch=epoch))
    return _SIZES[key]


def packed_batches(features: Features, shape: PackShape, *, shuffle: bool = False, seed: int = 0, epoch: int = 0,
                   start: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """One epoch of packed batches (keys: see the module's docstring), from batch number `start` on."""
    for plan in packed_plan(features, shape, shuffle=shuffle, seed=seed, epoch=epoch)[start:]:
        yield collate_packed(features, plan, shape)


def collate_packed(features: Features, plan: np.ndarray, shape: PackShape) -> dict[str, np.ndarray]:
    """The packed batch of `plan` (`packed_plan`'s (E, 3) rows: feature, row, first token)."""
    rows, length = shape.rows, shape.length
    ids = np.zeros((rows, length), np.int32)
    types = np.zeros((rows, length), np.int32)
    segments = np.zeros((rows, length), np.int32)
    positions = np.zeros((rows, length), np.int32)
    count = np.zeros(rows, np.int32)
    feature, row, first = plan[:, 0], plan[:, 1], plan[:, 2]
    real = feature >= 0
    for i, r, t in plan[real]:
        n = features.lengths[i]
        count[r] += 1
        ids[r, t : t + n] = features.input_ids[i]
        types[r, t : t + n] = features.token_type_ids[i]
        segments[r, t : t + n] = count[r]
        positions[r, t : t + n] = np.arange(n)
    safe = np.where(real, feature, 0)
    batch = {
        "input_ids": ids,
        "token_type_ids": types,
        "attention_mask": segments,
        "position_ids": positions,
        "cls_index": np.where(real, row * length + first, 0).astype(np.int32),
        "weights": real.astype(np.float32),
        "index": feature.astype(np.int32),
    }
    if features.labels is not None:
        labels = np.asarray(features.labels)
        batch["labels"] = np.where(real, labels[safe], 0).astype(labels.dtype)
    return batch


def is_packed(batch: dict) -> bool:
    """Whether `batch` is a packed batch (`collate_packed`) rather than a padded one (`tasks.batching`)."""
    return "cls_index" in batch
