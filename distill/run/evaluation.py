"""Evaluate a model (a fine-tuned teacher, an exported student, its int8 or ONNX export) on a task split.

A tagger with a CRF is decoded with Viterbi under the task's IOB2
constraints (`task_outputs`), so it never predicts an I-X that does not
continue an X; other taggers take each word's argmax tag.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterator

import jax
import numpy as np

from distill.export.hf import is_onnx_dir, is_quantized_dir
from distill.export.load import load_export
from distill.export.onnx import OnnxModel
from distill.model import crf
from distill.model.infer import predict, token_cap
from distill.model.store import LoadedBert, load_bert
from tasks import metrics
from tasks.base import Task
from tasks.batching import batches
from tasks.decode import tagged_positions
from tasks.errors import UserError
from tasks.features import Features, encode
from tasks.packing import pack_shape, packed_batches, packing_pays, packs_on
from tasks.readers import read_split
from tasks.registry import saved_task
from tasks.userdata import DataSpec, with_data


def load_for_task(model_dir: str | Path, task_name: str | None = None,
                  spec: DataSpec | None = None) -> tuple[LoadedBert, Task]:
    """A saved model and its task (given, else the one its config.json records); the head must fit the task.
    An int8 export (`distill.export.int8`) loads as its quantized model, an ONNX export (`distill.export.onnx`)
    as an onnxruntime session."""
    exported = is_quantized_dir(model_dir) or is_onnx_dir(model_dir)
    loaded = load_export(model_dir) if exported else load_bert(model_dir)
    if not (task_name or loaded.meta.get("task")):
        raise UserError(f"{model_dir}: config.json records no task; pass --task")
    # The sequence length, and a generic task's labels and columns, are the model's unless `spec` sets them; a
    # generic task reads the files or dataset `spec` names.
    task = with_data(saved_task(loaded.meta, task_name, max_length=(spec or DataSpec()).max_seq_length),
                     spec or DataSpec())
    if loaded.head != task.kind or loaded.num_labels != task.num_labels:
        raise UserError(
            f"{model_dir}: the model has a {loaded.head} head with {loaded.num_labels} outputs, "
            f"but task {task.name} needs {task.kind} with {task.num_labels}"
        )
    saved = tuple(loaded.meta.get("labels") or ())
    if saved and task.labels and saved != tuple(task.labels):  # same count, other names or order
        raise UserError(
            f"{model_dir}: the model's labels {list(saved)} are not task {task.name}'s {list(task.labels)}; "
            "pass the task it was trained on"
        )
    return loaded, task


def predict_features(model, params, features, batch_size: int = 128):
    """Model outputs for encoded features, in feature order (see `distill.model.infer.predict`); an ONNX
    model's (`distill.export.onnx.OnnxModel`) from onnxruntime, in the same form. Our models read sentence
    tasks' features packed (`inference_batches`)."""
    if isinstance(model, OnnxModel):
        return model.predict(batches(features, batch_size), len(features), features.max_length)
    return predict(model, params, inference_batches(features, batch_size), len(features), features.max_length)


def inference_batches(features: Features, batch_size: int = 128) -> Iterator[dict]:
    """Inference batches of `features`: packed (`tasks.packing`, `batch_size` examples per batch on average)
    for sentence-level tasks on one CPU device where packing saves compute (`packing_pays`), else padded
    to length buckets, capped in tokens on one CPU device (`token_cap`)."""
    if packs_on(jax.default_backend(), jax.local_device_count()) and packing_pays(features, batch_size):
        return packed_batches(features, pack_shape(features, batch_size))
    return batches(features, batch_size, tokens=token_cap())


def task_outputs(model, params, task: Task, features: Features, batch_size: int = 128):
    """What `tasks.metrics.evaluate` and `predict_labels` read: the model's outputs (`predict_features`),
    or for a CRF tagger its constrained Viterbi tag ids (N, L)."""
    outputs = predict_features(model, params, features, batch_size)
    if getattr(model, "crf", False):
        outputs = viterbi_tags(params["crf"], outputs, features, task.labels)
    return outputs


def viterbi_tags(crf_params, logits: np.ndarray, features: Features, tags, chunk: int = 256) -> np.ndarray:
    """int32 (N, L): each feature's best IOB2 tag sequence over its words' first sub-tokens (0 elsewhere),
    decoded `chunk` features at a time (one compilation for every chunk)."""
    params = crf.CrfParams(**{k: np.asarray(v) for k, v in crf_params.items()})
    allowed, start = crf.iob2_constraints(tags)
    positions = tagged_positions(features, logits.shape[1])
    out = np.zeros(positions.shape, np.int32)
    for lo in range(0, len(out), chunk):
        em, pos = logits[lo : lo + chunk], positions[lo : lo + chunk]
        n = len(em)
        if n < chunk:  # pad with rows that have no position
            em = np.concatenate([em, np.zeros((chunk - n,) + em.shape[1:], em.dtype)])
            pos = np.concatenate([pos, np.zeros((chunk - n,) + pos.shape[1:], bool)])
        out[lo : lo + n] = np.asarray(crf.decode(params, em, pos, allowed, start))[:n]
    return out


