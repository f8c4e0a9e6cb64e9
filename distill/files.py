"""Files and keys that every room shares: the cache root, content keys, atomic JSON, output paths and
the ownership of run directories.

Imports nothing of ours but `tasks` (its errors). Anything that writes a run's
directory or a cache entry names its files through here.

A run directory is owned: `owned_output` claims it for one tool (a marker file naming the tool) and one
process (an OS file lock, released when the process dies), and refuses a directory that holds anything
else: a file, another tool's run, files no run of ours wrote, an earlier run without `--resume`, a run that
another process is writing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from tasks.errors import UserError

log = logging.getLogger(__name__)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


FILE_MODE, DIR_MODE = 0o666 & ~_umask(), 0o777 & ~_umask()
"""What a plain open() / mkdir() leaves under the user's umask (temporaries made by mkstemp/mkdtemp are
private until given these)."""


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
    """Write JSON atomically (a temporary file of this writer's own, then rename): two writers of the same
    file never share a temporary, and a reader sees the old file or the new one. A failed write (disk full,
    no permission) is a UserError naming the path; the old file stays as it was."""
    path = Path(path)
    text = json.dumps(to_jsonable(obj), indent=2, sort_keys=True) + "\n"
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise write_error(path, e) from None
    try:
        os.fchmod(fd, FILE_MODE)  # as a plain write would leave it (mkstemp's files are private)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise write_error(path, e) from None


def read_record(path: os.PathLike, check: Callable[[Any], None], what: str, then: str) -> Any | None:
    """A JSON record a run wrote for itself (to resume from): None where there is none, and None, warned
    with the file's name (`damaged <what> (<why>); <then>`), where it cannot be read or `check` raises on it
    (ValueError, KeyError, TypeError): a damaged record counts as a missing one."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        check(record)
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, OverflowError) as e:
        log.warning("%s: damaged %s (%s); %s", path, what, str(e)[:200] or type(e).__name__, then)
        return None
    return record


def write_error(path: os.PathLike, e: OSError) -> UserError:
    """The one-line error for a failed write: the path, the system's reason, and for a full disk what to do."""
    hint = "; free some space and run again" if e.errno in (errno.ENOSPC, errno.EDQUOT) else ""
    return UserError(f"{path}: cannot write: {e.strerror or e}{hint}")


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
    cache entry `cached`, atomically: a temporary sibling of this writer's own, renamed into place. An
    entry already there stays (the key names the same content, and another run may be copying it)."""
    if (cached / "results.json").is_file():
        return
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{cached.name}.", dir=cached.parent))
    tmp.chmod(DIR_MODE)  # as a plain mkdir would leave it (copied runs inherit it)
    try:
        shutil.copytree(out / model_dir, tmp / model_dir)
        for name in ("config.json", "results.json"):
            shutil.copy2(out / name, tmp / name)
        shutil.rmtree(cached, ignore_errors=True)  # an unfinished leftover (no results.json)
        with contextlib.suppress(OSError):  # else another run published it first
            tmp.rename(cached)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


RUN_MARKER = ".bertnas-run.json"
"""In every run directory: `{"tool": ..., "created": ...}`, the tool that owns it."""
RUN_LOCK = ".bertnas.lock"
"""In every run directory: the file a running tool holds an exclusive lock on (its pid inside)."""
LEGACY_RUNS = {"search": ("search_config.json",), "finetune": ("config.json", "metrics.jsonl"),
               "distill": ("config.json", "metrics.jsonl"), "supernet": ("config.json", "metrics.jsonl")}
"""What a run directory of each tool written before markers existed holds (accepted with --resume only)."""


def run_owner(path: Path) -> str | None:
    """The tool that owns run directory `path` (its marker), None when it has no marker."""
    marker = path / RUN_MARKER
    if not marker.is_file():
        return None
    try:
        data = json.loads(marker.read_text())
        return str(data["tool"]) if isinstance(data, dict) else "?"
    except (OSError, ValueError, KeyError, RecursionError):
        return "?"


def check_owner(out: Path, tool: str, *, resume: bool, what: str = "--output") -> None:
    """A UserError unless `out` is one `tool` may write: missing, empty, or its own run (with `resume` when
    it holds anything; with `resume`, also a run of `tool` from before markers): never a file, another
    tool's run, or files that no run of ours wrote."""
    if out.exists() and not out.is_dir():
        raise UserError(f"{what} {out}: exists and is not a directory")
    if not out.is_dir():
        return
    try:
        held = sorted(n for n in os.listdir(out) if n not in (RUN_MARKER, RUN_LOCK)
                      and not (n.startswith(f"{RUN_MARKER}.") and n.endswith(".tmp")))
    except OSError as e:
        raise UserError(f"{what} {out}: cannot read it: {e.strerror or e}") from None
    owner = run_owner(out)
    listing = ", ".join(held[:4]) + (f" and {len(held) - 4} more" if len(held) > 4 else "")
    legacy = owner is None and resume and all(name in held for name in LEGACY_RUNS.get(tool, ("?",)))
    if owner is None and held and not legacy:
        raise UserError(f"{what} {out}: holds files that no bertnas run wrote ({listing}); "
                        f"pick a new or empty directory")
    if owner == "?":
        raise UserError(f"{what} {out}: its {RUN_MARKER} cannot be read; pick another directory")
    if owner is not None and owner != tool:
        raise UserError(f"{what} {out}: holds a bertnas {owner} run, not a {tool} run; pick another directory")
    if held and not resume:
        raise UserError(f"{what} {out}: holds an earlier {tool} run ({listing}); pass --resume to continue it "
                        f"or pick another directory")


