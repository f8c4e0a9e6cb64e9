"""The cost of a candidate architecture: analytic size and FLOPs, measured latency.

Params and FLOPs are exact counts (`BertArch.num_params`, `BertArch.flops`, 2
FLOPs per multiply-add, one example of the task's typical length). Latency is
measured, the way HAT's `latency_dataset.py` and our `bench/` do it: build the
model (float32, random params drawn on the host: `timing_params`), jit the
deterministic (inference, dropout off) forward pass, compile it and run
`warmup` untimed calls, then time at least
`repeats` calls (and as many more as fit in `min_seconds`: a sub-millisecond
model gets hundreds, so one slow call cannot move the median) of random token
ids with a full attention mask, each ended by `jax.block_until_ready`, with
`time.perf_counter`; report the median and the 95th percentile in ms. Batch 1 gives the latency (what the constraints use),
batch `batch_size` the throughput.

On a CPU, `CostModel(threads=N)` measures in a child process pinned to N
CPUs (`nas.latency_child`); the search uses one thread. Batch-1 latency of a
sub-millisecond model with XLA's thread pool spread over the cores depends on
how fast idle cores wake up: on the 2-core development VM the same student
measured 0.63 ms in one run and 0.95 ms in another (the teacher 3.5 and 3.7),
while one thread gives the same figure to 1% whatever the other core does.
One thread per request is also how a CPU server runs batch-1 traffic.
`threads=0` measures in this process, on whatever threads JAX has (GPUs, TPUs).

Latency depends on the machine, so `CostModel` caches measurements in
`cache_root()/latency/<device_name()>.json`, keyed by everything that changes
the measurement (the full architecture, head, outputs, length, batch, threads).
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
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from distill.arch import BertArch, head_outputs
from distill.files import cache_root
from distill.model.bert import abstract_params, build_model
from nas.config import ConstraintError

log = logging.getLogger(__name__)


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


def timing_params(model, seed: int = 0) -> dict:
    """Parameters to time `model` with: its parameter shapes (traced, not compiled) filled on the host with
    N(0, 0.02) draws. Latency does not depend on the values (no NaNs, no denormals), and `init_params`
    compiles the model's initialiser and draws truncated normals on the device: 5.5-6.3 s of a 3-4-layer
    student's 8-10 s measurement on one thread (session 17)."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda a: jnp.asarray((rng.standard_normal(a.shape, np.float32) * 0.02).astype(a.dtype)),
                        abstract_params(model))


def measure_latency(arch: BertArch, head: str, num_labels: int, seq_len: int, batch_size: int, *,
                    repeats: int = 20, warmup: int = 3, min_seconds: float = 0.25, max_repeats: int = 2000,
                    params=None, quantize: str | None = None) -> tuple[float, float]:
    """(median, p95) wall time in ms of one jitted inference forward pass of a batch, over at least
    `repeats` timed calls and at least `min_seconds` of them (at most `max_repeats` calls). `quantize`
    (a `distill.export.scheme.SCHEMES` name): the model quantized that way, from the same weights."""
    if seq_len > arch.max_position_embeddings or min(seq_len, batch_size, repeats) < 1 or warmup < 0:
        raise ValueError(f"measure_latency: seq {seq_len}, batch {batch_size}, repeats {repeats}, warmup {warmup}")
    model = build_model(arch, head, num_labels)
    params = timing_params(model) if params is None else params
    if quantize:
        from distill.export.int8 import quantize_params
        from distill.export.scheme import scheme

        model, params, _ = quantize_params(arch, head, num_labels, params, scheme(quantize))

    def forward(p, ids, token_types, mask):
        return model.apply({"params": p}, ids, token_types, mask, deterministic=True)

    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(0, arch.vocab_size, (batch_size, seq_len)), jnp.int32)
    inputs = (params, ids, jnp.zeros_like(ids), jnp.ones_like(ids))
    compiled = jax.jit(forward).lower(*inputs).compile()
    for _ in range(warmup):
        jax.block_until_ready(compiled(*inputs))
    times = []
    while len(times) < repeats or (sum(times) < min_seconds * 1e3 and len(times) < max_repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(*inputs))
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times)), float(np.percentile(times, 95))


def measure_in_child(arch: BertArch, head: str, num_labels: int, seq_len: int, batches: list[int], *,
                     threads: int, repeats: int = 20, min_seconds: float = 0.25,
                     timeout: float = 900, quantize: str | None = None) -> dict[int, tuple[float, float]]:
    """`measure_latency` for each batch size in a child process on `threads` CPU threads; {batch: (median, p95)}."""
    return measure_many_in_child([arch], head, num_labels, seq_len, batches, threads=threads, repeats=repeats,
                                 min_seconds=min_seconds, timeout=timeout, quantize=quantize)[0]


