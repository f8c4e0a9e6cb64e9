"""Distil a fine-tuned teacher into a compact student for one task.

`distill(config, output_dir)` runs named stages:
  1. `prepare`: a fine-tuned teacher (a directory fine-tuned on this task is
     used as is; otherwise, e.g. `minilm`, it is fine-tuned first through
     `finetune`'s cache, `distill.run.teacher`), the student's architecture,
     and the task's data encoded with augmented copies (`distill.run.data`);
  2. `batch_extras`: the teacher labels the training features once
     (`distill.kd.outputs`, cached on disk, so later runs and search trials
     skip it), or runs in the step (`teacher_online`: attention scores, or
     hidden states too big to cache);
  3. `train_student`: the student initialised from the teacher
     (`distill.kd.init`) and distilled (`distill.kd.objective`,
     `distill.train.steps.make_train_step`, `distill.train.loop.fit`),
     evaluated on dev, the best one exported to `output_dir/export` as it comes
     (`distill.export.hf`);
  4. `run_results`: results.json.

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
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np

from distill.arch import ArchError, BertArch, resolve_student
from distill.export.hf import export_model, export_summary
from distill.files import config_key, features_fingerprint, owned_output, write_json
from distill.kd.init import check_compatible, fit_to, hidden_map, init_student, map_hidden, slice_hidden
from distill.kd.layers import teacher_layers
from distill.kd.objective import PROJ, init_projection
from distill.kd.outputs import hidden_bytes
from distill.kd.supernet import check_student, student_from_supernet
from distill.model.bert import abstract_params, build_model, in_precision
from distill.model.crf import check_crf
from distill.model.store import LoadedBert, load_bert, read_arch, read_config, resolve_model_dir, weights_fingerprint
from distill.run.config import DistillConfig
from distill.run.data import Stage, read_data, teacher_importance, teacher_labels, training_features
from distill.run.evaluation import evaluate_model
from distill.run.teacher import fine_tuned_teacher
from distill.train.checkpoint import Checkpointer
from distill.train.loop import Evaluation, StepSchedule, TrainData, devices_record, fit
from distill.train.optim import averaged, keeps_average
from distill.train.runlog import RunLog
from distill.train.steps import TrainState, make_train_step
from tasks.base import Task
from tasks.errors import UserError
from tasks.features import Features, encode
from tasks.readers import load_task

log = logging.getLogger(__name__)
ONLINE_ABOVE = 2 * 1024**3
"""`teacher_outputs='auto'` runs the teacher in the step when the hidden states its losses read would take more
than this on disk (bfloat16, every real token of every training feature)."""


def loss_layer_map(cfg: DistillConfig, teacher: BertArch, student: BertArch) -> tuple[int, ...]:
    """Teacher layer matched by each student layer (only intermediate losses use it)."""
    if not cfg.loss.intermediate:
        return ()
    spec = cfg.loss.layer_map
    if spec is None:
        spec = cfg.init.layers if cfg.init.method == "teacher" else "uniform"
    return teacher_layers(spec, teacher.num_layers, student.num_layers)


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
    if cfg.init.source is not None:
        params, start = supernet_init(cfg, task, teacher, student)
    else:
        scores = teacher_importance(cfg, task, teacher, train) if cfg.init.needs_importance else None
        params = init_student(
            student, teacher.arch, teacher.params, head=task.kind, num_labels=task.num_labels,
            cfg=cfg.init, scores=scores, seed=cfg.loop.seed, crf=student_crf(cfg, teacher),
        )
        start = hidden_map(student, teacher.arch, teacher.params, cfg.init, scores)
    proj = init_projection(student.hidden_size, teacher.arch.hidden_size, cfg.loss, None if start is None else start.T)
    return params if proj is None else {**params, PROJ: proj}


def supernet_init(cfg: DistillConfig, task: Task, teacher: LoadedBert, student: BertArch):
    """The student sliced out of the supernet `cfg.init.source` (what it lacks, e.g. a CRF, from its random
    init), and the (teacher hidden, student hidden) map of its hidden dims: the supernet's were reordered."""
    source = load_bert(cfg.init.source)
    layers = teacher_layers(cfg.init.layers, source.arch.num_layers, student.num_layers)
    model = build_model(student, task.kind, task.num_labels, crf=student_crf(cfg, teacher))
    params = fit_to(student_from_supernet(student, source.arch, source.params, layers), abstract_params(model), model,
                    cfg.loop.seed)
    log.info("init %s from the supernet %s (its layers %s)", student.name, source.path, layers)
    order = source.meta.get("supernet", {}).get("hidden_order")
    if order is None:
        return params, None
    if student.hidden_size == teacher.arch.hidden_size:  # every dim kept: back in the teacher's order, exactly
        inverse = np.argsort(np.asarray(order))
        return map_hidden(params, lambda x, role: slice_hidden(np.asarray(x), role, inverse)), None
    start = np.zeros((teacher.arch.hidden_size, student.hidden_size), np.float32)
    start[np.asarray(order[: student.hidden_size]), np.arange(student.hidden_size)] = 1.0
    return params, start


