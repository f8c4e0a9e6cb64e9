"""int8 against float32 after a run: quantize a run's export and compare both models on its data.

The int8 format itself (quantization, export, loading) is `distill.export.int8`.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from distill.export.int8 import quantize_export
from distill.export.scheme import scheme
from distill.files import write_json
from distill.model.store import LoadedBert
from distill.run.data import read_data
from distill.run.evaluation import evaluate_model, load_for_task, predict_features
from tasks.datafiles import resolve_data_dir
from tasks.errors import UserError
from tasks.features import encode
from tasks.readers import read_split
from tasks.userdata import DataSpec

log = logging.getLogger(__name__)


def compare(float_dir: str | os.PathLike, int8_dir: str | os.PathLike, task_name: str | None = None, *,
            data_dir: str | None = None, split: str = "dev", limit: int | None = None,
            batch_size: int = 128, spec: DataSpec | None = None) -> dict[str, Any]:
    """Both models on `split` of their task (the same encoded examples): their metrics, the drop of the
    task's metric (float32 - int8; > 0 when quantization costs accuracy) and how often their predictions
    agree (sentence-level heads)."""
    fp32, task = load_for_task(float_dir, task_name, spec)
    int8, _ = load_for_task(int8_dir, task.name, spec)
    examples = read_split(task, split, data_dir, limit=limit)
    features = encode(task, examples, fp32.tokenizer)
    return compare_models(fp32, int8, task, features, examples, batch_size) | {"split": split}


def compare_models(fp32: LoadedBert, int8: LoadedBert, task, features, examples, batch_size: int = 128) -> dict:
    """`compare` on encoded features."""
    a = evaluate_model(fp32.model, fp32.params, task, features, examples, batch_size)
    b = evaluate_model(int8.model, int8.params, task, features, examples, batch_size)
    m = task.metric
    result = {"task": task.name, "metric": m, "float32": a, "int8": b, "drop": a[m] - b[m]}
    if task.kind == "classification":
        la = predict_features(fp32.model, fp32.params, features, batch_size).argmax(-1)
        lb = predict_features(int8.model, int8.params, features, batch_size).argmax(-1)
        result["agreement"] = float(np.mean(la == lb))
    return result


def quantize_run(cfg, output_dir: str | os.PathLike, name: str = "int8") -> dict[str, Any]:
    """`scripts/distill_student.py --quantize NAME`: after `distill(cfg, output_dir)`, quantize OUTPUT/export to
    OUTPUT/export-<name>, evaluate both on the run's evaluation split (dev, or its validation slice) and
    record the comparison under `quantized` in OUTPUT/results.json; returns it."""
    out = Path(output_dir)
    export = out / "export"
    if not (export / "config.json").is_file():
        raise UserError(f"{export}: no export to quantize (the run saved no best model)")
    summary = quantize_export(export, out / f"export-{name}", scheme(name))
    fp32, task = load_for_task(export, spec=cfg.data)
    int8, _ = load_for_task(out / f"export-{name}", task.name, cfg.data)
    _, examples, split = read_data(cfg, task, None if task.reader == "user" else resolve_data_dir(task, cfg.data_dir))
    features = encode(task, examples, fp32.tokenizer)
    result = {"scheme": name, "split": split, **compare_models(fp32, int8, task, features, examples,
                                                                 cfg.eval_batch_size), "size": summary}
    log.info("%s: %s %s %.4f float32, %.4f %s (drop %+.4f); weights %.3f of float32", out, split, task.metric,
             result["float32"][task.metric], result["int8"][task.metric], name, result["drop"],
             summary["weight_ratio"] or float("nan"))
    results_file = out / "results.json"
    if results_file.is_file():
        write_json(results_file, {**json.loads(results_file.read_text()), "quantized": result})
    return result
