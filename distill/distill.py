"""Distil a fine-tuned teacher into a compact student for one task.

`distill(config, output_dir)`:
  1. gets a fine-tuned teacher: a directory fine-tuned on this task is used
     as is; otherwise (e.g. `minilm`) the teacher is fine-tuned first,
     through `finetune`'s cache;
  2. reads and encodes the task's data, plus augmented copies (optional);
  3. has the teacher label the training features once (`teacher_outputs`,
     cached on disk, so later runs and search trials skip it);
  4. initialises the student from the teacher (`init`) and distils it
     (`objective`, `train.train_step`, `loop.fit`), evaluating on dev;
  5. exports the best student to `output_dir/export` (`export`).

On a token-tagging task the student may have a linear-chain CRF (`crf`; by
default it has one when the teacher has): its hard loss is the negative CRF
log-likelihood, the soft loss stays on the emissions, its transitions start
from the teacher's, and it is evaluated with constrained Viterbi decoding.

The run directory gets config.json, metrics.jsonl, tb/, checkpoints/ and
results.json (dev scores of teacher and student, sizes, FLOPs, and the wall
time of each stage).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np

from distill.augment import AugmentConfig, augment
from distill.config import BertArch, parse_arch_name
from distill.crf import check_crf
from distill.evaluate import evaluate_model
from distill.export import check_output_path, export_model, export_summary
from distill.finetune import FinetuneConfig, finetune
from distill.checkpoint import Checkpointer
from distill.init import InitConfig, check_compatible, hidden_map, importance_scores, init_student, teacher_layers
from distill.loop import LoopConfig, fit, refuse_overwrite
from distill.modeling import build_model
from distill.objective import PROJ, LossConfig, init_projection
from distill.losses import task_loss
from distill.optim import OptimizerConfig
from distill.runlog import RunLog, cache_root, config_key
from distill.teacher import DEFAULT_TEACHER, LoadedBert, load_bert, weights_fingerprint
from distill.teacher_outputs import cached_teacher_outputs, features_fingerprint
from distill.train import TrainState, make_train_step
from tasks.base import Task
from tasks.batching import batches, default_buckets
from tasks.errors import UserError
from tasks.features import Features, encode
from tasks.readers import load_task, read_split, split_off

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DistillConfig:
    task: str = "sst2"
    teacher: str = DEFAULT_TEACHER
    """A teacher fine-tuned on the task (directory), or a pre-trained one (fine-tuned first)."""
    student: str = "4L-312"
    """Architecture name ('4L-312', '6L-384-H6-F1536') or a JSON file (BertArch or an exported config.json)."""
    data_dir: str | None = None
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


@dataclasses.dataclass
class Stage:
    """Wall time of the run's stages, in seconds."""

    teacher: float = 0.0
    encode: float = 0.0
    augment: float = 0.0
    labelling: float = 0.0
    init: float = 0.0
    distill: float = 0.0


def resolve_student(spec: str, teacher: BertArch) -> BertArch:
    """A student architecture from a short name or a JSON file; vocabulary and positions follow the teacher."""
    path = Path(spec)
    if spec.endswith(".json") or path.is_file():
        if not path.is_file():
            raise UserError(f"{spec}: student architecture file not found")
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: not valid JSON ({e})") from None
        try:
            if "bertnas" in d or "model_type" in d:
                return BertArch.from_hf_config(d)
            return BertArch.from_dict(d)
        except (KeyError, TypeError) as e:
            raise UserError(f"{path}: not a student architecture ({e!r} missing or invalid)") from None
    return parse_arch_name(spec, base=teacher)


def fine_tuned_teacher(
    cfg: DistillConfig, task: Task, out: Path, *, resume: bool = False, use_cache: bool = True
) -> tuple[LoadedBert, float]:
    """Load the teacher; fine-tune it first unless it already is fine-tuned on this task."""
    t0 = time.perf_counter()
    teacher = load_bert(cfg.teacher)
    same_labels = tuple(teacher.meta.get("labels", ())) == task.labels  # the generic `ner` task's come from data
    if teacher.meta.get("task") == task.name and teacher.head == task.kind and same_labels \
            and teacher.num_labels == task.num_labels:
        return teacher, time.perf_counter() - t0
    log.info("teacher %s is not fine-tuned on %s: fine-tuning it first", cfg.teacher, task.name)
    ft = FinetuneConfig(
        task=task.name,
        teacher=cfg.teacher,
        data_dir=cfg.data_dir,
        epochs=cfg.teacher_epochs,
        train_limit=cfg.train_limit,
        dev_limit=cfg.dev_limit,
        seed=cfg.loop.seed,
        crf=bool(cfg.crf),
    )
    result = finetune(ft, out / "teacher_finetune", resume=resume, use_cache=use_cache)
    return load_bert(result["teacher_dir"]), time.perf_counter() - t0