def measure_many_in_child(archs: list[BertArch], head: str, num_labels: int, seq_len: int, batches: list[int], *,
                          threads: int, repeats: int = 20, min_seconds: float = 0.25, timeout: float = 900,
                          quantize: str | None = None,
                          arch_batches: list[list[int]] | None = None) -> list[dict[int, tuple[float, float]]]:
    """`measure_in_child` for several architectures in one child process (JAX starts once); one
    {batch: (median, p95)} per architecture. `arch_batches`: each architecture's own batch sizes instead of
    `batches`. `timeout` is per architecture."""
    request = {"archs": [a.to_dict() for a in archs], "head": head, "num_labels": num_labels, "seq_len": seq_len,
               "batches": list(batches), "threads": threads, "repeats": repeats, "min_seconds": min_seconds,
               "quantize": quantize}
    if arch_batches is not None:
        if len(arch_batches) != len(archs):
            raise ValueError(f"arch_batches: {len(arch_batches)} lists for {len(archs)} architectures")
        request["arch_batches"] = [list(b) for b in arch_batches]
    root = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-m", "nas.latency_child", json.dumps(request)], capture_output=True,
                          text=True, env=env, timeout=timeout * len(archs))
    lines = proc.stdout.strip().splitlines()
    if proc.returncode or not lines:
        tail = (proc.stderr or proc.stdout).strip()[-1500:]
        names = ", ".join(a.name for a in archs)
        raise RuntimeError(f"latency measurement of {names} failed (exit {proc.returncode}): {tail}")
    return [{int(b): (float(m), float(p)) for b, (m, p) in entry.items()} for entry in json.loads(lines[-1])]


def device_name() -> str:
    """`cpu-cpu-2cpu`-style name of this machine for the latency cache (file-name safe)."""
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    name = f"{jax.default_backend()}-{jax.devices()[0].device_kind}-{threads}cpu"
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


class CostModel:
    """Analytic params/FLOPs plus cached measured latency for one task setting; with `quantize` (a
    `distill.export.scheme.SCHEMES` name, e.g. 'int8'), the latency of the quantized models."""

    def __init__(self, head: str, num_labels: int, seq_len: int, *, batch_size: int = 32,
                 cache_path: os.PathLike | None = None, repeats: int = 20, min_seconds: float = 0.25,
                 threads: int = 0, quantize: str | None = None):
        if threads < 0:
            raise ConstraintError(f"latency threads must be >= 0, got {threads}")
        self.head, self.num_labels = head, head_outputs(head, num_labels)
        self.seq_len, self.batch_size, self.repeats = seq_len, batch_size, repeats
        self.min_seconds, self.quantize = min_seconds, quantize
        # A thread count only means something on a CPU; elsewhere measure in this process.
        self.threads = threads if jax.default_backend() == "cpu" else 0
        self.cache_path = Path(cache_path or cache_root() / "latency" / f"{device_name()}.json")
        self._entries = self._read()

    def key(self, arch: BertArch, batch: int) -> str:
        digest = hashlib.sha256(arch.to_json().encode()).hexdigest()[:12]
        threads = f"|t{self.threads}" if self.threads else ""
        quantized = f"|{self.quantize}" if self.quantize else ""
        return f"{arch.name}|{self.head}|{self.num_labels}|seq{self.seq_len}|b{batch}{threads}{quantized}|{digest}"

    def cost(self, arch: BertArch) -> Cost:
        self._measure([arch], [1, self.batch_size])
        return self._cost(arch)

    def costs(self, archs: list[BertArch]) -> list[Cost]:
        """`cost` of each of `archs`, those not cached measured together in one child process."""
        self._measure(archs, [1, self.batch_size])
        return [self._cost(a) for a in archs]

    def costs_beside(self, archs: list[BertArch], reference: BertArch) -> tuple[list[Cost], list[float]]:
        """`costs` of `archs`, and two batch-1 latencies (medians, ms) of `reference`, measured again (never
        cached) before and after them in the same child process (in this process when `threads` is 0). A
        speedup divides by one teacher latency, and on the 2-core Xeon the teacher's median moved between 9.1
        and 11.3 ms from one measurement to the next, once to 7.4 (its compute-bound layers share a core with
        whatever else runs on it), while a student's stayed within 5%: one measurement moved every speedup
        of a search by up to 20%. Each call adds two samples to take the median of."""
        if not self.threads:  # in this process: the students (measured when first read) between its two
            before = self._measure_here(reference, 1)[0]
            costs = [self._cost(a) for a in archs]
            return costs, [before, self._measure_here(reference, 1)[0]]
        again = self._measure(archs, [1, self.batch_size], reference=reference)
        return [self._cost(a) for a in archs], again

    def _cost(self, arch: BertArch) -> Cost:
        median, p95 = self._latency(arch, 1)
        batch_median, _ = self._latency(arch, self.batch_size)
        return Cost(
            arch.name, arch.num_params(self.head, self.num_labels),
            arch.flops(self.seq_len, self.head, self.num_labels),
            self.seq_len, latency_ms=median, latency_ms_p95=p95, batch_latency_ms=batch_median,
            throughput=self.batch_size * 1e3 / batch_median, batch_size=self.batch_size)

    def _measure(self, archs: list[BertArch], batches: list[int], reference: BertArch | None = None) -> list[float]:
        """Measure, in one child process, the batch sizes of `archs` not cached yet (threads > 0 only; else
        `_latency` measures them when asked); with a `reference`, its batch-1 median before and after them
        in the same child, returned."""
        def missing(arch):
            return [b for b in dict.fromkeys(batches) if self.key(arch, b) not in self._entries]

        if any(missing(a) for a in archs):
            self._entries.update(self._read())  # another process may have measured them
        if not self.threads:
            return []
        todo = list({a.to_json(): a for a in archs if missing(a)}.values())
        again = [reference, reference] if reference is not None else []
        if not todo and not again:
            return []
        sizes = sorted({b for a in todo for b in missing(a)})
        measured = measure_many_in_child(again[:1] + todo + again[1:], self.head, self.num_labels, self.seq_len,
                                         sizes, threads=self.threads, repeats=self.repeats,
                                         min_seconds=self.min_seconds, quantize=self.quantize,
                                         arch_batches=[[1]] * len(again[:1]) + [sizes] * len(todo)
                                         + [[1]] * len(again[1:]))
        if again:
            first, *measured, last = measured
            again = [first[1][0], last[1][0]]
        for arch, entry in zip(todo, measured):
            for b, (median, p95) in entry.items():
                self._write(self.key(arch, b), {"median_ms": median, "p95_ms": p95, "repeats": self.repeats,
                                                "min_seconds": self.min_seconds, "threads": self.threads,
                                                "time": time.time()})
        return again

    def _measure_here(self, arch: BertArch, batch: int) -> tuple[float, float]:
        return measure_latency(arch, self.head, self.num_labels, self.seq_len, batch, repeats=self.repeats,
                               min_seconds=self.min_seconds, quantize=self.quantize)

    def _latency(self, arch: BertArch, batch: int) -> tuple[float, float]:
        key = self.key(arch, batch)
        if key not in self._entries:
            self._entries.update(self._read())  # another process may have measured it
        if key not in self._entries:
            median, p95 = self._measure_here(arch, batch)
            self._write(key, {"median_ms": median, "p95_ms": p95, "repeats": self.repeats,
                              "min_seconds": self.min_seconds, "time": time.time()})
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



