"""The distillation objective: which losses, with which weights, on which layers.

`LossConfig` is data (names and weights, no functions). `distill_loss`
combines, for one batch, the terms the config switches on:

  logits     prediction layer: soft cross-entropy / KL with temperature
             (MSE for regression), per token for tagging, per position for span
  hard       the task loss on the gold labels (original examples only); a CRF
             student's is its negative CRF log-likelihood (`losses.hard_loss`),
             while `logits` stays on the emissions
  hidden     MSE between each student layer's output and its mapped teacher
             layer's output, through a learned projection when widths differ
  attention  MSE between pre-softmax attention scores (heads matched, or
             averaged when the counts differ)
  embedding  MSE between the embedding-layer outputs (projected likewise)

Each term is returned unweighted as (sum, count) so it can be logged; the
total is the weighted sum of the means. With `two_stage` (TinyBERT), the first
`intermediate_ratio` of the steps trains the intermediate terms only and the
rest the prediction terms only.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from distill.kd.losses import (
    LOGIT_LOSSES,
    attention_mse,
    hard_loss,
    hidden_mse,
    pair_mask,
    prediction_distill_loss,
    token_mask,
)
from distill.model.bert import BertOutput
from distill.model.crf import CrfParams
from distill.model.infer import model_inputs
from tasks.errors import UserError

PROJ = "distill_proj"
"""Top-level key of the student's train-time parameters holding the hidden projection (never exported)."""
STAGES = ("all", "intermediate", "prediction")


@dataclasses.dataclass(frozen=True)
class LossConfig:
    logits: str = "ce"
    """Prediction-layer loss: 'ce' (soft cross-entropy), 'kl' or 'mse'; regression always uses 'mse'."""
    logit_weight: float = 1.0
    temperature: float = 1.0
    hard_weight: float = 0.0
    """Weight of the task loss on gold labels (augmented copies carry none)."""
    hidden_weight: float = 0.0
    attention_weight: float = 0.0
    embedding_weight: float = 0.0
    layer_map: str | tuple[int, ...] | None = None
    """Teacher layer (0-based) matched by each student layer: 'uniform', 'first', 'last', explicit,
    or None: the layers the student was initialised from (uniform for a random init)."""
    two_stage: bool = False
    """TinyBERT's schedule: intermediate terms first, then prediction terms."""
    intermediate_ratio: float = 0.5
    """With two_stage: the fraction of the steps spent on intermediate terms."""

    def __post_init__(self):
        if self.logits not in LOGIT_LOSSES:
            raise UserError(f"loss.logits: unknown {self.logits!r}; valid: {', '.join(sorted(LOGIT_LOSSES))}")
        for name in ("logit_weight", "hard_weight", "hidden_weight", "attention_weight", "embedding_weight"):
            if not getattr(self, name) >= 0:
                raise UserError(f"loss.{name}: must be >= 0, got {getattr(self, name)}")
        if not self.temperature > 0:
            raise UserError(f"loss.temperature: must be > 0, got {self.temperature}")
        if self.logit_weight + self.hard_weight == 0:
            raise UserError("loss: logit_weight and hard_weight are both 0; nothing trains the prediction layer")
        if self.two_stage and not self.intermediate:
            raise UserError("loss.two_stage: needs an intermediate term (hidden/attention/embedding weight > 0)")
        if not 0 < self.intermediate_ratio < 1:
            raise UserError(f"loss.intermediate_ratio: must be in (0, 1), got {self.intermediate_ratio}")
        if isinstance(self.layer_map, list):
            object.__setattr__(self, "layer_map", tuple(self.layer_map))

    @property
    def intermediate(self) -> bool:
        return bool(self.hidden_weight or self.attention_weight or self.embedding_weight)

    def prediction_start(self, total: int) -> int:
        """The first step of the prediction stage (0 without two stages)."""
        return int(self.intermediate_ratio * total) if self.two_stage else 0

    def stage_at(self, step: int, total: int) -> str:
        if not self.two_stage:
            return "all"
        return "intermediate" if step < self.prediction_start(total) else "prediction"

    def teacher_hidden_layers(self, layer_map: tuple[int, ...]) -> tuple[int, ...]:
        """Teacher hidden-state indices (0 = embeddings, i = output of layer i-1) the losses read."""
        wanted = set()
        if self.embedding_weight:
            wanted.add(0)
        if self.hidden_weight:
            wanted.update(t + 1 for t in layer_map)
        return tuple(sorted(wanted))


@struct.dataclass
class TeacherOutputs:
    """What the losses read from the teacher for one batch.

    logits: as the model returns them; hidden: the hidden states listed in
    `LossConfig.teacher_hidden_layers`, stacked (K, B, T, H) in that order
    (None when no loss needs them); attention: per student layer, the mapped
    teacher layer's scores (B, N, T, T) (None unless attention is distilled).
    """

    logits: jax.Array
    hidden: jax.Array | None = None
    attention: tuple[jax.Array, ...] | None = None


def teacher_forward(model, params, batch: dict, cfg: LossConfig, layer_map: tuple[int, ...]) -> TeacherOutputs:
    """Run the teacher (no dropout, no gradient) and keep what the losses need."""
    hidden_idx = cfg.teacher_hidden_layers(layer_map)
    out = model.apply(
        {"params": params},
        **model_inputs(batch),
        output_hidden_states=bool(hidden_idx),
        output_attentions=bool(cfg.attention_weight),
    )
    hidden = jnp.stack([out.hidden_states[i] for i in hidden_idx]) if hidden_idx else None
    attention = tuple(out.attention_scores[t] for t in layer_map) if cfg.attention_weight else None
    return jax.lax.stop_gradient(TeacherOutputs(out.logits, hidden, attention))