def check_supernet_init(cfg: DistillConfig, task: Task, teacher: BertArch, student: BertArch) -> None:
    """A student the supernet `cfg.init.source` cannot give is refused before the data work: the source must
    be a supernet of this task and teacher shape, and the student one of its slices."""
    where = f"init source {cfg.init.source}"
    if cfg.loss.attention_weight:
        raise UserError(f"{where}: a supernet's heads are reordered, so attention scores cannot be matched head "
                        "by head; set the attention weight to 0")
    path = resolve_model_dir(cfg.init.source)
    meta = read_config(path).get("bertnas", {})
    if "supernet" not in meta:
        raise UserError(f"{where}: not a supernet (bertnas supernet's OUTPUT/supernet); its units are not ordered")
    if meta.get("task") != task.name or meta.get("num_labels") != task.num_labels:
        raise UserError(f"{where}: a supernet for task {meta.get('task')!r}, not {task.name!r}")
    supernet = read_arch(path)
    if supernet.hidden_size != teacher.hidden_size or supernet.num_layers != teacher.num_layers:
        raise UserError(f"{where}: a {supernet.name} supernet, but the teacher is {teacher.name}; distil from "
                        "the teacher the supernet was trained from")
    layers = teacher_layers(cfg.init.layers, supernet.num_layers, student.num_layers)
    try:
        check_student(student, supernet, layers)
    except ArchError as e:
        raise ArchError(f"{where}: {e}") from None


def student_params(params: dict) -> dict:
    """The student model's parameters (without the train-time projection)."""
    return {k: v for k, v in params.items() if k != PROJ}


def run_key(cfg: DistillConfig, teacher: LoadedBert, train: Features) -> str:
    """What defines a run: resuming under another key is refused (see `distill.train.loop.fit`)."""
    settings = dataclasses.asdict(cfg)
    for k in ("data_dir", "eval_batch_size", "teacher"):
        settings.pop(k)
    settings.pop("data")  # where the data lies is not what it is (its features are keyed below) ...
    if cfg.data.cache_settings():  # ... its columns and length are; runs without them keep their key
        settings["data"] = cfg.data.cache_settings()
    for k in ("eval_every", "patience", "checkpoint_every", "log_every", "profile_steps", "max_seconds",
              "devices", "grad_accum", "fsdp"):
        settings["loop"].pop(k)
    if settings["loop"]["precision"] == "fp32":  # runs from before the flag keep their key
        settings["loop"].pop("precision")
    if settings["loop"]["attention_dropout"]:  # likewise
        settings["loop"].pop("attention_dropout")
    settings["loop"].pop("packing")
    settings["loop"].update(cfg.loop.packing_key())  # likewise
    if settings["crf"] is None:  # runs from before the flag keep their key
        settings.pop("crf")
    settings["optimizer"] = cfg.optimizer.key_settings()  # likewise (no `ema` when it is off)
    settings.pop("hf_layout")  # how the export is written, not what is trained
    settings.pop("teacher_outputs")  # where the teacher's outputs come from, not what they are
    source = settings["init"].pop("source")  # likewise; a supernet counts by its weights, wherever it lies
    if source is not None:
        settings["init"]["source"] = weights_fingerprint(resolve_model_dir(source))
    return config_key(
        {"settings": settings, "teacher": weights_fingerprint(teacher.path), "train": features_fingerprint(train)}
    )


