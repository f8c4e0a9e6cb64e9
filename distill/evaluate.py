"""Evaluate a model (a fine-tuned teacher or an exported student) on a task split."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from distill.teacher import load_bert
from distill.train import predict
from tasks import metrics
from tasks.batching import batches
from tasks.errors import UserError
from tasks.features import encode
from tasks.readers import read_split
from tasks.registry import get_task


def evaluate_model(model, params, task, features, examples, batch_size: int = 128) -> dict[str, float]:
    """The task's metrics of a model on encoded features, plus examples/s."""
    t0 = time.perf_counter()
    outputs = predict(model, params, batches(features, batch_size), len(features), features.max_length)
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
    loaded = load_bert(model_dir)
    recorded = loaded.meta.get("task")
    task = get_task(task_name or recorded or _no_task(model_dir))
    if loaded.head != task.kind or loaded.num_labels != task.num_labels:
        raise UserError(
            f"{model_dir}: the model has a {loaded.head} head with {loaded.num_labels} outputs, "
            f"but task {task.name} needs {task.kind} with {task.num_labels}"
        )
    examples = read_split(task, split, data_dir, limit=limit)
    features = encode(task, examples, loaded.tokenizer)
    result = evaluate_model(loaded.model, loaded.params, task, features, examples, batch_size)
    return {"task": task.name, "split": split, **result}


def _no_task(model_dir) -> str:
    raise UserError(f"{model_dir}: config.json records no task; pass --task")
