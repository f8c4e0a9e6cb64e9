"""The run configs of the training tools: one frozen dataclass per entry point, validated on construction.

`FinetuneConfig` is `bertnas finetune`'s, `DistillConfig` is `bertnas distill`'s
(and, with a validation slice and one trial's loop, every search trial's),
`SupernetConfig` is the supernet training's (`distill.run.supernet`). The
flags map onto them in one place (`distill.cli`); a distillation whose teacher
is not yet fine-tuned on the task fine-tunes it with `DistillConfig.teacher_stage()`,
derived from the same config, never rebuilt from flags. The nested configs
(`InitConfig`, `LossConfig`, `AugmentConfig`, `OptimizerConfig`, `LoopConfig`)
belong to the rooms that use them and are re-exported by `distill.run`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from distill.arch import DEFAULT_TEACHER
from distill.kd.augment import AugmentConfig
from distill.kd.init import InitConfig
from distill.kd.objective import LossConfig
from distill.kd.supernet import SubnetChoices
from distill.train.loop import LoopConfig
from distill.train.optim import OptimizerConfig
from tasks.errors import UserError
from tasks.userdata import DataSpec


def _check_limit(name: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise UserError(f"{name}: must be a positive number of examples (or unset for all), got {value!r}")


def _check_data(cfg: Any) -> None:
    """The fields both configs share: example limits and the evaluation batch."""
    _check_limit("train_limit", cfg.train_limit)
    _check_limit("dev_limit", cfg.dev_limit)
    if cfg.eval_batch_size < 1:
        raise UserError(f"eval_batch_size: must be >= 1, got {cfg.eval_batch_size}")


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """Fine-tune a pre-trained BERT on one task (`distill.run.finetuning.finetune`)."""

    task: str = "sst2"
    teacher: str = DEFAULT_TEACHER
    """Directory, alias ('minilm') or Hub name of the pre-trained BERT."""
    data_dir: str | None = None
    """Folder with the task's files; None: $GLUE_DIR/<TASK> (see tasks.datafiles)."""
    data: DataSpec = DataSpec()
    """The generic tasks' files or dataset and columns, any task's sequence length (`tasks.userdata`)."""
    optimizer: OptimizerConfig = OptimizerConfig(learning_rate=1e-4)
    loop: LoopConfig = LoopConfig(epochs=3)
    eval_batch_size: int = 128
    reinit_top_layers: int = 0
    """Re-initialise the top k encoder layers (and the pooler) before training."""
    train_limit: int | None = None
    """Use only the first N training examples (smoke runs, tests)."""
    dev_limit: int | None = None
    crf: bool = False
    """A linear-chain CRF over the tags (token-tagging tasks only)."""

    def __post_init__(self):
        _check_data(self)
        if self.reinit_top_layers < 0:
            raise UserError(f"reinit_top_layers: must be >= 0, got {self.reinit_top_layers}")

    def cache_settings(self) -> dict[str, Any]:
        """The settings that change the result (not where data or output live, nor how often it is saved
        or logged); the key of the fine-tuned-teacher cache. Spelled as before the loop settings were
        nested, so teachers cached then still hit."""
        loop = self.loop
        d = {
            "task": self.task, "epochs": loop.epochs, "max_steps": loop.max_steps, "batch_size": loop.batch_size,
            "optimizer": self.optimizer.key_settings(), "reinit_top_layers": self.reinit_top_layers,
            "eval_every": loop.eval_every, "patience": loop.patience, "train_limit": self.train_limit,
            "dev_limit": self.dev_limit, "seed": loop.seed,
        }
        if self.crf:  # the keys of teachers cached before the flag existed stay valid
            d["crf"] = True
        if loop.precision != "fp32":  # likewise
            d["precision"] = loop.precision
        if not loop.attention_dropout:  # likewise
            d["attention_dropout"] = False
        d.update(loop.packing_key())  # likewise
        if self.data.cache_settings():  # likewise (the data's contents are keyed apart, by fingerprint)
            d["data"] = self.data.cache_settings()
        return d