@dataclasses.dataclass
class Prepared:
    """What the stages before training produce: the run's task, teacher, student and data."""

    out: Path
    task: Task
    teacher: LoadedBert
    student: BertArch
    layer_map: tuple[int, ...]
    train: Features
    original: np.ndarray
    """1.0 for the features of original examples, 0.0 for augmented copies."""
    num_augmented: int
    dev: Features
    dev_ex: list
    eval_split: str
    times: Stage
    crf: bool
    """Whether the student has a CRF (as configured, else as the teacher)."""
    teacher_online: bool
    """Whether the teacher runs in every step rather than from its cached outputs (`teacher_online`)."""


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
    with owned_output(output_dir, "distill", resume=resume) as out:
        return _distill(cfg, out, resume=resume, use_cache=use_cache, report=report, teacher_eval=teacher_eval)


def _distill(cfg: DistillConfig, out: Path, *, resume: bool, use_cache: bool,
             report: Callable[[int, dict, dict | None], None] | None, teacher_eval: dict | None) -> dict[str, Any]:
    prep = prepare(cfg, out, resume=resume, use_cache=use_cache)
    cfg = dataclasses.replace(cfg, loop=cfg.loop.resolved(prep.train))  # 'auto' packing decided, keyed, saved
    teacher_params = jax.device_put(prep.teacher.params)  # once, not with every batch
    extras = batch_extras(cfg, prep, teacher_params, use_cache)
    teacher_dev = teacher_eval or evaluate_model(
        prep.teacher.model, teacher_params, prep.task, prep.dev, prep.dev_ex, cfg.eval_batch_size
    )
    log.info("teacher %s %s=%.4f", prep.eval_split, prep.task.metric, teacher_dev[prep.task.metric])
    export_meta = {"teacher": str(prep.teacher.path), "teacher_dev": teacher_dev, "eval_split": prep.eval_split}
    state, progress = train_student(cfg, prep, extras, export_meta, report=report, resume=resume)
    export = ensure_export(prep.out / "export", prep.out, prep.student, prep.task, state, progress.best,
                           prep.teacher.tokenizer, export_meta, hf_layout=cfg.hf_layout)
    results = {**run_results(prep, teacher_dev, progress, export), **devices_record(cfg.loop, prep.train)}
    write_json(prep.out / "results.json", results)
    return results


def prepare(cfg: DistillConfig, out: Path, *, resume: bool, use_cache: bool) -> Prepared:
    """Checks, data, teacher (fine-tuned first if need be), student architecture and training features."""
    task, data_dir = load_task(cfg.task, cfg.data_dir, cfg.data)
    check_crf(task, bool(cfg.crf))
    if cfg.crf:
        check_crf_loss(cfg)
    train_ex, dev_ex, eval_split = read_data(cfg, task, data_dir)
    times = Stage()
    teacher, times.teacher = fine_tuned_teacher(
        dataclasses.replace(cfg, data_dir=data_dir and str(data_dir)), task, out, resume=resume, use_cache=use_cache
    )
    student = resolve_student(cfg.student, teacher.arch)
    if student_crf(cfg, teacher):  # also a CRF inherited from the teacher
        check_crf_loss(cfg)
    if cfg.init.source is not None:
        check_supernet_init(cfg, task, teacher.arch, student)
    elif cfg.init.method == "teacher":
        check_compatible(student, teacher.arch, cfg.init)
    layer_map = loss_layer_map(cfg, teacher.arch, student)  # a bad --layer-map fails before the data work
    train, original, num_augmented = training_features(cfg, task, teacher, train_ex, times)
    online = teacher_online(cfg, layer_map, train, teacher.arch.hidden_size)
    return Prepared(
        out=out, task=task, teacher=teacher, student=student, layer_map=layer_map,
        train=train, original=original, num_augmented=num_augmented, dev=encode(task, dev_ex, teacher.tokenizer),
        dev_ex=dev_ex, eval_split=eval_split, times=times, crf=student_crf(cfg, teacher), teacher_online=online,
    )


