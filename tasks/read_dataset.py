"""Rows of a Hugging Face dataset: a `save_to_disk` directory, or NAME[:CONFIG] from the datasets cache.

`open_dataset(ref)` loads the `DatasetDict` (memory-mapped Arrow files, through the `datasets` library);
`dataset_split(ref, split)` maps our split names onto its own (dev: `validation`, `dev`, `valid` or
`val`); `dataset_rows(ref, split, required, optional)` yields `(Where, row)` like
`tasks.read_table.table_rows`, with `ClassLabel` values (and lists of them, as NER tags) as their names, so
a dataset reads exactly as the same data written to a file would. `class_names(ref, column)` is the
`ClassLabel` names of a column, which fix the label order when there are some (as transformers'
`run_glue.py` and `run_ner.py` take them).

`datasets` is imported on first use only: loading it costs about a second, which tasks on files never pay.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Sequence

from tasks.errors import DataError, UserError
from tasks.read_table import Where

SPLIT_NAMES = {"train": ("train",), "dev": ("validation", "dev", "valid", "val"), "test": ("test",)}
"""Our split -> the names a dataset may give it, in order of preference."""


def open_dataset(ref: str):
    """The `DatasetDict` that `ref` names: a directory written by `save_to_disk`, else NAME[:CONFIG] loaded
    with `load_dataset` (from the local cache when offline). One-line errors: a path that is not a saved
    dataset, a dataset without splits, a name that is neither cached nor reachable."""
    import datasets  # here: see the module docstring

    path = Path(ref).expanduser()
    if path.exists() or ref.startswith((".", "/", "~")) or (path.parent != Path(".") and path.parent.is_dir()):
        return _from_disk(datasets, path)  # a path (an existing one, or one that is plainly meant as a path)
    name, _, config = ref.partition(":")
    try:
        loaded = datasets.load_dataset(name, config or None)
    except Exception as e:  # noqa: BLE001 - offline, unknown name, bad config: all one line for the user
        reason = " ".join(str(e).split())[:200]
        raise UserError(f"--dataset {ref}: not a saved dataset directory, and not found in the datasets cache "
                        f"({datasets.config.HF_DATASETS_CACHE}) nor on the Hub ({reason}); save it with "
                        "save_to_disk and pass its directory") from None
    return _splits(loaded, ref)


def _from_disk(datasets, path: Path):
    if not path.is_dir():
        raise DataError(path, "no such dataset directory" if not path.exists() else
                        "not a dataset directory (--dataset takes a folder written by save_to_disk, or a name)")
    if not any((path / f).is_file() for f in ("dataset_dict.json", "state.json")):
        raise DataError(path, "not a dataset saved with save_to_disk (no dataset_dict.json or state.json)")
    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as e:  # noqa: BLE001 - a damaged or foreign directory: one line naming it
        raise DataError(path, f"cannot load the saved dataset ({' '.join(str(e).split())[:200]})") from None
    return _splits(loaded, str(path))


def _splits(loaded, ref: str):
    if not hasattr(loaded, "keys"):
        raise DataError(ref, "a single Dataset without splits; save a DatasetDict with train and validation "
                        "splits (DatasetDict({'train': ..., 'validation': ...}).save_to_disk(...))")
    return loaded


def dataset_split(ref: str, split: str, loaded=None) -> str:
    """The name of our `split` ('train', 'dev', 'test') in the dataset `ref`; UserError listing its splits."""
    loaded = open_dataset(ref) if loaded is None else loaded
    for name in SPLIT_NAMES.get(split, (split,)):
        if name in loaded:
            return name
    raise UserError(f"--dataset {ref}: no {split} split (it has {sorted(loaded)}); expected one of "
                    f"{list(SPLIT_NAMES.get(split, (split,)))}")


def class_names(ref: str, column: str, split: str = "train") -> tuple[str, ...] | None:
    """The `ClassLabel` names of `column` (or of its list items) in `split`; None when it is not one."""
    loaded = open_dataset(ref)
    feature = loaded[dataset_split(ref, split, loaded)].features.get(column)
    names = _names(feature)
    return None if names is None else tuple(names)


def _names(feature) -> list[str] | None:
    inner = getattr(feature, "feature", None)
    for f in (feature, inner):
        if f is not None and type(f).__name__ == "ClassLabel":
            return list(f.names)
    return None


def dataset_files(ref: str, split: str) -> list[Path]:
    """The Arrow files holding `split` (what a cache key fingerprints)."""
    loaded = open_dataset(ref)
    return [Path(f["filename"]) for f in loaded[dataset_split(ref, split, loaded)].cache_files]


def dataset_rows(ref: str, split: str, required: Sequence[str], optional: Sequence[str] = ()
                 ) -> Iterator[tuple[Where, dict]]:
    """(where, {column: value}) of each row of `split`, ClassLabel ids as names (-1, unlabelled: None)."""
    loaded = open_dataset(ref)
    name = dataset_split(ref, split, loaded)
    ds = loaded[name]
    source = f"{ref} ({name} split)"
    missing = [c for c in required if c not in ds.column_names]
    if missing:
        raise DataError(source, f"missing column {missing[0]!r}; the dataset has {ds.column_names}")
    columns = [c for c in (*required, *optional) if c in ds.column_names]
    if not len(ds):
        raise DataError(source, "no rows")
    names = {c: _names(ds.features[c]) for c in columns}
    for i, row in enumerate(ds.select_columns(columns)):
        yield Where(source, row=i), {c: _as_names(row[c], names[c]) for c in columns}


def _as_names(value: Any, names: list[str] | None) -> Any:
    if names is None:
        return value
    if isinstance(value, list):
        return [_as_names(v, names) for v in value]
    return names[value] if isinstance(value, int) and 0 <= value < len(names) else None
