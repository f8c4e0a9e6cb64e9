"""The cost of a candidate architecture: analytic size and FLOPs, measured latency.

Params and FLOPs are exact counts (`BertArch.num_params`, `BertArch.flops`, 2
FLOPs per multiply-add, one example of the task's typical length). Latency is
measured, the way HAT's `latency_dataset.py` and our `bench/` do it: build the
model (float32, random params), jit the deterministic (inference, dropout off)
forward pass, compile it and run `warmup` untimed calls, then time `repeats`
calls of random token ids with a full attention mask, each ended by
`jax.block_until_ready`, with `time.perf_counter`; report the median and the
95th percentile in ms. Batch 1 gives the latency (what the constraints use),
batch `batch_size` the throughput.

Latency depends on the machine, so `CostModel` caches measurements in
`cache_root()/latency/<device_name()>.json`, keyed by everything that changes
the measurement (the full architecture, head, outputs, length and batch).
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import logging
import math
import os
import re
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from distill.config import BertArch, head_outputs
from distill.modeling import build_model, init_params
from distill.runlog import cache_root
from tasks.errors import UserError

log = logging.getLogger(__name__)


class ConstraintError(UserError, ValueError):
    """An invalid constraint (a bad command-line value)."""


def typical_length(features_or_lengths, percentile: float = 95, multiple: int = 8, *, max_length=None) -> int:
    """The `percentile` of the token lengths (of `Features` or an array), rounded up to a
    multiple of `multiple`, clamped to `max_length` (default: the features' max_length)."""
    lengths = getattr(features_or_lengths, "lengths", features_or_lengths)
    max_length = max_length or getattr(features_or_lengths, "max_length", None)
    lengths = np.asarray(lengths)
    if lengths.size == 0 or not 0 < percentile <= 100 or multiple < 1:
        raise ValueError(f"typical_length: {lengths.size} lengths, percentile {percentile}, multiple {multiple}")
    n = math.ceil(float(np.percentile(lengths, percentile)) - 1e-9)
    n = max(multiple, -(-n // multiple) * multiple)
    return min(n, max_length) if max_length else n


@dataclasses.dataclass(frozen=True)
class Cost:
    arch: str
    params: int
    flops: int  # one example of length seq_len
    seq_len: int
    latency_ms: float  # batch 1, median
    latency_ms_p95: float  # batch 1
    batch_latency_ms: float  # whole batch of batch_size, median
    throughput: float  # examples/s at batch_size
    speedup: float | None = None  # teacher latency_ms / ours, see with_speedup
    batch_size: int = 32

    def with_speedup(self, teacher: Cost) -> Cost:
        return dataclasses.replace(self, speedup=teacher.latency_ms / self.latency_ms)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Constraints:
    max_latency_ms: float | None = None
    min_speedup: float | None = None
    max_params: int | None = None

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is not None and not (isinstance(value, (int, float)) and value > 0):
                raise ConstraintError(f"--{f.name.replace('_', '-')} must be positive, got {value!r}")

    def violations(self, cost: Cost) -> list[str]:
        """Why `cost` breaks the constraints (empty when it meets them all)."""
        out = []
        if self.max_latency_ms is not None and cost.latency_ms > self.max_latency_ms:
            out.append(f"latency {cost.latency_ms:.3g} ms > --max-latency-ms {self.max_latency_ms:g}")
        if self.min_speedup is not None:
            if cost.speedup is None:
                raise ValueError("--min-speedup needs Cost.speedup: call cost.with_speedup(teacher_cost)")
            if cost.speedup < self.min_speedup:
                out.append(f"speedup {cost.speedup:.3g}x < --min-speedup {self.min_speedup:g}")
        if self.max_params is not None and cost.params > self.max_params:
            out.append(f"params {cost.params / 1e6:.4g}M > --max-params {self.max_params / 1e6:.4g}M")
        return out


def measure_latency(arch: BertArch, head: str, num_labels: int, seq_len: int, batch_size: int, *,
                    repeats: int = 20, warmup: int = 3, params=None) -> tuple[float, float]:
    """(median, p95) wall time in ms of one jitted inference forward pass of a batch."""
    if seq_len > arch.max_position_embeddings or min(seq_len, batch_size, repeats) < 1 or warmup < 0:
        raise ValueError(f"measure_latency: seq {seq_len}, batch {batch_size}, repeats {repeats}, warmup {warmup}")
    model = build_model(arch, head, num_labels)
    params = init_params(model, jax.random.key(0), seq_len) if params is None else params

    def forward(p, ids, token_types, mask):
        return model.apply({"params": p}, ids, token_types, mask, deterministic=True)

    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(0, arch.vocab_size, (batch_size, seq_len)), jnp.int32)
    inputs = (params, ids, jnp.zeros_like(ids), jnp.ones_like(ids))
    compiled = jax.jit(forward).lower(*inputs).compile()
    for _ in range(warmup):
        jax.block_until_ready(compiled(*inputs))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(*inputs))
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times)), float(np.percentile(times, 95))