def teacher_online(cfg: DistillConfig, layer_map: tuple[int, ...], train: Features, hidden_size: int) -> bool:
    """Whether the teacher runs in the step rather than from its cached outputs (`DistillConfig.teacher_outputs`).
    'auto' decides by size alone: a cache entry already on disk does not count."""
    if cfg.teacher_outputs != "auto":
        return cfg.teacher_outputs == "online"
    if cfg.loss.attention_weight:
        return True
    size = hidden_bytes(train, len(cfg.loss.teacher_hidden_layers(layer_map)), hidden_size)
    if size > ONLINE_ABOVE:
        log.info("the teacher's hidden states would take %.1f GiB on disk (over %.1f): it runs in every step",
                 size / 1024**3, ONLINE_ABOVE / 1024**3)
        return True
    return False


def batch_extras(cfg: DistillConfig, prep: Prepared, teacher_params, use_cache: bool) -> Callable:
    """`extras(batch) -> (batch, step args)`: the teacher's cached outputs for the batch (labelled here, once,
    through the cache), or its parameters when it runs in the step (`teacher_online`); augmented runs also flag
    each row's original examples."""
    hidden_layers = cfg.loss.teacher_hidden_layers(prep.layer_map)
    online = prep.teacher_online
    cache = None
    if online:
        log.info("the teacher runs in every step (teacher outputs: %s)", cfg.teacher_outputs)
    else:
        cache = teacher_labels(
            cfg, prep.task, prep.teacher, prep.train, hidden_layers=hidden_layers, use_cache=use_cache,
            params=teacher_params, original=prep.original,
        )
        prep.times.labelling = cache.seconds
    original = prep.original if prep.num_augmented else None

    def extras(batch: dict) -> tuple[dict, tuple]:
        if original is not None:
            batch["original"] = np.where(batch["index"] >= 0, original[np.maximum(batch["index"], 0)], 0.0)
        return batch, ((teacher_params,) if online else (cache.gather(batch, hidden_layers),))

    return extras


def train_student(cfg: DistillConfig, prep: Prepared, extras: Callable, export_meta: dict, *,
                  report: Callable | None, resume: bool):
    """Initialise the student, then `fit` it: the best student is exported to OUT/export as it comes."""
    task, student = prep.task, prep.student
    t0 = time.perf_counter()
    model = build_model(student, task.kind, task.num_labels, crf=prep.crf)
    params = student_init(cfg, task, prep.teacher, student, prep.train)
    prep.times.init = time.perf_counter() - t0
    total = cfg.loop.total_steps(prep.train)
    tx = cfg.optimizer.build(params, total, student.num_layers, student.groups)

    def keep_best(params, best):
        export_model(prep.out / "export", student, jax.device_get(student_params(params)), prep.teacher.tokenizer,
                     task, extra={"dev": best, **export_meta}, hf_layout=cfg.hf_layout)

    evaluation = Evaluation(
        evaluate=lambda p: evaluate_model(model, student_params(p), task, prep.dev, prep.dev_ex, cfg.eval_batch_size),
        metric=task.metric, keep_best=keep_best, report=report,
        # Two stages: the dev metric means nothing before the prediction stage.
        start=cfg.loss.prediction_start(total),
    )
    runlog = RunLog(prep.out, {"distill": cfg, "student_arch": student.to_dict(), "teacher_dir": str(prep.teacher.path),
                               "layer_map": prep.layer_map, "total_steps": total})
    t0 = time.perf_counter()
    try:
        return fit(
            TrainState.create(params, tx), step_schedule(cfg, prep, model, tx, total), TrainData(prep.train, extras),
            cfg.loop, evaluation, runlog, lr_at=cfg.optimizer.schedule_fn(total),
            run_key=run_key(cfg, prep.teacher, prep.train), resume=resume, desc=f"{task.name} {student.name}",
        )
    finally:
        prep.times.distill = time.perf_counter() - t0
        runlog.close()


