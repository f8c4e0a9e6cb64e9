"""Training checkpoints with Orbax (the only module that imports orbax).

One `CheckpointManager` per run directory (`<run>/checkpoints`). Each step
saves three items: `params` and `opt_state` (pytrees, saved asynchronously)
and `meta` (JSON: step, epoch, batch position, best metric so far, the run's
config and the teacher reference). Orbax writes each step to a temporary
directory and renames it when complete, so a run killed at any point,
including mid-save, restores from the last complete step. Kept: the last
`keep` steps plus the best by dev metric.

Restore order (as big_vision): the run's own checkpoints, then an explicit
`--resume` path, then the initialisation given by the caller.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from tasks.errors import UserError

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    every_steps: int = 500
    """Save every this many steps (and at each evaluation and the end)."""
    keep: int = 2
    """How many of the latest checkpoints to keep (besides the best)."""
    async_save: bool = True

    def __post_init__(self):
        if self.every_steps < 1 or self.keep < 1:
            raise UserError("checkpoint: every_steps and keep must be >= 1")


class Checkpointer:
    """Save / restore (params, opt_state, meta) of a run."""

    def __init__(self, directory: str | Path, cfg: CheckpointConfig = CheckpointConfig(), *, best_metric: str = "score"):
        self.directory = Path(directory).absolute()
        self.cfg = cfg
        self._best_metric = best_metric
        policy = checkpoint_managers.AnyPreservationPolicy(
            [
                checkpoint_managers.LatestN(cfg.keep),
                checkpoint_managers.BestN(
                    get_metric_fn=lambda m: m[best_metric], reverse=False, n=1, keep_checkpoints_without_metrics=False
                ),
            ]
        )
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policy,
            enable_async_checkpointing=cfg.async_save,
            create=jax.process_count() == 1,  # orbax does not create it for one process of several
            cleanup_tmp_directories=True,
            best_fn=lambda m: m[best_metric],
            best_mode="max",
            # Across processes (`distill.train.multihost`) the first saves its copy of the replicated state
            # alone (the others save nothing).
            **_alone(),
        )
        self.directory.mkdir(parents=True, exist_ok=True)
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=("params", "opt_state", "meta"))
        self._failed = False

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def best_step(self) -> int | None:
        return self._manager.best_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, params: Any, opt_state: Any, meta: dict[str, Any], score: float | None = None) -> None:
        """Save `step` (asynchronously). A failed write, this one's or the previous asynchronous one's (disk
        full, no permission), is a UserError naming the directory and the last complete step, which stays
        intact and resumable; the failed step's temporary directory is removed."""
        if jax.process_index() > 0:  # one process of several: only the first's output is the run's
            return
        metrics = {self._best_metric: float(score)} if score is not None else None
        args = ocp.args.Composite(
            params=ocp.args.StandardSave(params),
            opt_state=ocp.args.StandardSave(opt_state),
            meta=ocp.args.JsonSave(meta),
        )
        with self._writing():
            self._manager.save(step, args=args, metrics=metrics, force=True)

    @contextlib.contextmanager
    def _writing(self):
        """Turn an OS error of the checkpoint writer into the one-line UserError of `save`."""
        try:
            yield
        except Exception as e:
            cause = _write_failure(e)
            if cause is None:
                raise
            self._failed = True
            with contextlib.suppress(Exception):
                self._manager.close()
            _join_writers(timeout=60)  # the writer threads end before their files are removed
            for tmp in self.directory.glob("*.orbax-checkpoint-tmp*"):
                shutil.rmtree(tmp, ignore_errors=True)
            done = []
            with contextlib.suppress(OSError):
                done = sorted(int(d.name) for d in self.directory.iterdir() if d.name.isdigit())
            last = f"the last complete checkpoint (step {done[-1]}) is intact" if done else "no checkpoint was complete"
            fix = "free some space" if "space" in cause.lower() or "quota" in cause.lower() else "fix that"
            raise UserError(f"{self.directory}: cannot write checkpoints: {cause}; {last}: {fix}, then continue "
                            f"with --resume") from None

    def restore(self, step: int | None, params_like: Any, opt_state_like: Any) -> tuple[Any, Any, dict[str, Any]]:
        """Restore `step` (None: the latest) onto the structure of the given trees."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise UserError(f"{self.directory}: no complete checkpoint to resume from")
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                params=ocp.args.StandardRestore(_target(params_like)),
                opt_state=ocp.args.StandardRestore(_target(opt_state_like)),
                meta=ocp.args.JsonRestore(),
            ),
        )
        return restored["params"], restored["opt_state"], dict(restored["meta"])

    def restore_meta(self, step: int | None) -> dict[str, Any]:
        """Only the JSON item (progress, settings) of `step` (None: the latest)."""
        step = self.latest_step() if step is None else step
        restored = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(restored["meta"])

    def restore_params(self, step: int | None, params_like: Any) -> Any:
        """Only the parameters (e.g. the best step, for export)."""
        step = self.latest_step() if step is None else step
        restored = self._manager.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore(_target(params_like))))
        return restored["params"]

    def wait(self) -> None:
        with self._writing():
            self._manager.wait_until_finished()

    def close(self) -> None:
        """Wait for the last save and close; after a failed write (already reported), only close."""
        if self._failed:  # closed when the failure was reported
            return
        self.wait()
        self._manager.close()


def _alone() -> dict:
    """The manager's options for a process that checkpoints alone, one of several (none within one)."""
    if jax.process_count() == 1:
        return {}
    me = jax.process_index()
    return {"multiprocessing_options": ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me})}


def _target(tree: Any) -> Any:
    """What to restore `tree`'s arrays as: their shapes and dtypes, laid out as they are (a host array: on
    the first local device), never as the checkpoint was written, so a run saved on N devices restores
    on any number (the loop then replicates it)."""
    first = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

    def leaf(x):
        sharding = x.sharding if isinstance(x, jax.Array) else first
        return jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype if not hasattr(x, "dtype") else x.dtype,
                                    sharding=sharding)

    return jax.tree.map(leaf, tree)


def _join_writers(timeout: float) -> None:
    """Wait (at most `timeout` seconds in all) for Orbax's background writer threads to end."""
    deadline = time.monotonic() + timeout
    for t in threading.enumerate():
        target = getattr(t, "_target", None)  # a plain Thread running an orbax function
        ours = type(t).__module__.startswith("orbax") or (getattr(target, "__module__", None) or "").startswith("orbax")
        if t is not threading.current_thread() and ours:
            t.join(max(0.0, deadline - time.monotonic()))


WRITE_FAILURES = ("No space left on device", "Disk quota exceeded", "Permission denied", "Read-only file system")
"""How a failed write reads where the writer (tensorstore, for the arrays) reports it as text, not OSError."""


def _write_failure(e: BaseException) -> str | None:
    """Why the checkpoint write behind `e` failed (an OSError in its chain of causes, or a known failure in
    its message), None when `e` is something else (a bug, re-raised as it is)."""
    for _ in range(20):
        if e is None:
            return None
        if isinstance(e, OSError):
            return e.strerror or str(e)
        known = next((text for text in WRITE_FAILURES if text in str(e)), None)
        if known:
            return known
        e = e.__cause__ or e.__context__
    return None
