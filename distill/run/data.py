"""Data stages of a distillation: which examples train and which evaluate, encoded with augmented copies.

Search (`nas`) runs these stages itself before its trials, so that every
trial reads the same held-out slice and the same cached teacher outputs.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np

from distill.kd.augment import augment
from distill.kd.importance import Scores, cached_importance
from distill.kd.outputs import OutputCache, cached_teacher_outputs
from distill.model.bert import in_precision
from distill.model.store import LoadedBert, weights_fingerprint
from distill.run.config import DistillConfig
from distill.train.multihost import rank_zero_values
from tasks.base import Task
from tasks.errors import UserError
from tasks.features import Features, encode
from tasks.holdout import split_off
from tasks.readers import read_split

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Stage:
    """Wall time of the run's stages, in seconds."""

    teacher: float = 0.0
    encode: float = 0.0
    augment: float = 0.0
    labelling: float = 0.0
    init: float = 0.0
    distill: float = 0.0


def read_data(cfg: DistillConfig, task: Task, data_dir) -> tuple[list, list, str]:
    """(training examples, evaluation examples, evaluation split name): dev, or a validation slice of train."""
    train_ex = read_split(task, "train", data_dir, limit=cfg.train_limit)
    if not cfg.validation:
        return train_ex, read_split(task, "dev", data_dir, limit=cfg.dev_limit), "dev"
    if cfg.validation >= len(train_ex):
        raise UserError(f"validation: cannot hold out {cfg.validation} of the {len(train_ex)} training examples")
    rest, held = split_off(train_ex, cfg.validation)
    if not rest:
        raise UserError(f"validation: holding out {cfg.validation} whole examples leaves no training example (their "
                        "repeats and the examples inside them leave training too); hold out fewer")
    return rest, held, "validation"


def training_features(cfg: DistillConfig, task: Task, teacher: LoadedBert, train_ex, times: Stage):
    """Encoded training features (originals, then augmented copies) and the originals' flags."""
    t0 = time.perf_counter()
    extra = []
    if cfg.augment.copies:
        embeddings = np.asarray(teacher.params["embeddings"]["word_embeddings"]["embedding"])
        extra = augment(task, train_ex, teacher.tokenizer, embeddings, cfg.augment)
        times.augment = time.perf_counter() - t0
    t0 = time.perf_counter()
    train = encode(task, list(train_ex) + list(extra), teacher.tokenizer)
    times.encode = time.perf_counter() - t0
    original = (train.example_index < len(train_ex)).astype(np.float32)
    log.info("%d train features (%d augmented examples)", len(train), len(extra))
    return train, original, len(extra)


def teacher_importance(cfg: DistillConfig, task: Task, teacher: LoadedBert, train: Features) -> Scores:
    """The teacher's importance scores on the run's training features (cached; see `cached_importance`);
    across processes, process 0's in every one."""
    scores = cached_importance(teacher, train, task.name, task.kind, seed=cfg.loop.seed,
                               num_batches=cfg.init.importance_batches)
    return rank_zero_values(scores)


def label_prefixes(train: Features, original: np.ndarray | None, copies: int) -> tuple[int, ...]:
    """The feature counts that runs with fewer augmented copies labelled on their own: the originals, and
    the originals with their first k copies for each k < `copies` (copies come copy by copy, `augment`, so
    each such run's features are a prefix of these). Empty without copies."""
    if not copies or original is None or original.all() or not original.any():
        return ()
    examples = int(train.example_index[original > 0].max()) + 1
    return tuple(int(np.searchsorted(train.example_index, examples * (1 + k))) for k in range(copies))


def teacher_labels(cfg: DistillConfig, task: Task, teacher: LoadedBert, train: Features, *,
                   hidden_layers: tuple[int, ...] = (), original: np.ndarray | None = None,
                   use_cache: bool = True, params=None) -> OutputCache:
    """The teacher's outputs (logits, and the hidden states of `hidden_layers`) on every training feature,
    through the on-disk cache (`distill.kd.outputs`): features the cache holds are not run again, and with
    `original` (the originals' flags, `training_features`) the first features, as many as a run with fewer
    of `cfg.augment.copies` labelled (`label_prefixes`), may come from that run's entry. `params`: the
    teacher's, already on the device. With `--precision bf16` the teacher labels in bfloat16 compute too (cached apart
    from float32 labels)."""
    precision = cfg.loop.precision
    key = weights_fingerprint(teacher.path) + ("" if precision == "fp32" else f"-{precision}")  # own entries
    return cached_teacher_outputs(
        in_precision(teacher.model, precision), teacher.params if params is None else params, train,
        teacher_key=key, task=task.name, hidden_layers=hidden_layers,
        batch_size=cfg.eval_batch_size, use_cache=use_cache,
        prefixes=label_prefixes(train, original, cfg.augment.copies),
    )