def step_schedule(cfg: DistillConfig, prep: Prepared, model, tx, total: int) -> StepSchedule:
    """The jitted distillation step, or TinyBERT's two: intermediate losses, then prediction from the switch."""
    def make(stage: str):
        tags = prep.task.labels if prep.crf else ()
        precision = cfg.loop.precision  # the student's step, and the teacher's forward in it (when one runs)
        student = in_precision(model, precision, attention_dropout=cfg.loop.attention_dropout)
        return make_train_step(student, in_precision(prep.teacher.model, precision), tx,
                               prep.task.kind, cfg.loss, prep.layer_map, stage, tags, grad_accum=cfg.loop.grad_accum)

    first, last = cfg.loss.stage_at(0, total), cfg.loss.stage_at(total - 1, total)
    if first == last:
        return StepSchedule.single(make(first))
    return StepSchedule(((0, make(first)), (cfg.loss.prediction_start(total), make(last))))


def run_results(prep: Prepared, teacher_dev: dict, progress, export: dict) -> dict[str, Any]:
    """results.json of a distillation run."""
    task, student, teacher = prep.task, prep.student, prep.teacher
    teacher_score = teacher_dev[task.metric]
    student_score = (progress.best or {}).get(task.metric)
    return {
        "task": task.name, "metric": task.metric, "eval_split": prep.eval_split, "teacher_dir": str(teacher.path),
        "teacher_dev": teacher_dev, "student": student.name, "student_arch": student.to_dict(),
        "best": progress.best, "history": progress.history,
        "retained": student_score / teacher_score if student_score is not None and teacher_score else None,
        "gap": None if student_score is None else teacher_score - student_score,
        "student_params": student.num_params(task.kind, task.num_labels, crf=prep.crf),
        "teacher_params": teacher.arch.num_params(task.kind, task.num_labels, crf=teacher.crf),
        "crf": prep.crf,
        "student_flops": student.flops(task.max_length // 2, task.kind, task.num_labels),
        "teacher_flops": teacher.arch.flops(task.max_length // 2, task.kind, task.num_labels),
        "layer_map": list(prep.layer_map), "train_features": len(prep.train),
        "augmented_examples": prep.num_augmented, "steps": progress.step,
        "train_examples_per_second": progress.examples_seen / max(progress.train_seconds, 1e-9),
        "seconds": dataclasses.asdict(prep.times), "export": export,
        "teacher_outputs": "online" if prep.teacher_online else "cached",
    }


def ensure_export(export_dir: Path, out: Path, student: BertArch, task: Task, state_like: TrainState, best, tokenizer,
                  meta, *, hf_layout: bool = False) -> dict:
    """The export holds `best`: after a resume it may not (killed between export and checkpoint), so re-export it
    (the weights the evaluation saw: their moving average where the optimizer keeps one, `averaged`)."""
    if best is None:
        return {}
    recorded = None
    if (export_dir / "config.json").is_file():
        recorded = json.loads((export_dir / "config.json").read_text()).get("bertnas", {}).get("dev", {}).get("step")
    if recorded != best["step"]:
        log.warning("export %s does not hold the best step %d; re-exporting it from its checkpoint", export_dir, best["step"])
        ckpt = Checkpointer(out / "checkpoints")
        try:
            if keeps_average(state_like.opt_state):
                params, opt_state, _ = ckpt.restore(best["step"], state_like.params, state_like.opt_state)
                params = averaged(params, opt_state)
            else:
                params = ckpt.restore_params(best["step"], state_like.params)
        finally:
            ckpt.close()
        export_model(export_dir, student, jax.device_get(student_params(params)), tokenizer, task,
                     extra={"dev": best, **meta}, hf_layout=hf_layout)
    return export_summary(export_dir, student, task)
