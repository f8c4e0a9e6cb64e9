"""Initialise a student's parameters from a (fine-tuned) teacher's.

A student layer copies a teacher layer (`teacher_layers`: a uniform,
TinyBERT-style map, the first or last layers, or an explicit list) and keeps
the teacher's most useful parts of it:

  heads   the top-N heads of the layer, by first-order Taylor importance on
          task data (`importance_scores`, Michel et al. 2019), by weight norm
          (`weight_scores`) or simply the first N; kept heads stay in order.
          A smaller head size keeps the head's most useful dimensions: one
          index set for q and k, one for v and the output projection.
  ffn     the top-F neurons of the layer, scored the same ways.
  hidden  'slice' keeps the top hidden dimensions (by mean |activation| or
          LayerNorm scale); 'project' maps every hidden axis onto the top
          principal directions of the teacher's word embeddings.

Dropping a part that contributes nothing (a dead head, neuron or head
dimension) is exact: the student then computes what the teacher does.

A student whose layers share parameters (`BertArch.layer_groups`) initialises
each group from the teacher layer mapped to the group's first layer, so the
group starts as an exact (shrunk) teacher layer. Not the mean of its layers'
teacher layers: heads and FFN neurons are unordered, so head n (neuron j) of
one teacher layer has nothing to do with head n (neuron j) of another, and an
average mixes unrelated units. Measured before any training (SST-2 dev, the
fine-tuned 6-layer MiniLM teacher, 4L-384 with groups 0,0,1,1, uniform map
1,2,4,5): accuracy 76.1% from the first layers' teacher layers (1, 4), 74.5%
from the means, 72.9% from the last layers' (2, 5); unshared 80.8%.

The surgery runs in numpy; the result is a plain nested dict of float32 numpy
arrays with exactly the shapes of `build_model(student, head, num_labels)`.
Parameters the teacher cannot supply (a task head for another label set) come
from the student's random init and are logged.

Scores have the structure `{"heads": [(N_i,) per teacher layer], "ffn": [(F_i,) ...], "hidden": (h,)}`.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable, Iterable

import jax
import numpy as np
from flax import traverse_util

from distill.arch import ArchError, BertArch, has_pooler
from distill.kd.importance import Scores, as_f64, importance_scores, layer_params, weight_scores
from distill.kd.layers import parse_layers, teacher_layers
from distill.kd.losses import task_loss
from distill.model.bert import BertForTask, abstract_params, build_model, init_params
from tasks.errors import UserError

log = logging.getLogger(__name__)

METHODS = ("teacher", "random")
SELECTIONS = ("importance", "norm", "first")
HIDDEN_METHODS = ("slice", "project")
NORMS = ("LayerNorm", "attention_norm", "output_norm")


@dataclasses.dataclass(frozen=True)
class InitConfig:
    """How to initialise a student.

    method: 'teacher' (copy and shrink the teacher) or 'random'.
    layers: 'uniform', 'first', 'last', or the 0-based teacher layer of each
      student layer (a tuple, or a string such as '0,2,5'; repeats allowed).
    heads / ffn: which heads / FFN neurons to keep: 'importance' (gradient x
      weight on task data), 'norm' (weight norms) or 'first'.
    hidden: 'slice' (keep the top hidden dimensions) or 'project' (PCA of the
      teacher's word embeddings).
    importance_batches: batches of task data used for importance scores.
    source: a supernet's model directory (`bertnas supernet`) to take the
      student from instead of the teacher: its units are ordered already, so
      the student is the exact slice (`distill.kd.supernet.student_from_supernet`)
      of the supernet layers `layers` maps to; heads, ffn and hidden are then unused.
    """

    method: str = "teacher"
    layers: str | tuple[int, ...] = "uniform"
    heads: str = "importance"
    ffn: str = "importance"
    hidden: str = "slice"
    importance_batches: int = 8
    source: str | None = None

    def __post_init__(self):
        _choice("method", self.method, METHODS)
        if self.source is not None and self.method != "teacher":
            raise UserError(f"init source {self.source}: a student taken from a supernet needs method 'teacher'")
        object.__setattr__(self, "layers", parse_layers(self.layers))
        _choice("heads", self.heads, SELECTIONS)
        _choice("ffn", self.ffn, SELECTIONS)
        _choice("hidden", self.hidden, HIDDEN_METHODS)
        n = self.importance_batches
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise UserError(f"importance_batches: must be a positive integer, got {n!r}")

    @property
    def needs_importance(self) -> bool:
        """Whether `init_student` wants `importance_scores` (else weight norms suffice)."""
        return self.method == "teacher" and self.source is None and "importance" in (self.heads, self.ffn)


def _choice(field: str, value: Any, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise UserError(f"{field}: {value!r} is not valid; valid: {', '.join(valid)}")


def check_compatible(student: BertArch, teacher: BertArch, cfg: InitConfig = InitConfig()) -> None:
    """Raise `ArchError` naming the field when `cfg` cannot take `student` out of `teacher`."""
    if cfg.method != "teacher":
        return
    for field in ("vocab_size", "type_vocab_size"):
        s, t = getattr(student, field), getattr(teacher, field)
        if s != t:
            raise ArchError(f"{field}: the student has {s}, the teacher {t}; initialising from the teacher needs equal")
    if student.max_position_embeddings > teacher.max_position_embeddings:
        raise ArchError(
            f"max_position_embeddings: the student has {student.max_position_embeddings}, more than the "
            f"teacher's {teacher.max_position_embeddings}"
        )
    for field in ("hidden_size", "head_size"):
        s, t = getattr(student, field), getattr(teacher, field)
        if s > t:
            raise ArchError(f"{field}: the student's {s} exceeds the teacher's {t}")
    mapping = teacher_layers(cfg.layers, teacher.num_layers, student.num_layers)
    for j in student.group_starts:  # the layers whose teacher layers are copied (see `init_student`)
        i = mapping[j]
        if student.num_heads[j] > teacher.num_heads[i]:
            raise ArchError(
                f"num_heads: student layer {j} has {student.num_heads[j]} heads but its teacher layer {i} "
                f"only {teacher.num_heads[i]}"
            )
        if student.ffn_sizes[j] > teacher.ffn_sizes[i]:
            raise ArchError(
                f"ffn_sizes: student layer {j} has FFN size {student.ffn_sizes[j]} but its teacher layer {i} "
                f"only {teacher.ffn_sizes[i]}"
            )


# ---------------------------------------------------------------------- surgery
def top_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest scores (earlier index first on ties), in increasing order."""
    scores = np.asarray(scores, dtype=np.float64)
    return np.sort(np.argsort(-scores, kind="stable")[:k])


def _select(method: str, scores: np.ndarray, k: int) -> np.ndarray:
    return np.arange(k) if method == "first" else top_indices(scores, k)


def _top_rows(scores: np.ndarray, k: int) -> np.ndarray:
    """`top_indices` of each row of a 2-D score array: (rows, k)."""
    return np.stack([top_indices(row, k) for row in scores])


def shrink_layer(layer: dict, heads: np.ndarray, ffn: np.ndarray, head_size: int) -> dict:
    """A teacher layer with only `heads`, `head_size` dims of each and `ffn` neurons (hidden axes untouched)."""
    qkv_k = as_f64(layer["attention"]["qkv"]["kernel"])[:, :, heads]  # (h, 3, N, D)
    qkv_b = as_f64(layer["attention"]["qkv"]["bias"])[:, heads]  # (3, N, D)
    wo = as_f64(layer["attention"]["output"]["kernel"])[heads]  # (N, D, h)
    d_t = qkv_k.shape[-1]
    if head_size < d_t:
        full = np.concatenate([qkv_k, qkv_b[None]], axis=0)  # bias as the weight of a constant input
        norms = np.sqrt(np.sum(full**2, axis=0))  # (3, N, D)
        qk = _top_rows(norms[0] * norms[1], head_size)  # (N, D_s)
        v = _top_rows(norms[2] * np.sqrt(np.sum(wo**2, axis=2)), head_size)
        index = np.stack([qk, qk, v])  # (3, N, D_s)
        qkv_k = np.take_along_axis(qkv_k, index[None], axis=3)
        qkv_b = np.take_along_axis(qkv_b, index, axis=2)
        wo = np.take_along_axis(wo, v[:, :, None], axis=1)
        # The student divides q.k by sqrt(D_s), the teacher by sqrt(D_t): rescale q so each
        # student score is the teacher's score over the kept dimensions.
        q_scale = np.sqrt(head_size / d_t)
        qkv_k[:, 0] *= q_scale
        qkv_b[0] *= q_scale
    return {
        "attention": {
            "qkv": {"kernel": qkv_k, "bias": qkv_b},
            "output": {"kernel": wo, "bias": as_f64(layer["attention"]["output"]["bias"])},
        },
        "attention_norm": _copy(layer["attention_norm"]),
        "intermediate": {
            "kernel": as_f64(layer["intermediate"]["kernel"])[:, ffn],
            "bias": as_f64(layer["intermediate"]["bias"])[ffn],
        },
        "output": {"kernel": as_f64(layer["output"]["kernel"])[ffn], "bias": as_f64(layer["output"]["bias"])},
        "output_norm": _copy(layer["output_norm"]),
    }


def _copy(tree: dict) -> dict:
    return jax.tree_util.tree_map(as_f64, tree)


def pca_projection(embeddings: np.ndarray, k: int) -> np.ndarray:
    """The top-k principal directions of the (centred) rows of `embeddings`: (hidden, k), orthonormal columns.

    From the eigenvectors of the (hidden, hidden) covariance, so a large
    vocabulary costs no more than one pass over the matrix; each column's sign
    makes its largest entry positive, so the result is deterministic.
    """
    e = as_f64(embeddings)
    if not 1 <= k <= e.shape[1]:
        raise ArchError(f"hidden_size: cannot project {e.shape[1]} hidden dims onto {k}")
    e = e - e.mean(axis=0, keepdims=True)
    values, vectors = np.linalg.eigh(e.T @ e)
    p = vectors[:, np.argsort(-values, kind="stable")[:k]]
    signs = np.sign(p[np.argmax(np.abs(p), axis=0), np.arange(k)])
    return p * np.where(signs == 0, 1.0, signs)


def hidden_role(path: tuple[str, ...]) -> str:
    """Which axes of a parameter are hidden: 'in' (first), 'out' (last), 'in_out', 'norm' or 'none'."""
    parent, name = path[-2], path[-1]
    if name == "embedding":
        return "out"
    if parent in NORMS:
        return "norm"
    if parent == "pooler":
        return "in_out" if name == "kernel" else "out"
    if parent == "output":  # attention/output (N, D, h) and the FFN output (F, h)
        return "out"
    if parent in ("qkv", "intermediate", "classifier", "qa_outputs"):
        return "in" if name == "kernel" else "none"
    if parent == "crf":  # transitions between tags: no hidden axis
        return "none"
    raise ValueError(f"no hidden-axis rule for parameter {'/'.join(path)}")


def slice_hidden(x: np.ndarray, role: str, keep: np.ndarray) -> np.ndarray:
    if role in ("in", "in_out"):
        x = np.take(x, keep, axis=0)
    if role in ("out", "in_out", "norm"):
        x = np.take(x, keep, axis=-1)
    return x


def _project_hidden(x: np.ndarray, role: str, p: np.ndarray) -> np.ndarray:
    if role == "norm":
        return (p * p).T @ x  # each student dim: its squared-loading weighted mean of the teacher's
    if role in ("in", "in_out"):
        x = np.tensordot(p, x, axes=(0, 0))
    if role in ("out", "in_out"):
        x = x @ p
    return x


def map_hidden(tree: dict, fn: Callable[[np.ndarray, str], np.ndarray]) -> dict:
    flat = traverse_util.flatten_dict(tree)
    return traverse_util.unflatten_dict({path: fn(x, hidden_role(path)) for path, x in flat.items()})


def _head_parts(teacher_params: dict, student_head: str, num_labels: int, teacher_head: str | None) -> dict:
    """The pooler and task head the student can take from the teacher (still at teacher hidden size)."""
    out = {}
    if has_pooler(student_head) and "pooler" in teacher_params:
        out["pooler"] = _copy(teacher_params["pooler"])
    name = {"span": "qa_outputs", "none": None}.get(student_head, "classifier")
    same_kind = teacher_head is None or teacher_head == student_head
    if name and same_kind and name in teacher_params:
        if np.shape(teacher_params[name]["kernel"])[-1] == num_labels:
            out[name] = _copy(teacher_params[name])
    # A CRF teacher's transitions (kept only when the student has a CRF too: see `init_student`).
    if student_head == "tagging" and same_kind and "crf" in teacher_params:
        if np.shape(teacher_params["crf"]["transitions"]) == (num_labels, num_labels):
            out["crf"] = _copy(teacher_params["crf"])
    return out


def hidden_map(
    student: BertArch, teacher_arch: BertArch, teacher_params: dict, cfg: InitConfig = InitConfig(), scores=None
) -> np.ndarray | None:
    """The (teacher hidden, student hidden) matrix M of the init: student features ~= teacher features @ M.

    'slice': M[keep[i], i] = 1; 'project': the PCA basis. None when the widths
    are equal or the init is random. Distillation starts its learned
    student-to-teacher projection at M.T, so hidden-state losses begin small.
    """
    h_t, h_s = teacher_arch.hidden_size, student.hidden_size
    if cfg.method == "random" or h_s >= h_t:
        return None
    if cfg.hidden == "project":
        return pca_projection(teacher_params["embeddings"]["word_embeddings"]["embedding"], h_s)
    ranked = scores if scores is not None else weight_scores(teacher_params, teacher_arch)
    m = np.zeros((h_t, h_s), np.float32)
    m[top_indices(ranked["hidden"], h_s), np.arange(h_s)] = 1.0
    return m


def init_student(
    student: BertArch,
    teacher_arch: BertArch,
    teacher_params: dict,
    *,
    head: str,
    num_labels: int,
    cfg: InitConfig = InitConfig(),
    scores: Scores | None = None,
    seed: int = 0,
    teacher_head: str | None = None,
    crf: bool = False,
) -> dict:
    """Student parameters for `build_model(student, head, num_labels, crf=crf)`, from the teacher's.

    `scores` (from `importance_scores`) rank heads and FFN neurons for
    'importance' and hidden dims for 'slice'; without them weight norms
    (`weight_scores`) stand in. `teacher_head`, when given, must equal `head`
    for the teacher's task head to be reused (its label count must match in
    any case). A CRF student starts from a CRF teacher's transitions, start
    and end scores (from zero when the teacher has none). Returns float32
    numpy arrays.
    """
    model = build_model(student, head, num_labels, crf=crf)
    target = abstract_params(model)
    if cfg.method == "random":
        log.info("init %s: random (seed %d)", student.name, seed)
        return jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32), init_params(model, jax.random.key(seed)))
    check_compatible(student, teacher_arch, cfg)
    mapping = teacher_layers(cfg.layers, teacher_arch.num_layers, student.num_layers)
    norms = weight_scores(teacher_params, teacher_arch)
    if scores is None and cfg.needs_importance:
        log.warning("init: no importance scores given; ranking heads and FFN neurons by weight norms instead")
    ranked = scores if scores is not None else norms
    by = {"importance": ranked, "norm": norms, "first": norms}  # 'first' ignores its scores

    emb = _copy(teacher_params["embeddings"])
    emb["position_embeddings"]["embedding"] = emb["position_embeddings"]["embedding"][: student.max_position_embeddings]
    tree: dict[str, Any] = {"embeddings": emb, "encoder": {}}
    copied = tuple(mapping[j] for j in student.group_starts)  # a shared group: its first layer's teacher layer
    for g, (j, i) in enumerate(zip(student.group_starts, copied)):
        heads = _select(cfg.heads, by[cfg.heads]["heads"][i], student.num_heads[j])
        ffn = _select(cfg.ffn, by[cfg.ffn]["ffn"][i], student.ffn_sizes[j])
        layer = layer_params(teacher_params, teacher_arch, i)
        tree["encoder"][f"layer_{g}"] = shrink_layer(layer, heads, ffn, student.head_size)
    tree.update(_head_parts(teacher_params, head, model.num_labels, teacher_head))

    h_t, h_s = teacher_arch.hidden_size, student.hidden_size
    if h_s < h_t and cfg.hidden == "slice":
        keep = top_indices(ranked["hidden"], h_s)
        tree = map_hidden(tree, lambda x, role: slice_hidden(x, role, keep))
    elif h_s < h_t:
        p = hidden_map(student, teacher_arch, teacher_params, cfg, scores)
        tree = map_hidden(tree, lambda x, role: _project_hidden(x, role, p))

    out = fit_to(tree, target, model, seed)
    log.info(
        "init %s from %s: layers %s%s, hidden %s%s, heads %s %s%s, ffn %s %s",
        student.name,
        teacher_arch.name,
        mapping,
        f" (shared groups {student.layer_groups} copy {copied})" if student.layer_groups else "",
        f"{h_t}->{h_s} " if h_s < h_t else "",
        cfg.hidden if h_s < h_t else "kept",
        cfg.heads,
        [f"{n}/{teacher_arch.num_heads[i]}" for n, i in zip(student.num_heads, mapping)],
        f" of size {teacher_arch.head_size}->{student.head_size}" if student.head_size < teacher_arch.head_size else "",
        cfg.ffn,
        [f"{f}/{teacher_arch.ffn_sizes[i]}" for f, i in zip(student.ffn_sizes, mapping)],
    )
    return out