def loss_layer_map(cfg: DistillConfig, teacher: BertArch, student: BertArch) -> tuple[int, ...]:
    """Teacher layer matched by each student layer (only intermediate losses use it)."""
    if not cfg.loss.intermediate:
        return ()
    spec = cfg.loss.layer_map
    if spec is None:
        spec = cfg.init.layers if cfg.init.method == "teacher" else "uniform"
    return teacher_layers(spec, teacher.num_layers, student.num_layers)


def training_features(cfg: DistillConfig, task: Task, teacher: LoadedBert, train_ex, times: Stage):
    """Encoded training features (originals, then augmented copies) and the originals' flags."""
    t0 = time.perf_counter()
    extra = []
    if cfg.augment.copies:
        embeddings = np.asarray(teacher.params["embeddings"]["word_embeddings"]["embedding"])
        extra = augment(task, train_ex, teacher.tokenizer, embeddings, cfg.augment)
        times.augment = time.perf_counter() - t0
    t0 = time.perf_counter()
    train = encode(task, list(train_ex) + list(extra), teacher.tokenizer)
    times.encode = time.perf_counter() - t0
    original = (train.example_index < len(train_ex)).astype(np.float32)
    log.info("%d train features (%d augmented examples)", len(train), len(extra))
    return train, original, len(extra)


def check_crf_loss(cfg: DistillConfig) -> None:
    """A CRF student learns its transitions from the hard loss alone: refuse a run where that loss is off."""
    if not cfg.loss.hard_weight:
        raise UserError("--crf: the student's CRF is trained by the hard loss only, and --hard-weight is 0; "
                        "give --hard-weight > 0 (e.g. 0.5), or --no-crf")


def student_crf(cfg: DistillConfig, teacher: LoadedBert) -> bool:
    """Whether the student has a CRF: as configured, else as the teacher."""
    return teacher.crf if cfg.crf is None else cfg.crf


def student_init(cfg: DistillConfig, task: Task, teacher: LoadedBert, student: BertArch, train: Features) -> dict:
    """The student's train-time parameters: the model's, plus the hidden projection when a loss needs it."""
    scores = cached_importance(cfg, task, teacher, train) if cfg.init.needs_importance else None
    params = init_student(
        student, teacher.arch, teacher.params, head=task.kind, num_labels=task.num_labels,
        cfg=cfg.init, scores=scores, seed=cfg.loop.seed, crf=student_crf(cfg, teacher),
    )
    start = hidden_map(student, teacher.arch, teacher.params, cfg.init, scores)
    proj = init_projection(student.hidden_size, teacher.arch.hidden_size, cfg.loss, None if start is None else start.T)
    return params if proj is None else {**params, PROJ: proj}


def cached_importance(cfg: DistillConfig, task: Task, teacher: LoadedBert, train: Features):
    """The teacher's head / FFN / hidden importance on task data, cached on disk like its outputs
    (every search trial initialises from the same scores)."""
    key = config_key({
        "teacher": weights_fingerprint(teacher.path), "train": features_fingerprint(train),
        "seed": cfg.loop.seed, "batches": cfg.init.importance_batches,
    })
    path = cache_root() / "importance" / f"{task.name}-{key}.npz"
    if path.is_file():
        try:
            return _read_scores(path)
        except (OSError, ValueError, KeyError) as e:
            log.warning("%s: unreadable importance cache (%s); recomputing", path, e)
    sample = batches(train, 32, buckets=default_buckets(train.max_length), shuffle=True, seed=cfg.loop.seed)
    sample = itertools.islice(sample, cfg.init.importance_batches)
    scores = jax.device_get(importance_scores(teacher.model, teacher.params, sample, task_loss(task.kind)))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
    arrays = {f"{k}_{i}": np.asarray(a) for k in ("heads", "ffn") for i, a in enumerate(scores[k])}
    np.savez(tmp, hidden=np.asarray(scores["hidden"]), **arrays)
    os.replace(tmp, path)
    return scores


