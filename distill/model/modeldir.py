"""A model directory's own files, checked before anything is loaded from them.

Containment: every file a model directory names (config.json, the weights, a weight index's
shards, the tokenizer files and what tokenizer_config.json names) must resolve, symlinks
followed, inside the directory; a name that is absolute or holds `..` is refused as it stands.
One exception: a Hugging Face Hub cache snapshot (`models--ORG--NAME/snapshots/REV`) links its
files to `../../blobs/HASH`, so its repository's `blobs/` counts as inside.

The JSON files are read with `tasks.userfiles` (undecodable, binary, nested too deeply, not an
object: one line naming the file), and config.json's fields that the loaders use are checked for
type (`check_config`), so a `num_labels: "two"` is a `TeacherError` naming the file, not a traceback.
"""

from __future__ import annotations

import numbers
from pathlib import Path
from typing import Any

from distill.arch import HEADS
from tasks.errors import DataError, UserError
from tasks.userfiles import read_json, text_lines

WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json")
"""The tokenizer files transformers reads from a directory by their fixed names."""
OWN_FILES = ("config.json", WEIGHTS, WEIGHTS_INDEX, *TOKENIZER_FILES)
MAX_LABELS = 1 << 16


class TeacherError(UserError):
    """A teacher (or any model directory) that cannot be found or read; the message names it."""


def roots(path: Path) -> tuple[Path, ...]:
    """Where a model directory's files may resolve to: the directory itself (symlinks followed), and
    for a Hub cache snapshot also its repository's `blobs/`."""
    root = Path(path).resolve()
    snapshots = root.parent
    if snapshots.name == "snapshots" and snapshots.parent.name.startswith("models--"):
        return root, snapshots.parent / "blobs"
    return (root,)


def inside(path: Path, name: Any, named_in: Path | None = None) -> Path:
    """`path / name`, refused (TeacherError naming `named_in`, else the file) unless `name` is a plain
    relative name and the file it resolves to (symlinks followed) lies inside the model directory."""
    where = named_in or Path(path) / str(name)
    if not isinstance(name, str) or not name.strip():
        raise TeacherError(f"{where}: expected a file name, got {name!r}")
    if Path(name).is_absolute() or ".." in Path(name).parts:
        raise TeacherError(f"{where}: names {name!r}, outside the model directory {path}; "
                           "a model directory may only name its own files (fix or remove that entry)")
    target = (Path(path) / name).resolve()
    if not any(target == root or root in target.parents for root in roots(path)):
        raise TeacherError(f"{where}: {name!r} leads to {target}, outside the model directory {path} "
                           "(a symlink?); a model directory may only name its own files")
    return Path(path) / name


def check_own_files(path: Path, names: tuple[str, ...] = OWN_FILES) -> None:
    """Each of `names` that `path` holds (a dangling link included) must resolve inside it."""
    for name in names:
        candidate = Path(path) / name
        if candidate.is_symlink() or candidate.exists():
            inside(path, name)


def read_config(path: Path) -> dict[str, Any]:
    """config.json of the model directory `path`: inside it, a JSON object, its fields of the right types."""
    cfg_file = Path(path) / "config.json"
    if not (cfg_file.is_file() or cfg_file.is_symlink()):
        raise TeacherError(f"{cfg_file}: not found; a model directory needs config.json")
    check_own_files(path)
    try:
        cfg = read_json(cfg_file, "a BERT config")
    except DataError as e:
        raise TeacherError(str(e)) from None
    check_config(cfg, cfg_file)
    return cfg


def check_config(cfg: dict[str, Any], cfg_file: Path) -> None:
    """The fields of config.json that our loaders read, each of its type; a TeacherError naming the file
    and field otherwise. (The architecture's own fields are checked by `BertArch`.)"""
    _check_fields(cfg, cfg_file, "", {"num_labels": _labels_count(1), "id2label": _label_map, "label2id": _label_map,
                                      "architectures": _strings, "model_type": str, "problem_type": str,
                                      "quantization_config": dict}, nullable=True)
    _check_fields(cfg, cfg_file, "", {"bertnas": dict}, nullable=False)
    meta = cfg.get("bertnas")
    if meta is not None:
        _check_fields(meta, cfg_file, "bertnas.", {"head": _head, "num_labels": _labels_count(0), "labels": _strings,
                                                   "crf": bool, "task": str, "arch": dict}, nullable=False)
        _check_fields(meta, cfg_file, "bertnas.", {"quantization": dict, "supernet": dict}, nullable=True)


