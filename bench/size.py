"""Suite part `size`: bytes per parameter of an export (parameters only) against a training checkpoint.

A distillation run directory (`--run DIR`; with `--search DIR`, its final
run `final/run`, else the first trial run that has both) holds `export/`
(config.json, float32 model.safetensors, tokenizer) and `checkpoints/<step>/`
(Orbax: `params`, `opt_state` with AdamW's two moments, `meta`). Bytes are
file sizes (apparent, as `du -b`); parameters are the model's real count
(`BertArch.num_params`; a heterogeneous student is stored padded, so its
export holds more than 4 bytes per parameter). Checkpoint figures are for
the latest step, and for all kept steps together.
"""

from __future__ import annotations

import json
from pathlib import Path

from bench.common import Skip

WEIGHTS = "model.safetensors"


def dir_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def find_run(search: Path) -> Path | None:
    """The search's final run, else the first trial run with an export and checkpoints."""
    candidates = [search / "final" / "run", *sorted((search / "ray").glob("*/trial_*/run"))]
    return next((c for c in candidates if _complete(c)), None)


def _complete(run: Path) -> bool:
    return (run / "export" / WEIGHTS).is_file() and any(_steps(run / "checkpoints"))


def _steps(checkpoints: Path) -> list[int]:
    if not checkpoints.is_dir():
        return []
    return sorted(int(d.name) for d in checkpoints.iterdir() if d.is_dir() and d.name.isdigit())


def sizes(run: str | Path) -> dict:
    from distill.arch import BertArch
    from distill.export.hf import config_head

    run = Path(run)
    if not _complete(run):
        raise Skip(f"{run}: no export/{WEIGHTS} with checkpoints/<step>/ beside it")
    export = run / "export"
    cfg = json.loads((export / "config.json").read_text())
    arch = BertArch.from_hf_config(cfg)
    params = arch.num_params(*config_head(cfg))
    steps = _steps(run / "checkpoints")
    latest = run / "checkpoints" / str(steps[-1])
    items = {child.name: dir_bytes(child) for child in sorted(latest.iterdir())}
    ckpt = {
        "step": steps[-1],
        "kept_steps": steps,
        "bytes": sum(items.values()),
        "items": items,
        "all_steps_bytes": dir_bytes(run / "checkpoints"),
    }
    weight_bytes = (export / WEIGHTS).stat().st_size
    return {
        "run": str(run.resolve()),
        "arch": arch.name,
        "params": params,
        "export": {"weight_bytes": weight_bytes, "bytes": dir_bytes(export),
                   "bytes_per_param": weight_bytes / params},
        "checkpoint": ckpt,
        "checkpoint_bytes_per_param": ckpt["bytes"] / params,
        "checkpoint_params_bytes_per_param": items.get("params", 0) / params,
        "checkpoint_opt_state_bytes_per_param": items.get("opt_state", 0) / params,
        "checkpoint_over_export": ckpt["bytes"] / weight_bytes,
    }


def ratio_rows(s: dict) -> list[dict]:
    per = s["export"]["bytes_per_param"]
    c = s["checkpoint"]
    rows = [
        ("checkpoint step (params + opt_state)", s["checkpoint_bytes_per_param"]),
        ("checkpoint params item", s["checkpoint_params_bytes_per_param"]),
        ("checkpoint opt_state item", s["checkpoint_opt_state_bytes_per_param"]),
        (f"all {len(c['kept_steps'])} kept checkpoints", c["all_steps_bytes"] / s["params"]),
    ]
    note = f"{s['arch']}, {s['params'] / 1e6:.3g}M params"
    return [{"name": f"{name} vs export", "ours": per, "reference": value, "unit": "B/param",
             "ratio": value / per, "ratio_is": "checkpoint / export", "note": note} for name, value in rows]


def part(ctx) -> dict:
    run = Path(ctx.run) if ctx.run else (find_run(Path(ctx.search)) if ctx.search else None)
    if run is None:
        raise Skip("no --run DIR or --search DIR with a run that has an export and checkpoints")
    result = sizes(run)
    return {**result, "ratios": ratio_rows(result)}