def _read_scores(path: Path) -> dict:
    """Importance scores saved by `cached_importance` (plain arrays: nothing is unpickled)."""
    with np.load(path, allow_pickle=False) as z:
        layers = sum(1 for k in z.files if k.startswith("heads_"))
        return {
            "heads": [z[f"heads_{i}"] for i in range(layers)],
            "ffn": [z[f"ffn_{i}"] for i in range(layers)],
            "hidden": z["hidden"],
        }


def student_params(params: dict) -> dict:
    """The student model's parameters (without the train-time projection)."""
    return {k: v for k, v in params.items() if k != PROJ}


def run_key(cfg: DistillConfig, teacher: LoadedBert, train: Features) -> str:
    """What defines a run: resuming under another key is refused (see `loop.fit`)."""
    settings = dataclasses.asdict(cfg)
    for k in ("data_dir", "eval_batch_size", "teacher"):
        settings.pop(k)
    for k in ("eval_every", "patience", "checkpoint_every", "log_every"):
        settings["loop"].pop(k)
    if settings["crf"] is None:  # runs from before the flag keep their key
        settings.pop("crf")
    return config_key({"settings": settings, "teacher": weights_fingerprint(teacher.path), "train": features_fingerprint(train)})


def read_data(cfg: DistillConfig, task: Task, data_dir) -> tuple[list, list, str]:
    """(training examples, evaluation examples, evaluation split name): dev, or a validation slice of train."""
    train_ex = read_split(task, "train", data_dir, limit=cfg.train_limit)
    if not cfg.validation:
        return train_ex, read_split(task, "dev", data_dir, limit=cfg.dev_limit), "dev"
    if cfg.validation >= len(train_ex):
        raise UserError(f"validation: cannot hold out {cfg.validation} of the {len(train_ex)} training examples")
    return (*split_off(train_ex, cfg.validation), "validation")


