"""The search's settings: one frozen dataclass, written to the output directory.

`SearchConfig` names everything a search depends on (task, teacher, space,
budget, per-trial training, constraints, Ray resources); `smoke(cfg)` turns
any config into the end-to-end smoke run (a small data slice, 4 tiny trials).
"""

from __future__ import annotations

import dataclasses
import math

from distill.arch import DEFAULT_TEACHER, PRECISIONS
from distill.export.scheme import scheme
from tasks.errors import UserError
from tasks.packing import packing_setting
from tasks.userdata import DataSpec


class ConstraintError(UserError, ValueError):
    """An invalid constraint (a bad command-line value)."""


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

    def violations(self, cost) -> list[str]:
        """`cost`: a `nas.cost.Cost`."""
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


ALGORITHMS = ("tpe", "nsga2", "random")
SCHEDULERS = ("asha", "none")
STRATEGIES = ("trials", "supernet")
"""'trials': each candidate distilled for a few hundred steps (`nas.trial`); 'supernet': candidates scored
with the weights of one supernet trained for the task (`nas.oneshot`)."""


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    task: str = "sst2"
    teacher: str = DEFAULT_TEACHER
    """A teacher fine-tuned on the task, or a pre-trained one (fine-tuned first, through the cache)."""
    data_dir: str | None = None
    data: DataSpec = DataSpec()
    """The generic tasks' files or dataset and columns, any task's sequence length (`tasks.userdata`)."""
    space: str = "default"
    """A preset name (see `nas.space.PRESETS`) or a .json / .yaml file."""
    strategy: str = "supernet"
    num_samples: int | None = None
    """Candidates to try (the time budget may end the search earlier); None: 240 with the supernet
    strategy, 24 trials."""
    supernet_steps: int = 20000
    """The supernet strategy: at most this many sandwich steps of supernet training (the budget plans
    fewer, `nas.oneshot.plan_supernet`)."""
    latency_design: int = 12
    """The supernet strategy: sub-networks measured to fit the latency predictor that screens candidates."""
    targets: tuple[float, ...] = (3.0, 5.0, 10.0)
    """The supernet strategy: speedups over the teacher; the best candidate at or above each is trained further."""
    budget_minutes: float = 60.0
    """Wall-clock bound of the whole run, teacher fine-tuning included."""
    trial_steps: int = 600
    """Distillation steps of a candidate that is not stopped early."""
    evals_per_trial: int = 3
    """Validation evaluations per candidate: the early-stopping scheduler's rungs."""
    batch_size: int = 32
    validation: int = 2000
    """Training examples held out to compare candidates; dev only reports the final front."""
    validation_split: str = "whole"
    """How the validation slice is drawn: 'whole' (`tasks.holdout`: whole examples, their repeats and parts
    out of training), the only way; a saved search without the field drew a plain random slice, so its rows
    and supernet are not comparable and `--resume` refuses it."""
    augment: int = 0
    """Augmented copies per training example for every trial (labelled once, through the cache)."""
    constraints: Constraints = Constraints()
    algorithm: str = "tpe"
    """Optuna sampler: multi-objective TPE, NSGA-II, or random."""
    scheduler: str = "asha"
    reduction_factor: int = 3
    address: str | None = None
    """Ray cluster address ('auto', 'ray://...'); None starts a local Ray."""
    cpus_per_trial: float = 0
    """0: all the CPUs of a node (one trial at a time on a laptop)."""
    gpus_per_trial: float = 0
    """GPUs of each trial: a fraction (0.25: four trials share a GPU, each with that share of its memory,
    `trial_device_env`) or a whole number (2: a trial's data-parallel mesh over two GPUs)."""
    tpus_per_trial: int = 0
    """TPU chips of each trial (Ray's "TPU" resource on a TPU VM): the trial's mesh over them."""
    storage_path: str | None = None
    """Where Ray keeps trial results and checkpoints (shared FS or cloud URI); default OUTPUT/ray."""
    optuna_storage: str | None = None
    """An Optuna storage URL (sqlite:///optuna.db, a database URL) that also holds the study, so that
    optuna-dashboard can watch it; default in memory (Tune's own state still resumes it)."""
    latency_threads: int = 1
    """CPU threads the latency of a candidate and of the teacher is measured on (0: all, in the trial's
    process); one thread gives stable figures and is how a CPU server runs batch-1 requests."""
    target_speedup: float = 5.0
    """The final student: the most accurate candidate at least this much faster than the teacher."""
    final_steps: int = 40000
    """Training steps of the final student, fewer if the budget ends first (0: no final training)."""
    final_augment: int = 4
    """Augmented copies per training example for the final student."""
    final_share: float = 0.45
    """Share of the budget left after the teacher and labelling that is kept for the final student."""
    final_lr: float | None = 5e-5
    """The supernet strategy's finals: their learning rate (None: the space's first choice, as the trials
    strategy's final takes its trial's). They continue from trained supernet weights, and lower rates scored
    higher on SST-2 dev: 5x final, same steps, 5e-4 84.63, 2e-4 85.89, 1e-4 86.93, 5e-5 87.39 (session 15)."""
    local_rounds: int = 3
    """The supernet strategy's local search around each target (`nas.local`): rounds of single mutations
    of the best candidates near it (0: none)."""
    teacher_epochs: int = 2
    train_limit: int | None = None
    dev_limit: int | None = None
    seed: int = 0
    precision: str = "fp32"
    """Train-step compute of the teacher fine-tuning, supernet, trials and finals (`LoopConfig.precision`)."""
    attention_dropout: bool = True
    """Attention-probability dropout in those train steps (`LoopConfig.attention_dropout`; the CLI's
    `--attention-dropout auto` turns it off on GPUs and TPUs)."""
    packing: str = "off"
    """Packed training batches for sentence-level tasks in those train steps (`LoopConfig.packing`: 'on',
    'off', or 'auto': where packing saves compute; the CLI's `--packing auto` gives 'auto' where JAX runs on
    one CPU device). True and False (searches saved before 'auto') read as 'on' and 'off'."""
    quantize: str | None = None
    """'int8': the front's students also get int8 copies (`distill.export.int8`), rows of their own on the front."""
    crf: bool | None = None
    """Tagging: students with a linear-chain CRF; None: when the teacher has one (`DistillConfig.crf`)."""
    export_onnx: bool = False
    """The front's float students also as ONNX (OUTPUT/export/<rank>-<arch>-onnx, and with `quantize` ONNX
    Runtime's int8 variant), each scored on dev with onnxruntime (`nas.exports.onnx_copies`)."""
    hf_layout: bool = False
    """Shared-layer students exported with every layer stored, for transformers (`DistillConfig.hf_layout`)."""
    push_to_hub: str | None = None
    """A Hugging Face Hub model repository the exported front (OUTPUT/export) is uploaded to at the end."""

    def __post_init__(self):
        if self.algorithm not in ALGORITHMS:
            raise UserError(f"algorithm: {self.algorithm!r} is not one of {list(ALGORITHMS)}")
        if self.scheduler not in SCHEDULERS:
            raise UserError(f"scheduler: {self.scheduler!r} is not one of {list(SCHEDULERS)}")
        if self.strategy not in STRATEGIES:
            raise UserError(f"strategy: {self.strategy!r} is not one of {list(STRATEGIES)}")
        object.__setattr__(self, "targets", tuple(float(t) for t in self.targets))
        if self.num_samples is None:
            object.__setattr__(self, "num_samples", 240 if self.strategy == "supernet" else 24)
        if not self.targets or not all(math.isfinite(t) and t > 0 for t in self.targets):
            raise UserError(f"targets: need speedups > 0, got {list(self.targets)}")
        if self.supernet_steps < 1 or self.latency_design < 3:
            raise UserError("supernet_steps: must be >= 1; latency_design: must be >= 3")
        for name in ("num_samples", "trial_steps", "evals_per_trial", "batch_size", "teacher_epochs"):
            if getattr(self, name) < 1:
                raise UserError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.evals_per_trial > self.trial_steps:
            raise UserError(f"evals_per_trial: {self.evals_per_trial} evaluations need >= as many trial_steps")
        if self.budget_minutes <= 0:
            raise UserError(f"budget_minutes: must be > 0, got {self.budget_minutes}")
        if self.validation_split != "whole":
            raise UserError(f"validation_split: only 'whole' (tasks.holdout), got {self.validation_split!r}")
        if self.validation < 1:
            raise UserError("validation: the search needs held-out training examples (>= 1) to compare candidates")
        if self.cpus_per_trial < 0 or self.gpus_per_trial < 0 or self.tpus_per_trial < 0:
            raise UserError("cpus_per_trial / gpus_per_trial / tpus_per_trial: must be >= 0")
        if self.gpus_per_trial > 1 and self.gpus_per_trial != int(self.gpus_per_trial):
            raise UserError(f"gpus_per_trial: a fraction below 1 (trials share a GPU) or a whole number of GPUs, "
                            f"got {self.gpus_per_trial}")
        if self.gpus_per_trial and self.tpus_per_trial:
            raise UserError("gpus_per_trial / tpus_per_trial: a trial runs on GPUs or on TPU chips, not both")
        if self.reduction_factor < 2:
            raise UserError(f"reduction_factor: must be >= 2, got {self.reduction_factor}")
        if self.final_steps < 0 or self.final_augment < 0:
            raise UserError("final_steps / final_augment: must be >= 0")
        if self.final_lr is not None and not self.final_lr > 0:
            raise UserError(f"final_lr: must be > 0, got {self.final_lr}")
        if self.local_rounds < 0:
            raise UserError(f"local_rounds: must be >= 0, got {self.local_rounds}")
        if not 0 <= self.final_share < 1:
            raise UserError(f"final_share: must be in [0, 1), got {self.final_share}")
        if self.target_speedup <= 0:
            raise UserError(f"target_speedup: must be > 0, got {self.target_speedup}")
        if self.latency_threads < 0:
            raise UserError(f"latency_threads: must be >= 0, got {self.latency_threads}")
        if self.augment < 0:
            raise UserError(f"augment: must be >= 0, got {self.augment}")
        for name in ("train_limit", "dev_limit"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UserError(f"{name}: must be a positive number of examples (or unset for all), got {value}")
        if self.precision not in PRECISIONS:
            raise UserError(f"precision: {self.precision!r} is not one of {list(PRECISIONS)}")
        object.__setattr__(self, "packing", packing_setting(self.packing))
        if self.quantize is not None:
            scheme(self.quantize)  # a UserError naming the valid schemes

    @property
    def eval_every(self) -> int:
        return max(1, self.trial_steps // self.evals_per_trial)


def smoke(cfg: SearchConfig) -> SearchConfig:
    """The smoke run: teacher fine-tuned on a small slice, 4 tiny candidates, a few steps each (with the
    supernet strategy: a few supernet steps, 16 candidates, 4 measured for the latency predictor)."""
    return dataclasses.replace(
        cfg,
        supernet_steps=24,
        latency_design=4,
        targets=(1.5, 3.0),
        space=cfg.space if cfg.space != "default" else "smoke",
        num_samples=16 if cfg.strategy == "supernet" else 4,
        trial_steps=24,
        evals_per_trial=2,
        validation=64,
        train_limit=448,
        dev_limit=128,
        teacher_epochs=1,
        budget_minutes=min(cfg.budget_minutes, 10.0),
        augment=0,
        final_steps=48,
        final_augment=1,
        final_lr=None,  # the smoke space's own rate: its tiny finals train from a briefly trained supernet
        local_rounds=1,
    )
