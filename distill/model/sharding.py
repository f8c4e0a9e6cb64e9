"""Data parallelism over the local devices, with `jax.sharding`.

One `Mesh` with a single `data` axis over the devices. A batch is split on
its leading dimension across them (`NamedSharding(mesh, P("data"))`), the
parameters and optimizer state are replicated (`P()`), or with `fsdp` split
too (FSDP / ZeRO-3 style: each array on its largest dimension that the device
count divides, so each device holds a share; XLA gathers a layer's weights
where it needs them and reduce-scatters their gradients), and the jitted steps,
which know nothing of devices, are partitioned by XLA from those layouts: the
gradient is the whole batch's, summed across the devices, so a step on N
devices computes what it computes on one (to float rounding; the dropout bits
too, jax's threefry keys being partitionable). On one device every method is
the identity, so single-device runs pay nothing.

Across processes (`jax.distributed`, one per host; `distill.train.multihost`) the
mesh spans every process's devices: each process places only its own rows of
the global batch (`jax.make_array_from_callback`), every process holding the
same global batch order; `local` gives a process its own copy of replicated
arrays for what it does alone (evaluation, logging, checkpoints, exports).

Checkpoints hold plain arrays: one written on N devices restores on any
number (`distill.train.checkpoint` restores onto the current process's
layout, then the loop replicates).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from tasks.errors import UserError

DATA = "data"
"""The mesh axis the batch is split on."""


@dataclasses.dataclass(frozen=True)
class DataParallel:
    """Where a step's arrays go: batches split over `mesh`'s `data` axis, everything else replicated."""

    mesh: Mesh
    fsdp: bool = False

    @property
    def size(self) -> int:
        return self.mesh.size

    @property
    def multiprocess(self) -> bool:
        """Whether the mesh spans devices of other processes (`jax.distributed`)."""
        return any(d.process_index != jax.process_index() for d in self.mesh.devices.ravel())

    def local(self, tree: Any) -> Any:
        """`tree`'s replicated arrays as this process's own copy (identity within one process)."""
        if not self.multiprocess:
            return tree
        return jax.tree.map(lambda a: a.addressable_data(0) if isinstance(a, jax.Array) else a, tree)

    def _put(self, a: Any, sharding: NamedSharding) -> Any:
        """`a` (the same value in every process) placed by `sharding`: across processes each one copies
        only the slices its devices hold."""
        if not self.multiprocess:
            return jax.device_put(a, sharding)
        if isinstance(a, jax.Array) and jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(self._put(jax.random.key_data(a), sharding), impl=jax.random.key_impl(a))
        host = np.asarray(jax.device_get(a))
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    def replicate(self, tree: Any) -> Any:
        """`tree` with every array on every device (parameters, optimizer state, keys)."""
        if self.size == 1:
            return tree
        whole = NamedSharding(self.mesh, P())
        return jax.tree.map(lambda a: self._put(a, whole), tree)

    def place_state(self, tree: Any) -> Any:
        """Parameters and optimizer state: replicated, or with `fsdp` each array split on its largest
        dimension that the device count divides (arrays with none stay replicated)."""
        if self.size == 1 or not self.fsdp:
            return self.replicate(tree)

        def place(a):
            dims = [d for d in np.argsort(np.shape(a))[::-1] if np.shape(a)[d] % self.size == 0]
            spec = P(*(DATA if d == dims[0] else None for d in range(np.ndim(a)))) if dims else P()
            return self._put(a, NamedSharding(self.mesh, spec))

        return jax.tree.map(place, tree)

    def shard(self, tree: Any, axis: int = 0) -> Any:
        """`tree`'s arrays split on their batch dimension `axis`; scalars replicated."""
        if self.size == 1:
            return tree
        split, whole = NamedSharding(self.mesh, P(*(None,) * axis, DATA)), NamedSharding(self.mesh, P())
        return jax.tree.map(lambda a: self._put(a, split if np.ndim(a) else whole), tree)

    def describe(self) -> dict:
        """For a run's results.json: how many devices of which kind, and the mesh."""
        devices = self.mesh.devices.ravel()
        return {
            "devices": int(self.size),
            "device_kind": devices[0].device_kind,
            "platform": devices[0].platform,
            "mesh": {name: int(n) for name, n in self.mesh.shape.items()},
            "fsdp": self.fsdp,
        }


def local_devices(count: int = 0) -> list:
    """The first `count` local devices (0: all of them)."""
    devices = jax.local_devices()
    if count < 0 or count > len(devices):
        raise UserError(f"--devices: {count} asked for, this process has {len(devices)} ({devices[0].platform})")
    return devices[: count or len(devices)]


def data_parallel(batch_size: int, devices: int = 0, *, fsdp: bool = False, grad_accum: int = 1,
                  flag: str = "--batch-size") -> DataParallel:
    """The mesh for training with `batch_size` over `devices` local devices (0: all), parameters split too
    with `fsdp`. Each of the `grad_accum` micro-batches is split over the devices, so a batch size that
    devices x micro-batches does not divide is the user's error (`flag` names it)."""
    if jax.process_count() > 1 and (devices or fsdp):
        raise UserError(f"{'--devices' if devices else '--fsdp'}: not with several processes, which use all their devices")
    mesh = Mesh(np.array(jax.devices() if jax.process_count() > 1 else local_devices(devices)), (DATA,))
    dp = DataParallel(mesh, fsdp)
    if batch_size % (dp.size * grad_accum):
        split = f"the {dp.size} devices it is split across" + (f", in {grad_accum} micro-batches" if grad_accum > 1 else "")
        raise UserError(f"{flag}: {batch_size} does not divide over {split}; use a multiple of {dp.size * grad_accum}")
    return dp


def for_batches(batch_size: int) -> DataParallel:
    """The mesh for inference batches of `batch_size` (evaluation, labelling): all local devices when
    they divide the batch, else one device (inference has no batch size of the user's to refuse)."""
    devices = local_devices()
    if batch_size % len(devices):
        devices = devices[:1]
    return DataParallel(Mesh(np.array(devices), (DATA,)))