def distill(
    cfg: DistillConfig,
    output_dir: str | Path,
    *,
    resume: bool = False,
    use_cache: bool = True,
    report: Callable[[int, dict, dict | None], None] | None = None,
    teacher_eval: dict | None = None,
) -> dict[str, Any]:
    """Distil `cfg.teacher` into `cfg.student` on `cfg.task`; returns the results dict (also in results.json).

    `report(step, result, best)` is called after each evaluation, once its
    checkpoint and (on a new best, `best["step"] == step`) export are written:
    a search trial reports to Ray Tune there, and its scheduler may stop the run.
    `teacher_eval`: the teacher's metrics on the evaluation split when the caller
    already has them (search trials), so the teacher is not evaluated again.
    """
    out = check_output_path(output_dir)
    task, data_dir = load_task(cfg.task, cfg.data_dir)
    check_crf(task, bool(cfg.crf))
    if cfg.crf:
        check_crf_loss(cfg)
    refuse_overwrite(out, resume)
    train_ex, dev_ex, eval_split = read_data(cfg, task, data_dir)
    times = Stage()
    teacher, times.teacher = fine_tuned_teacher(
        dataclasses.replace(cfg, data_dir=str(data_dir)), task, out, resume=resume, use_cache=use_cache
    )
    student = resolve_student(cfg.student, teacher.arch)
    if student_crf(cfg, teacher):  # also a CRF inherited from the teacher
        check_crf_loss(cfg)
    if cfg.init.method == "teacher":
        check_compatible(student, teacher.arch, cfg.init)
    layer_map = loss_layer_map(cfg, teacher.arch, student)
    train, original, num_augmented = training_features(cfg, task, teacher, train_ex, times)
    dev = encode(task, dev_ex, teacher.tokenizer)
    teacher_params = jax.device_put(teacher.params)  # once, not with every batch

    hidden_layers = cfg.loss.teacher_hidden_layers(layer_map)
    online = bool(cfg.loss.attention_weight)  # attention scores are too big to cache: run the teacher
    cache = None
    if not online:
        cache = cached_teacher_outputs(
            teacher.model, teacher_params, train, teacher_key=weights_fingerprint(teacher.path), task=task.name,
            hidden_layers=hidden_layers, batch_size=cfg.eval_batch_size, use_cache=use_cache,
            prefix=int(original.sum()) if num_augmented else 0,  # the originals may be labelled already
        )
        times.labelling = cache.seconds
    teacher_dev = teacher_eval or evaluate_model(teacher.model, teacher_params, task, dev, dev_ex, cfg.eval_batch_size)
    log.info("teacher %s %s=%.4f", eval_split, task.metric, teacher_dev[task.metric])

    t0 = time.perf_counter()
    crf = student_crf(cfg, teacher)
    model = build_model(student, task.kind, task.num_labels, crf=crf)
    params = student_init(cfg, task, teacher, student, train)
    times.init = time.perf_counter() - t0

    total, _ = cfg.loop.total_steps(train)
    tx = cfg.optimizer.build(params, total, student.num_layers, student.groups)
    steps = {
        stage: make_train_step(
            model, teacher.model, tx, task.kind, cfg.loss, layer_map, stage, task.labels if crf else ()
        )
        for stage in sorted({cfg.loss.stage_at(0, total), cfg.loss.stage_at(total - 1, total)})
    }

    def prepare(batch):
        if num_augmented:
            batch["original"] = np.where(batch["index"] >= 0, original[np.maximum(batch["index"], 0)], 0.0)
        return batch, ((teacher_params,) if online else (cache.gather(batch, hidden_layers),))

    export_dir = out / "export"
    export_meta = {"teacher": str(teacher.path), "teacher_dev": teacher_dev, "eval_split": eval_split}

    def on_best(params, best):
        export_model(export_dir, student, jax.device_get(student_params(params)), teacher.tokenizer, task,
                     extra={"dev": best, **export_meta})

    runlog = RunLog(
        out,
        {"distill": cfg, "student_arch": student.to_dict(), "teacher_dir": str(teacher.path),
         "layer_map": layer_map, "total_steps": total},
    )
    t0 = time.perf_counter()
    state, progress = fit(
        TrainState.create(params, tx),
        lambda step: steps[cfg.loss.stage_at(step, total)],
        train,
        cfg.loop,
        out=out,
        runlog=runlog,
        lr_at=cfg.optimizer.schedule_fn(total),
        evaluate=lambda p: evaluate_model(model, student_params(p), task, dev, dev_ex, cfg.eval_batch_size),
        metric=task.metric,
        on_best=on_best,
        prepare=prepare,
        on_eval=report,
        # Two stages: the dev metric means nothing before the prediction stage.
        evaluate_from=int(cfg.loss.intermediate_ratio * total) if cfg.loss.two_stage else 0,
        run_key=run_key(cfg, teacher, train),
        resume=resume,
        desc=f"{task.name} {student.name}",
    )
    times.distill = time.perf_counter() - t0
    summary = ensure_export(export_dir, out, student, task, state.params, progress.best, teacher.tokenizer, export_meta)
    teacher_score = teacher_dev[task.metric]
    student_score = (progress.best or {}).get(task.metric)
    results = {
        "task": task.name,
        "metric": task.metric,
        "eval_split": eval_split,
        "teacher_dir": str(teacher.path),
        "teacher_dev": teacher_dev,
        "student": student.name,
        "student_arch": student.to_dict(),
        "best": progress.best,
        "history": progress.history,
        "retained": student_score / teacher_score if student_score is not None and teacher_score else None,
        "gap": None if student_score is None else teacher_score - student_score,
        "student_params": student.num_params(task.kind, task.num_labels, crf=crf),
        "teacher_params": teacher.arch.num_params(task.kind, task.num_labels, crf=teacher.crf),
        "crf": crf,
        "student_flops": student.flops(task.max_length // 2, task.kind, task.num_labels),
        "teacher_flops": teacher.arch.flops(task.max_length // 2, task.kind, task.num_labels),
        "layer_map": list(layer_map),
        "train_features": len(train),
        "augmented_examples": num_augmented,
        "steps": progress.step,
        "train_examples_per_second": progress.examples_seen / max(progress.train_seconds, 1e-9),
        "seconds": dataclasses.asdict(times),
        "export": summary,
    }
    runlog.results(results)
    runlog.close()
    return results


def ensure_export(export_dir: Path, out: Path, student: BertArch, task: Task, params_like, best, tokenizer, meta) -> dict:
    """The export holds `best`: after a resume it may not (killed between export and checkpoint), so re-export it."""
    if best is None:
        return {}
    recorded = None
    if (export_dir / "config.json").is_file():
        recorded = json.loads((export_dir / "config.json").read_text()).get("bertnas", {}).get("dev", {}).get("step")
    if recorded != best["step"]:
        log.warning("export %s does not hold the best step %d; re-exporting it from its checkpoint", export_dir, best["step"])
        ckpt = Checkpointer(out / "checkpoints")
        try:
            params = ckpt.restore_params(best["step"], params_like)
        finally:
            ckpt.close()
        export_model(export_dir, student, jax.device_get(student_params(params)), tokenizer, task, extra={"dev": best, **meta})
    return export_summary(export_dir, student, task)