def init_projection(student_hidden: int, teacher_hidden: int, cfg: LossConfig, start=None) -> dict[str, Any] | None:
    """The learned student-to-teacher width projection, when an intermediate hidden loss needs one.

    `start` (student, teacher) is its initial kernel, e.g. the transpose of
    the init's hidden map (`init.hidden_map`); default: the identity on the
    first dimensions.
    """
    if student_hidden == teacher_hidden or not (cfg.hidden_weight or cfg.embedding_weight):
        return None
    kernel = jnp.eye(student_hidden, teacher_hidden, dtype=jnp.float32) if start is None else jnp.asarray(start)
    if kernel.shape != (student_hidden, teacher_hidden):
        raise ValueError(f"projection start has shape {kernel.shape}, expected {(student_hidden, teacher_hidden)}")
    return {"kernel": kernel.astype(jnp.float32), "bias": jnp.zeros((teacher_hidden,), jnp.float32)}


def distill_loss(
    proj: dict | None,
    student,
    teacher: TeacherOutputs,
    batch: dict,
    *,
    kind: str,
    cfg: LossConfig,
    layer_map: tuple[int, ...],
    stage: str = "all",
    tags: tuple[str, ...] = (),
    norms: dict[str, jax.Array] | None = None,
) -> tuple[jax.Array, dict[str, tuple[jax.Array, jax.Array]]]:
    """(weighted total, {term: (sum, count)}) for a student output against the teacher's.

    `tags`: the task's IOB2 tags, which constrain a CRF student's hard loss. `norms`: divide each term's
    sum by this count instead of its own (a micro-batch's share of a whole batch's mean: `term_counts`).
    """
    if stage not in STAGES:
        raise ValueError(f"stage {stage!r}; valid: {STAGES}")
    terms: dict[str, tuple[jax.Array, jax.Array]] = {}
    weights: dict[str, float] = {}
    prediction = stage in ("all", "prediction")
    intermediate = stage in ("all", "intermediate")
    if prediction and cfg.logit_weight:
        name = "mse" if kind == "regression" else cfg.logits
        terms["logits"] = prediction_distill_loss(kind, name, student.logits, teacher.logits, batch, cfg.temperature)
        weights["logits"] = cfg.logit_weight
    if prediction and cfg.hard_weight:
        hard = dict(batch, weights=batch["weights"] * batch.get("original", 1.0))
        terms["hard"] = hard_loss(kind, student, hard, tags)
        weights["hard"] = cfg.hard_weight
    tokens = token_mask(batch)
    project = (lambda h: h @ proj["kernel"] + proj["bias"]) if proj is not None else (lambda h: h)  # noqa: E731
    hidden_idx = cfg.teacher_hidden_layers(layer_map)
    if intermediate and cfg.embedding_weight:
        terms["embedding"] = hidden_mse(project(student.hidden_states[0]), teacher.hidden[hidden_idx.index(0)], tokens)
        weights["embedding"] = cfg.embedding_weight
    if intermediate and cfg.hidden_weight:
        sums = [
            hidden_mse(project(student.hidden_states[j + 1]), teacher.hidden[hidden_idx.index(t + 1)], tokens)
            for j, t in enumerate(layer_map)
        ]
        terms["hidden"] = (sum(s for s, _ in sums), sum(c for _, c in sums))
        weights["hidden"] = cfg.hidden_weight
    if intermediate and cfg.attention_weight:
        pairs = pair_mask(batch)
        sums = [
            attention_mse(student.attention_scores[j], teacher.attention[j], tokens, pairs)
            for j in range(len(layer_map))
        ]
        terms["attention"] = (sum(s for s, _ in sums), sum(c for _, c in sums))
        weights["attention"] = cfg.attention_weight
    counts = {k: c for k, (_, c) in terms.items()} if norms is None else norms
    total = sum(weights[k] * s / jnp.maximum(counts[k], 1.0) for k, (s, _) in terms.items())
    return jnp.asarray(total, jnp.float32), terms


def term_counts(teacher: TeacherOutputs, batch: dict, *, kind: str, cfg: LossConfig, stage: str = "all",
                tags: tuple[str, ...] = (), crf: bool = False) -> dict[str, jax.Array]:
    """Each prediction-layer term's count over `batch` (what `distill_loss` divides its sum by), without
    running the student: the counts depend on the batch alone, so zero logits of the teacher's shape stand
    in for the student's. Intermediate terms are not covered (a ValueError)."""
    if cfg.intermediate:
        raise ValueError("term_counts: prediction-layer terms only")
    zeros = jnp.zeros_like(teacher.logits)
    k = zeros.shape[-1]
    stand_in = BertOutput(logits=zeros, sequence_output=zeros,
                          crf=CrfParams(jnp.zeros((k, k)), jnp.zeros((k,)), jnp.zeros((k,))) if crf else None)
    _, terms = distill_loss(None, stand_in, teacher, batch, kind=kind, cfg=cfg, layer_map=(), stage=stage, tags=tags)
    return {name: c for name, (_, c) in terms.items()}
