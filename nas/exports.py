"""What a search adds to its exported front (OUTPUT/export, written by `nas.tune`): ONNX copies of its float
students (`--export-onnx`), a README.md for the folder as a whole, and the upload of the folder to the
Hugging Face Hub (`--push-to-hub`).

`onnx_copies(front, ...)` converts each exported float student of the front (`distill.export.onnx`; with
`--quantize int8` also ONNX Runtime's int8 variant) into OUTPUT/export/<rank>-<arch>-onnx[-int8], scores it
on dev with onnxruntime and records it in the member's row (`onnx`). A member whose conversion fails keeps
the error in its row; the others and the report go on. `front_readme(root, front, ...)` writes
OUTPUT/export/README.md: the front as a table and how to load a member; `--push-to-hub` then uploads the
folder, every member with its model card, in one commit (`distill.export.card.push_to_hub`).

May import `distill.export`, `distill.run` (public API) and `tasks`, as the rest of `nas`.
"""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path

from distill.export.onnx import onnx_export
from distill.run import DistillConfig, evaluate_dir

log = logging.getLogger(__name__)

README = "README.md"


def onnx_copies(front: list[dict], task, base: DistillConfig, dev_limit: int | None,
                quantize: str | None = None) -> None:
    """Each exported float member of `front` also as ONNX (and with `quantize` ONNX Runtime's int8 variant)
    beside its export, scored on dev with onnxruntime: `row["onnx"] = {"float32" | quantize: {"export",
    "dev_metric", "max_abs_diff", "onnx_bytes"} or {"error"}}`."""
    for r in front:
        if not r.get("export") or r.get("quantized"):
            continue  # no export, or a qwix int8 copy: ONNX converts float students
        r["onnx"] = {}
        for variant in (None, quantize) if quantize else (None,):
            dest = Path(f"{r['export']}-onnx" + (f"-{variant}" if variant else ""))
            try:
                summary = onnx_export(r["export"], dest, quantize=variant)
                metrics = evaluate_dir(dest, task.name, data_dir=base.data_dir, limit=dev_limit, spec=base.data)
                r["onnx"][variant or "float32"] = {
                    "export": str(dest), "dev_metric": metrics[task.metric],
                    "max_abs_diff": summary.get("max_abs_diff"), "onnx_bytes": summary.get("onnx_bytes"),
                }
            except Exception as e:  # noqa: BLE001 - one member must not cost the search its report
                log.error("ONNX export of %s failed: %s: %s", r["export"], type(e).__name__, e)
                r["onnx"][variant or "float32"] = {"error": f"{type(e).__name__}: {e}"}
                shutil.rmtree(dest, ignore_errors=True)


def front_readme(root: Path, front: list[dict], teacher: dict, task: str, metric: str,
                 command: str | None = None) -> Path:
    """OUTPUT/export/README.md: the exported front (each member's folder, kind, speedup, latency, scores) and
    how to load a member; the members' own cards (README.md in each folder) say the rest."""
    def num(x, fmt):
        return format(x, fmt) if isinstance(x, (int, float)) and math.isfinite(x) else "-"

    lines = [
        "---", "library_name: bertnas", "tags:", "- bertnas", "- distillation", "- bert", "---", "",
        "# The Pareto front of a bertnas search", "",
        f"Task `{task}`; the teacher scores {num(teacher.get('dev_metric'), '.4f')} dev "
        f"{metric} at {num(teacher.get('latency_ms'), '.2f')} ms (batch 1).", "",
        f"| folder | kind | params | ms (batch 1) | speedup | val {metric} | dev {metric} |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in front:
        if not r.get("export"):
            continue
        kind = r.get("quantized") or ("trained" if r.get("status") == "final" else r.get("kind") or r["status"])
        params = r.get("params")
        lines.append(f"| `{Path(r['export']).name}` | {kind} | {num(params and params / 1e6, '.2f')}M | "
                     f"{num(r.get('latency_ms'), '.2f')} | {num(r.get('speedup'), '.2f')}x | "
                     f"{num(r.get('val_metric'), '.4f')} | {num(r.get('dev_metric'), '.4f')} |")
    lines += [
        "", "Each folder is a model of its own (`bertnas predict --model FOLDER`, transformers' "
        "`from_pretrained(REPO, subfolder=FOLDER)` for float students with one group per layer, onnxruntime for "
        "`-onnx` folders); its README.md is its model card.",
    ]
    if command:
        lines += ["", "Made by:", "", "```bash", command, "```"]
    path = root / README
    path.write_text("\n".join(lines) + "\n")
    return path