def fit_to(tree: dict, target: dict, model: BertForTask, seed: int) -> dict:
    """`tree` as float32 arrays in exactly the shapes of `target` (the model's abstract parameters); what the
    teacher could not supply (a head for another label set) comes from the model's random init, logged."""
    flat, want = traverse_util.flatten_dict(tree), traverse_util.flatten_dict(target)
    missing = [path for path in want if path not in flat]
    if missing:
        fresh = traverse_util.flatten_dict(init_params(model, jax.random.key(seed)))
        flat.update({path: fresh[path] for path in missing})
        parts = sorted({p[0] for p in missing})
        log.warning("init: %s left at their random init (the teacher has none that fit)", parts)
    out = {}
    for path, ref in want.items():
        value = np.asarray(flat[path], dtype=np.float32)
        if value.shape != tuple(ref.shape):
            raise AssertionError(f"init: {'/'.join(path)} has shape {value.shape}, the student needs {ref.shape}")
        out[path] = value
    return traverse_util.unflatten_dict(out)


def init_from_teacher(
    student: BertArch,
    teacher: Any,
    *,
    head: str,
    num_labels: int,
    cfg: InitConfig = InitConfig(),
    batches: Iterable[dict] | None = None,
    seed: int = 0,
    crf: bool = False,
) -> dict:
    """`init_student` from a `LoadedBert`, with importance scores from `batches` when `cfg` wants them.

    Importance needs a teacher with a task head (fine-tuned) and labelled
    batches; without either, weight norms stand in (and a warning says so).
    """
    scores = None
    if cfg.needs_importance and batches is not None and teacher.head != "none":
        scores = importance_scores(
            teacher.model, teacher.params, batches, task_loss(teacher.head), max_batches=cfg.importance_batches
        )
    return init_student(
        student,
        teacher.arch,
        teacher.params,
        head=head,
        num_labels=num_labels,
        cfg=cfg,
        scores=scores,
        seed=seed,
        teacher_head=teacher.head,
        crf=crf,
    )