@contextlib.contextmanager
def owned_output(path: str | os.PathLike, tool: str, *, resume: bool = False,
                 what: str = "--output") -> Iterator[Path]:
    """`path`, claimed for `tool` by this process for the duration: checked (`check_owner`), created, locked
    (a second process on the same directory is refused), marked. When the body fails and the directory
    holds nothing but the claim, the claim is taken back: what did not exist before is removed again."""
    out = check_output_path(path, what)
    if not (out.is_dir() and run_owner(out) is not None):  # a run of ours: its lock speaks first
        check_owner(out, tool, resume=resume, what=what)  # nothing is created in a directory not ours
    created = [p for p in (out, *out.parents) if not p.exists()]
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{what} {out}: cannot create it: {e.strerror or e}") from None
    fd = _lock(out, what)
    try:
        check_owner(out, tool, resume=resume, what=what)  # under the lock: another run may have written
        if run_owner(out) is None:
            write_json(out / RUN_MARKER, {"tool": tool, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        yield out
    except BaseException:
        _unclaim(out, created)
        raise
    finally:
        if fd is not None:
            os.close(fd)


def _lock(out: Path, what: str) -> int | None:
    """An exclusive, non-blocking lock on `out/RUN_LOCK` (the open descriptor; closing it unlocks); None,
    with a warning, on a file system without locks."""
    try:
        fd = os.open(out / RUN_LOCK, os.O_RDWR | os.O_CREAT, FILE_MODE)
    except OSError as e:
        raise UserError(f"{what} {out}: cannot write in it: {e.strerror or e}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        holder = os.read(fd, 32).decode(errors="replace").strip() if e.errno in _HELD else ""
        os.close(fd)
        if e.errno not in _HELD:
            log.warning("%s: cannot lock it (%s); nothing stops a second run from writing to it", out, e.strerror)
            return None
        pid = f" (pid {holder})" if holder else ""
        raise UserError(f"{what} {out}: another bertnas process{pid} is writing to it; wait for it to end or "
                        f"pick another directory") from None
    try:
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
    except OSError as e:
        os.close(fd)
        raise write_error(out / RUN_LOCK, e) from None
    return fd


_HELD = (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)
"""flock's answers for a lock that another process holds."""


def wait_unlocked(out: Path, seconds: float) -> None:
    """Wait, at most `seconds`, until no process holds the run lock of `out` (a process that is ending)."""
    deadline = time.monotonic() + seconds
    while (out / RUN_LOCK).is_file() and time.monotonic() < deadline:
        try:
            with open(out / RUN_LOCK, "rb") as fh:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released when the file closes
            return
        except OSError as e:
            if e.errno not in _HELD:
                return
        time.sleep(1.0)


def _unclaim(out: Path, created: list[Path]) -> None:
    """Undo `owned_output`'s claim when nothing but the claim is in `out`: marker and lock removed, and the
    directories it created (deepest first) removed while empty."""
    with contextlib.suppress(OSError):
        if set(os.listdir(out)) - {RUN_MARKER, RUN_LOCK}:
            return
        for name in (RUN_MARKER, RUN_LOCK):
            with contextlib.suppress(FileNotFoundError):
                (out / name).unlink()
        for d in created:
            d.rmdir()
