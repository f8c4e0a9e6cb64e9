"""Evaluate a model (a fine-tuned teacher or an exported student) on a task split."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from distill.teacher import LoadedBert, load_bert
from distill.train import predict
from tasks import metrics
from tasks.base import Task
from tasks.batching import batches
from tasks.errors import UserError
from tasks.features import encode
from tasks.readers import read_split
from tasks.registry import get_task


def load_for_task(model_dir: str | Path, task_name: str | None = None) -> tuple[LoadedBert, Task]:
    """A saved model and its task (given, else the one its config.json records); the head must fit the task."""
    loaded = load_bert(model_dir)
    name = task_name or loaded.meta.get("task")
    if not name:
        raise UserError(f"{model_dir}: config.json records no task; pass --task")
    task = get_task(name)
    if loaded.head != task.kind or loaded.num_labels != task.num_labels:
        raise UserError(
            f"{model_dir}: the model has a {loaded.head} head with {loaded.num_labels} outputs, "
            f"but task {task.name} needs {task.kind} with {task.num_labels}"
        )
    return loaded, task


def predict_features(model, params, features, batch_size: int = 128):
    """Model outputs for encoded features, in feature order (see `distill.train.predict`)."""
    return predict(model, params, batches(features, batch_size), len(features), features.max_length)


def evaluate_model(model, params, task, features, examples, batch_size: int = 128) -> dict[str, float]:
    """The task's metrics of a model on encoded features, plus examples/s."""
    t0 = time.perf_counter()
    outputs = predict_features(model, params, features, batch_size)
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
) -> dict[str, Any]:
    """Load a saved model directory and evaluate it on `split` of its task."""
    loaded, task = load_for_task(model_dir, task_name)
    examples = read_split(task, split, data_dir, limit=limit)
    features = encode(task, examples, loaded.tokenizer)
    result = evaluate_model(loaded.model, loaded.params, task, features, examples, batch_size)
    return {"task": task.name, "split": split, **result}
