"""Files and keys that every room shares: the cache root, content keys, atomic JSON, output paths.

Imports nothing of ours but `tasks` (its errors). Anything that writes a run's
directory or a cache entry names its files through here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from tasks.errors import UserError


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


def features_fingerprint(features) -> str:
    """A hash of the exact inputs (token ids, segment ids, lengths) of every feature of a `tasks.features.Features`."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(features.lengths, np.int64).tobytes())
    for ids, types in zip(features.input_ids, features.token_type_ids):
        h.update(np.ascontiguousarray(ids, np.int32).tobytes())
        h.update(np.ascontiguousarray(types, np.int32).tobytes())
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


def enable_compilation_cache() -> Path:
    """Persist XLA compilations under `cache_root()/jax`, so repeated shapes (search trials) compile once."""
    import jax

    path = cache_root() / "jax"
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path


def check_output_path(path: str | os.PathLike, what: str = "--output") -> Path:
    """`path` as a Path; a UserError naming it when it has a `..` component.

    Output paths (run, search and export directories) never climb: every
    file a run writes then stays inside the directory the user named.
    """
    if ".." in Path(path).parts:
        raise UserError(f"{what} {path}: '..' is not allowed in an output path; give it without '..' (e.g. absolute)")
    return Path(path)


def export_path(root: str | os.PathLike, name: str) -> Path:
    """`root/name`, a UserError unless it stays inside `root` (no `..`, no absolute name, no link leading out)."""
    root = check_output_path(root, "export root")
    dest = root / name
    if Path(name).is_absolute() or ".." in Path(name).parts or not dest.resolve().is_relative_to(root.resolve()):
        raise UserError(f"{dest}: an export must stay inside {root}")
    return dest


def publish(out: Path, cached: Path, model_dir: str) -> None:
    """Copy a finished run's model directory `out/model_dir` and its config.json and results.json to the
    cache entry `cached`, atomically (a temporary sibling renamed into place)."""
    tmp = cached.with_name(f".{cached.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shutil.copytree(out / model_dir, tmp / model_dir)
    for name in ("config.json", "results.json"):
        shutil.copy2(out / name, tmp / name)
    shutil.rmtree(cached, ignore_errors=True)
    tmp.rename(cached)