def device_name() -> str:
    """`cpu-cpu-2cpu`-style name of this machine for the latency cache (file-name safe)."""
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    name = f"{jax.default_backend()}-{jax.devices()[0].device_kind}-{threads}cpu"
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


class CostModel:
    """Analytic params/FLOPs plus cached measured latency for one task setting."""

    def __init__(self, head: str, num_labels: int, seq_len: int, *, batch_size: int = 32,
                 cache_path: os.PathLike | None = None, repeats: int = 20):
        self.head, self.num_labels = head, head_outputs(head, num_labels)
        self.seq_len, self.batch_size, self.repeats = seq_len, batch_size, repeats
        self.cache_path = Path(cache_path or cache_root() / "latency" / f"{device_name()}.json")
        self._entries = self._read()

    def key(self, arch: BertArch, batch: int) -> str:
        digest = hashlib.sha256(arch.to_json().encode()).hexdigest()[:12]
        return f"{arch.name}|{self.head}|{self.num_labels}|seq{self.seq_len}|b{batch}|{digest}"

    def cost(self, arch: BertArch) -> Cost:
        median, p95 = self._latency(arch, 1)
        batch_median, _ = self._latency(arch, self.batch_size)
        return Cost(
            arch.name, arch.num_params(self.head, self.num_labels),
            arch.flops(self.seq_len, self.head, self.num_labels),
            self.seq_len, latency_ms=median, latency_ms_p95=p95, batch_latency_ms=batch_median,
            throughput=self.batch_size * 1e3 / batch_median, batch_size=self.batch_size)

    def _latency(self, arch: BertArch, batch: int) -> tuple[float, float]:
        key = self.key(arch, batch)
        if key not in self._entries:
            self._entries.update(self._read())  # another process may have measured it
        if key not in self._entries:
            median, p95 = measure_latency(arch, self.head, self.num_labels, self.seq_len, batch, repeats=self.repeats)
            self._write(key, {"median_ms": median, "p95_ms": p95, "repeats": self.repeats, "time": time.time()})
        entry = self._entries[key]
        return entry["median_ms"], entry["p95_ms"]

    def _read(self) -> dict:
        try:
            entries = json.loads(self.cache_path.read_text())["entries"]
            return {k: v for k, v in entries.items() if _valid(v)}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            log.warning("ignoring unreadable latency cache %s: %s", self.cache_path, e)
            return {}

    def _write(self, key: str, entry: dict) -> None:
        """Merge `entry` into the file: re-read under a lock, write a temp file, rename."""
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.cache_path.with_name(self.cache_path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            entries = {**self._read(), key: entry}
            fd, tmp = tempfile.mkstemp(dir=self.cache_path.parent, prefix=f".{self.cache_path.name}.")
            with os.fdopen(fd, "w") as fh:
                json.dump({"device": device_name(), "entries": entries}, fh, indent=1, sort_keys=True)
            os.replace(tmp, self.cache_path)
        self._entries.update(entries)


def _valid(entry) -> bool:
    return isinstance(entry, dict) and all(
        isinstance(entry.get(k), (int, float)) and entry[k] > 0 for k in ("median_ms", "p95_ms"))