def latency_features(arch: BertArch, seq_len: int) -> np.ndarray:
    """What batch-1 latency grows with, one term per kind of work: a constant, a per-layer overhead, the
    projections (QKV and output: hidden x attention width), attention itself (length x attention width),
    the FFN (hidden x FFN size) and the per-token elementwise work (hidden, per layer), each summed over
    the layers (FLOP-like units of one token; HAT's `get_config_features` in spirit, but linear)."""
    s, h = seq_len, arch.hidden_size
    widths = np.asarray(arch.attention_widths, np.float64)
    ffn = np.asarray(arch.ffn_sizes, np.float64)
    return np.array([1.0, arch.num_layers, 4 * h * widths.sum() / 1e6, 2 * s * widths.sum() / 1e6,
                     2 * h * ffn.sum() / 1e6, arch.num_layers * h / 1e3])


@dataclasses.dataclass(frozen=True)
class LatencyPredictor:
    """Batch-1 latency from `latency_features`, fitted by non-negative least squares on measured candidates.

    `error` is the mean relative error of leave-one-out predictions on the measurements it was fitted on:
    how far a prediction for an unmeasured candidate may be off. The search screens candidates with it and
    measures every candidate that reaches the front."""

    seq_len: int
    coef: tuple[float, ...]
    error: float
    measured: int

    @classmethod
    def fit(cls, archs: list[BertArch], latencies_ms: list[float], seq_len: int) -> LatencyPredictor:
        from scipy.optimize import nnls

        if len(archs) < 3:
            raise ValueError(f"a latency predictor needs >= 3 measured candidates, got {len(archs)}")
        x = np.stack([latency_features(a, seq_len) for a in archs])
        y = np.asarray(latencies_ms, np.float64)
        coef, _ = nnls(x, y)
        errors = []
        for i in range(len(y)):  # leave one out
            keep = np.arange(len(y)) != i
            c, _ = nnls(x[keep], y[keep])
            errors.append(abs(float(x[i] @ c) - y[i]) / y[i])
        return cls(seq_len, tuple(float(c) for c in coef), float(np.mean(errors)), len(y))

    def predict(self, arch: BertArch) -> float:
        return max(float(latency_features(arch, self.seq_len) @ np.asarray(self.coef)), 1e-6)