TEACHER_OUTPUTS = ("auto", "cached", "online")


@dataclasses.dataclass(frozen=True)
class DistillConfig:
    """Distil a fine-tuned teacher into a student on one task (`distill.run.distillation.distill`)."""

    task: str = "sst2"
    teacher: str = DEFAULT_TEACHER
    """A teacher fine-tuned on the task (directory), or a pre-trained one (fine-tuned first)."""
    student: str = "4L-312"
    """Architecture name ('4L-312', '6L-384-H6-F1536') or a JSON file (BertArch or an exported config.json)."""
    data_dir: str | None = None
    data: DataSpec = DataSpec()
    """The generic tasks' files or dataset and columns, any task's sequence length (`tasks.userdata`)."""
    init: InitConfig = InitConfig()
    loss: LossConfig = LossConfig()
    augment: AugmentConfig = AugmentConfig()
    optimizer: OptimizerConfig = OptimizerConfig(learning_rate=2e-4)
    loop: LoopConfig = LoopConfig(epochs=3)
    eval_batch_size: int = 128
    train_limit: int | None = None
    """Use only the first N training examples (smoke runs, tests)."""
    dev_limit: int | None = None
    validation: int = 0
    """Hold out this many training examples (a fixed seeded draw) and evaluate and select on them
    instead of dev, which then stays unseen (architecture search does this)."""
    teacher_epochs: int = 2
    """Epochs of teacher fine-tuning when the teacher is not yet fine-tuned on the task."""
    crf: bool | None = None
    """A linear-chain CRF on the student (tagging only); None: when the teacher has one. A teacher
    fine-tuned here gets one when this is True."""
    hf_layout: bool = False
    """Export a shared-layer student with every layer's weights written out (transformers' plain BERT
    layout, which it loads) instead of once per group; nothing else changes, so not part of the run key."""
    teacher_outputs: str = "auto"
    """How the losses get the teacher's outputs: 'cached' (it labels the training set once, on disk under
    $BERTNAS_CACHE for later runs too), 'online' (it runs forward in every step) or 'auto': cached, unless a
    loss needs attention scores (too big to cache) or the hidden states it needs would exceed
    `distill.run.distillation.ONLINE_ABOVE` bytes. Not part of the run key: the objective is the same."""

    def __post_init__(self):
        _check_data(self)
        if self.teacher_outputs not in TEACHER_OUTPUTS:
            raise UserError(f"teacher_outputs (--teacher-outputs): {self.teacher_outputs!r}; valid: "
                            f"{', '.join(TEACHER_OUTPUTS)}")
        if self.teacher_outputs == "cached" and self.loss.attention_weight:
            raise UserError("teacher_outputs (--teacher-outputs): 'cached' cannot hold attention scores "
                            "(--attention-weight > 0); use online or auto")
        if isinstance(self.validation, bool) or not isinstance(self.validation, int) or self.validation < 0:
            raise UserError(f"validation: must be >= 0 examples, got {self.validation!r}")
        if self.teacher_epochs < 1:
            raise UserError(f"teacher_epochs: must be >= 1, got {self.teacher_epochs}")
        if self.loop.grad_accum > 1 and self.loss.intermediate:
            raise UserError("--grad-accum: takes prediction-layer distillation only (logits, hard labels), not the "
                            "hidden, attention or embedding terms")

    def teacher_stage(self) -> FinetuneConfig:
        """The teacher fine-tuning this run does first when its teacher is not fine-tuned on the task:
        the same task, data and seed, `teacher_epochs` epochs, a CRF when this run asks for one."""
        return FinetuneConfig(
            task=self.task, teacher=self.teacher, data_dir=self.data_dir, data=self.data,
            loop=self.loop.stage(epochs=self.teacher_epochs),
            train_limit=self.train_limit, dev_limit=self.dev_limit, crf=bool(self.crf),
        )


