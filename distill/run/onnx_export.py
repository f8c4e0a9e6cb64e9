"""ONNX copies of a run's export, evaluated next to it: `bertnas distill --export-onnx`.

The ONNX format itself (conversion, int8 variant, loading) is `distill.export.onnx`.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from distill.export.onnx import onnx_export
from distill.files import write_json
from distill.run.data import read_data
from distill.run.evaluation import evaluate_model, load_for_task
from tasks.datafiles import resolve_data_dir
from tasks.errors import UserError
from tasks.features import encode

log = logging.getLogger(__name__)


def export_onnx_run(cfg, output_dir: str | os.PathLike, quantize: str | None = None) -> dict[str, Any]:
    """After `distill(cfg, output_dir)`: OUTPUT/export as ONNX in OUTPUT/export-onnx and, with `quantize`
    ('int8'), ONNX Runtime's int8 variant in OUTPUT/export-onnx-<quantize>; each evaluated with onnxruntime on
    the run's evaluation split (dev, or its validation slice) next to the Flax export, the drop of the task's
    metric (Flax - ONNX) recorded. Written under `onnx` in OUTPUT/results.json; returned."""
    out = Path(output_dir)
    export = out / "export"
    if not (export / "config.json").is_file():
        raise UserError(f"{export}: no export to convert to ONNX (the run saved no best model)")
    flax, task = load_for_task(export)
    _, examples, split = read_data(cfg, task, resolve_data_dir(task, cfg.data_dir))
    features = encode(task, examples, flax.tokenizer)
    reference = evaluate_model(flax.model, flax.params, task, features, examples, cfg.eval_batch_size)
    result: dict[str, Any] = {"split": split, "metric": task.metric, "flax": reference}
    for variant in (None, quantize) if quantize else (None,):
        name = "export-onnx" + (f"-{variant}" if variant else "")
        summary = onnx_export(export, out / name, quantize=variant, overwrite=True)  # inside the run: ours
        served, _ = load_for_task(out / name, task.name)
        metrics = evaluate_model(served.model, served.params, task, features, examples, cfg.eval_batch_size)
        result[name] = {**summary, "metrics": metrics, "drop": reference[task.metric] - metrics[task.metric]}
        log.info("%s: %s %s %.4f with onnxruntime (Flax %.4f)", out / name, split, task.metric,
                 metrics[task.metric], reference[task.metric])
    results_file = out / "results.json"
    if results_file.is_file():
        write_json(results_file, {**json.loads(results_file.read_text()), "onnx": result})
    return result
