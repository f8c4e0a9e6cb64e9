"""What every run writes to its output directory, and the on-disk cache root.

  config.json      the resolved run config
  metrics.jsonl    one JSON object per logged step / evaluation
  results.json     the final figures
  tb/              TensorBoard events
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any


def cache_root() -> Path:
    """`$BERTNAS_CACHE`, else `$XDG_CACHE_HOME/bertnas`, else `~/.cache/bertnas`."""
    if os.environ.get("BERTNAS_CACHE"):
        return Path(os.environ["BERTNAS_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "bertnas"


def file_fingerprint(*paths: os.PathLike) -> str:
    """Content hash of files (names excluded, so a moved data set still hits the cache)."""
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()[:16]


def config_key(obj: Any) -> str:
    return hashlib.sha256(json.dumps(to_jsonable(obj), sort_keys=True).encode()).hexdigest()[:16]


def to_jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item):  # numpy / jax scalars
        return obj.item()
    return obj


def write_json(path: os.PathLike, obj: Any) -> None:
    """Write JSON atomically (temporary file, then rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(to_jsonable(obj), indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


class RunLog:
    """Metrics to `metrics.jsonl` and TensorBoard, flushed as they come."""

    def __init__(self, out_dir: os.PathLike, config: Any, *, tensorboard: bool = True):
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        write_json(self.dir / "config.json", config)
        self._file = open(self.dir / "metrics.jsonl", "a", buffering=1)
        self._tb = None
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(self.dir / "tb"))
        self._t0 = time.time()

    def log(self, step: int, metrics: dict[str, Any], prefix: str = "") -> None:
        record = {"step": int(step), "time": round(time.time() - self._t0, 3)}
        record.update({f"{prefix}{k}": to_jsonable(v) for k, v in metrics.items()})
        self._file.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for k, v in record.items():
                if k not in ("step", "time") and isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, step)

    def results(self, results: dict[str, Any]) -> None:
        write_json(self.dir / "results.json", results)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def enable_compilation_cache() -> Path:
    """Persist XLA compilations under `cache_root()/jax`, so repeated shapes (search trials) compile once."""
    import jax

    path = cache_root() / "jax"
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path