DEFAULT_CHOICES = SubnetChoices(
    layers=(1, 2, 3, 4), hidden=(128, 192, 256, 320, 384), heads=(2, 4, 6, 8, 12), ffn=(256, 512, 768, 1024, 1536)
)
"""`bertnas supernet`'s default space: 1-4 layers, hidden 128-384, per-layer heads 2-12 and FFN 256-1536, which a
6L-384 MiniLM supernet represents (a search trains its own supernet on its `--space`)."""


@dataclasses.dataclass(frozen=True)
class SupernetConfig:
    """Train a weight-sharing supernet on one task by the sandwich rule (`distill.run.supernet`)."""

    task: str = "sst2"
    teacher: str = DEFAULT_TEACHER
    """A teacher fine-tuned on the task, or a pre-trained one (fine-tuned first); the supernet starts as it."""
    data_dir: str | None = None
    data: DataSpec = DataSpec()
    choices: SubnetChoices = DEFAULT_CHOICES
    num_sampled: int = 2
    """Random sub-networks per step, besides the largest and the smallest."""
    loss: LossConfig = LossConfig(hard_weight=0.5)
    """Each sub-network's loss against the teacher's cached outputs (prediction terms only)."""
    augment: AugmentConfig = AugmentConfig()
    optimizer: OptimizerConfig = OptimizerConfig(learning_rate=1e-4)
    loop: LoopConfig = LoopConfig(epochs=1)
    importance_batches: int = 8
    """Batches of task data that rank heads, FFN neurons and hidden dims for the rewiring."""
    eval_batch_size: int = 128
    train_limit: int | None = None
    dev_limit: int | None = None
    validation: int = 0
    """Hold out this many training examples and evaluate on them instead of dev (as a search does)."""
    teacher_epochs: int = 2

    def __post_init__(self):
        _check_data(self)
        if isinstance(self.num_sampled, bool) or not isinstance(self.num_sampled, int) or self.num_sampled < 0:
            raise UserError(f"num_sampled: must be an integer >= 0, got {self.num_sampled!r}")
        if self.loss.intermediate:
            raise UserError("loss: a supernet distils predictions only (its sub-networks differ in hidden size); "
                            "set the hidden, attention and embedding weights to 0")
        if self.loop.grad_accum != 1:
            raise UserError("--grad-accum: the supernet's sandwich step already runs one sub-network at a time; "
                            "lower --batch-size instead")
        InitConfig(importance_batches=self.importance_batches)  # checks it

    def data_stage(self) -> DistillConfig:
        """The teacher and data stages this run shares with a distillation (`distill.run.data`): the same
        task, teacher, data, limits, validation slice, augmentation and seed."""
        return DistillConfig(
            task=self.task, teacher=self.teacher, data_dir=self.data_dir, data=self.data, augment=self.augment,
            init=InitConfig(importance_batches=self.importance_batches),
            loop=self.loop.stage(),
            eval_batch_size=self.eval_batch_size, train_limit=self.train_limit, dev_limit=self.dev_limit,
            validation=self.validation, teacher_epochs=self.teacher_epochs,
        )

    def cache_settings(self) -> dict[str, Any]:
        """What changes the trained supernet (not where data or output live, nor logging and saving)."""
        loop = self.loop
        return {
            "task": self.task, "choices": self.choices, "num_sampled": self.num_sampled, "loss": self.loss,
            "augment": self.augment, "optimizer": self.optimizer.key_settings(), "epochs": loop.epochs,
            "max_steps": loop.max_steps, "batch_size": loop.batch_size, "seed": loop.seed,
            "eval_every": loop.eval_every,
            "patience": loop.patience, "importance_batches": self.importance_batches,
            "train_limit": self.train_limit, "dev_limit": self.dev_limit, "validation": self.validation,
            "teacher_epochs": self.teacher_epochs,
            **({"precision": loop.precision} if loop.precision != "fp32" else {}),  # earlier keys stay valid
            **({"attention_dropout": False} if not loop.attention_dropout else {}),  # likewise
            **loop.packing_key(),  # likewise
            **({"data": self.data.cache_settings()} if self.data.cache_settings() else {}),  # likewise
        }