def _check_fields(d: dict, cfg_file: Path, prefix: str, kinds: dict, nullable: bool) -> None:
    for key, kind in kinds.items():
        if key not in d or (d[key] is None and nullable):  # HF configs write null for unset fields
            continue
        value = d[key]
        ok = isinstance(value, kind) if isinstance(kind, type) else kind(value)
        if not ok:
            expected = f"a {kind.__name__}" if isinstance(kind, type) else kind.__doc__
            raise TeacherError(f"{cfg_file}: {prefix}{key}: expected {expected}, got {value!r:.80}")


def _labels_count(least: int):
    def check(value) -> bool:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool) and least <= value <= MAX_LABELS

    check.__doc__ = f"an integer in [{least}, {MAX_LABELS}]"
    return check


def _label_map(value) -> bool:
    return isinstance(value, dict) and len(value) <= MAX_LABELS


_label_map.__doc__ = f"an object of at most {MAX_LABELS} labels"


def _strings(value) -> bool:
    """a list of strings"""
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _head(value) -> bool:
    return isinstance(value, str) and value in HEADS


_head.__doc__ = f"one of {list(HEADS)}"


def weight_files(path: Path) -> list[Path]:
    """The safetensors files of the model directory `path`: model.safetensors, else the shards its
    model.safetensors.index.json names, each checked to be a plain name of a file inside `path`.
    [] when the directory has neither."""
    path = Path(path)
    if (path / WEIGHTS).is_file():
        return [inside(path, WEIGHTS)]
    index = path / WEIGHTS_INDEX
    if not index.is_file():
        return []
    inside(path, WEIGHTS_INDEX)
    try:
        weight_map = read_json(index, "a safetensors weight index").get("weight_map")
    except DataError as e:
        raise TeacherError(str(e)) from None
    if not isinstance(weight_map, dict) or not weight_map:
        raise TeacherError(f"{index}: weight_map: expected an object of tensor name -> file, got {weight_map!r:.80}")
    bad = [(k, v) for k, v in weight_map.items() if not isinstance(v, str)]
    if bad:
        raise TeacherError(f"{index}: weight_map: tensor {bad[0][0]!r} maps to {bad[0][1]!r:.80}, not a file name")
    files = []
    for name in sorted(set(weight_map.values())):
        shard = inside(path, name, named_in=index)
        if not shard.is_file():
            raise TeacherError(f"{index}: names {name!r}, which is not a file in {path}")
        files.append(shard)
    return files


def check_tokenizer_files(path: Path) -> None:
    """The tokenizer files of `path`: inside it, readable (vocab.txt UTF-8 text, the JSON files JSON
    objects), and every file tokenizer_config.json names (its `*_file` and `*_files` keys, which older
    transformers opened as given) inside it too. A TeacherError naming the file otherwise."""
    check_own_files(path, TOKENIZER_FILES)
    docs = {}
    try:
        for name in TOKENIZER_FILES:
            if not (Path(path) / name).is_file():
                continue
            if name.endswith(".json"):
                docs[name] = read_json(Path(path) / name, f"a tokenizer file, {name}")
            else:
                for _ in text_lines(Path(path) / name):
                    pass
    except DataError as e:
        raise TeacherError(str(e)) from None
    cfg_file = Path(path) / "tokenizer_config.json"
    for key, value in docs.get(cfg_file.name, {}).items():
        if not key.endswith(("_file", "_files")) or value is None:
            continue
        for name in value if isinstance(value, list) else [value]:
            inside(path, name, named_in=cfg_file)