def evaluate_model(model, params, task, features, examples, batch_size: int = 128) -> dict[str, float]:
    """The task's metrics of a model on encoded features, plus examples/s."""
    t0 = time.perf_counter()
    outputs = task_outputs(model, params, task, features, batch_size)
    seconds = time.perf_counter() - t0
    result = metrics.evaluate(task, features, examples, outputs)
    result["examples"] = len(examples)
    result["examples_per_second"] = len(examples) / max(seconds, 1e-9)
    return result


def evaluate_dir(
    model_dir: str | Path,
    task_name: str | None = None,
    *,
    data_dir: str | None = None,
    split: str = "dev",
    limit: int | None = None,
    batch_size: int = 128,
    spec: DataSpec | None = None,
) -> dict[str, Any]:
    """Load a saved model directory and evaluate it on `split` of its task (`spec`: see `load_for_task`)."""
    loaded, task, examples, features = _split_features(model_dir, task_name, data_dir, split, limit, spec)
    result = evaluate_model(loaded.model, loaded.params, task, features, examples, batch_size)
    return {"task": task.name, "split": split, **result}


def split_predictions(model_dir: str | Path, task_name: str | None = None, *, data_dir: str | None = None,
                      split: str = "dev", batch_size: int = 128, spec: DataSpec | None = None,
                      limit: int | None = None):
    """A saved model's predictions on `split` of its task, one per example, with the gold references and
    the task (`tasks.metrics.predictions`): what a paired comparison of two models reads."""
    loaded, task = load_for_task(model_dir, task_name, spec)
    preds, refs = _predictions(loaded, task, data_dir, split, limit, batch_size)
    return task, preds, refs


def paired_comparison(model_dir: str | Path, reference_dir: str | Path, task_name: str | None = None, *,
                      data_dir: str | None = None, split: str = "dev", limit: int | None = None,
                      batch_size: int = 128, spec: DataSpec | None = None, samples: int = 1000) -> dict[str, Any]:
    """`model_dir` against `reference_dir` (a student against its teacher, two students) on the same examples
    of `split` of the model's task: each one's metric, their difference (model - reference) with its 95%
    interval and two-sided p-value from a paired bootstrap over the examples (`tasks.metrics.paired_bootstrap`,
    `samples` resamplings), and the share of examples on which their predictions agree (None for scores).
    A reference whose labels are not the model's is refused before either model predicts."""
    model, task = load_for_task(model_dir, task_name, spec)
    reference, theirs = load_for_task(reference_dir, task.name, spec)
    if tuple(theirs.labels) != tuple(task.labels):
        raise UserError(f"--against {reference_dir}: its labels {list(theirs.labels)} are not the model's "
                        f"{list(task.labels)}; their predictions cannot be compared")
    a, refs = _predictions(model, task, data_dir, split, limit, batch_size)
    b, _ = _predictions(reference, theirs, data_dir, split, limit, batch_size)
    test = metrics.paired_bootstrap(metrics.get_metric(task.kind, task.metric), a, b, refs, samples=samples)
    agree = None if task.kind == "regression" else float(np.mean([bool(x == y) for x, y in zip(a, b)]))
    return {
        "task": task.name, "split": split, "metric": task.metric, "examples": len(refs),
        "model": test.metric_a, "reference": test.metric_b, "difference": test.difference,
        "low": test.low, "high": test.high, "level": test.level, "p_value": test.p_value, "samples": test.samples,
        "agreement": agree,
    }


def _predictions(loaded, task, data_dir, split: str, limit: int | None, batch_size: int):
    """(predictions, references) of a loaded model on `split`'s examples, one per example."""
    examples, features = _encoded(loaded, task, data_dir, split, limit)
    outputs = task_outputs(loaded.model, loaded.params, task, features, batch_size)
    return metrics.predictions(task, features, examples, outputs)


def _split_features(model_dir, task_name, data_dir, split, limit, spec):
    """A saved model, its task, and `split`'s examples encoded with its tokenizer."""
    loaded, task = load_for_task(model_dir, task_name, spec)
    return loaded, task, *_encoded(loaded, task, data_dir, split, limit)


def _encoded(loaded, task, data_dir, split: str, limit: int | None):
    """`split`'s examples and their features, encoded with the model's tokenizer."""
    examples = read_split(task, split, data_dir, limit=limit)
    return examples, encode(task, examples, loaded.tokenizer)
