"""Train a weight-sharing supernet for one task, and score its sub-networks without training them.

`train_supernet(config, output_dir)` runs named stages:
  1. `prepare`: the fine-tuned teacher (fine-tuned first if need be), the data
     (dev, or a held-out validation slice of train) and the training features
     with any augmented copies (`distill.run.data`, as a distillation does);
  2. the teacher labels the training features once (cached on disk);
  3. `start`: the teacher's heads, FFN neurons and hidden dims rewired by
     importance (`distill.kd.supernet.rewire`, scores cached): the supernet
     starts as the teacher, and its largest sub-network is the teacher;
  4. the sandwich rule (`distill.train.sandwich`) in the shared loop: each
     step trains the largest, the smallest and `num_sampled` random
     sub-networks of `config.choices` on the teacher's outputs; each
     evaluation scores the largest and the smallest and keeps the best
     supernet in OUTPUT/supernet (a teacher-shaped model directory that
     `load_bert` reads, its `bertnas.supernet` recording the choices);
  5. results.json, and the result cached under
     `cache_root()/supernets/<task>-<key>` (teacher weights, training
     features, settings): a later run with the same key copies it instead of
     training, as the fine-tuned-teacher cache does.

`score_subnets` evaluates sub-networks straight from the supernet's weights,
by default stage by stage (`SCORINGS`): each layer compiles once per width
(and evaluation batch shape) and every sub-network with that width reuses it.

The supernet has no CRF: a CRF teacher's transitions are dropped (a student
distilled from the supernet may add its own).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Iterable

import jax
import numpy as np

from distill.export.hf import export_model
from distill.files import cache_root, config_key, features_fingerprint, owned_output, publish, write_json
from distill.kd.supernet import Subnet, extract, masked, padded, ranking, rewire, width_masks
from distill.model.bert import COMPUTE_DTYPES, build_model
from distill.model.infer import predict, token_cap
from distill.model.store import LoadedBert, read_arch, read_config, resolve_model_dir, save_bert, weights_fingerprint
from distill.run.config import SupernetConfig
from distill.run.data import Stage, read_data, teacher_importance, teacher_labels, training_features
from distill.run.evaluation import evaluate_model
from distill.run.teacher import fine_tuned_teacher
from distill.train.loop import Evaluation, StepSchedule, TrainData, devices_record, fit
from distill.train.runlog import RunLog
from distill.train.sandwich import make_sandwich_step
from distill.train.steps import TrainState
from tasks import metrics
from tasks.base import Task
from tasks.batching import batches
from tasks.features import Features, encode
from tasks.packing import pack_shape, packable, packed_batches, packs_on
from tasks.readers import load_task
from tasks.registry import task_record

log = logging.getLogger(__name__)

SUPERNET_DIR = "supernet"


@dataclasses.dataclass
class Prepared:
    """What the stages before training produce."""

    out: Path
    task: Task
    teacher: LoadedBert
    train: Features
    original: np.ndarray
    """1.0 for the features of original examples, 0.0 for augmented copies."""
    dev: Features
    dev_ex: list
    eval_split: str
    times: Stage


def train_supernet(cfg: SupernetConfig, output_dir: str | Path, *, resume: bool = False,
                   use_cache: bool = True) -> dict[str, Any]:
    """Train a supernet for `cfg.task`; returns the results dict (also OUTPUT/results.json), whose
    `supernet_dir` is the trained supernet."""
    with owned_output(output_dir, "supernet", resume=resume) as out:
        return _train_supernet(cfg, out, resume=resume, use_cache=use_cache)


def _train_supernet(cfg: SupernetConfig, out: Path, *, resume: bool, use_cache: bool) -> dict[str, Any]:
    if resume and (out / "results.json").is_file() and (out / SUPERNET_DIR / "config.json").is_file():
        log.info("%s: already finished; nothing to resume", out)
        return _read_results(out)
    prep = prepare(cfg, out, resume=resume, use_cache=use_cache)
    cfg = dataclasses.replace(cfg, loop=cfg.loop.resolved(prep.train))  # 'auto' packing decided, keyed, saved
    key = run_key(cfg, prep.teacher, prep.train)
    cached = cache_root() / "supernets" / f"{cfg.task}-{key}"
    if use_cache and not resume and (cached / "results.json").is_file():
        log.info("reusing the cached supernet %s", cached)
        out.mkdir(parents=True, exist_ok=True)
        shutil.copytree(cached, out, dirs_exist_ok=True)
        return {**_read_results(out), "cached": str(cached)}
    teacher_params = jax.device_put(prep.teacher.params)
    augmented = prep.original is not None and not prep.original.all()
    labels = teacher_labels(cfg.data_stage(), prep.task, prep.teacher, prep.train, use_cache=use_cache,
                            params=teacher_params, original=prep.original)
    prep.times.labelling = labels.seconds
    teacher_dev = evaluate_model(prep.teacher.model, teacher_params, prep.task, prep.dev, prep.dev_ex,
                                 cfg.eval_batch_size)
    params, hidden_order = start(cfg, prep)
    original = prep.original if augmented else None

    def extras(batch: dict) -> tuple[dict, tuple]:
        if original is not None:  # the gold-label loss reads only the original examples, never their copies
            batch["original"] = np.where(batch["index"] >= 0, original[np.maximum(batch["index"], 0)], 0.0)
        return batch, (labels.gather(batch, ()),)

    progress = _train(cfg, prep, params, hidden_order, extras, key, resume=resume)
    results = _results(cfg, prep, teacher_dev, progress)
    results["stopped_early"] = progress.step < cfg.loop.total_steps(prep.train)  # its time bound, or patience
    write_json(out / "results.json", results)
    timed_out = results["stopped_early"] and cfg.loop.max_seconds > 0  # where the clock, not the key, ended it
    if use_cache and not timed_out:
        publish(out, cached, SUPERNET_DIR)
        log.info("cached the supernet at %s", cached)
    return results


def prepare(cfg: SupernetConfig, out: Path, *, resume: bool, use_cache: bool) -> Prepared:
    """The task, the fine-tuned teacher (checked as a supernet for the choices), the data and features."""
    stage = cfg.data_stage()
    task, data_dir = load_task(cfg.task, cfg.data_dir, cfg.data)
    cfg.choices.check(read_arch(cfg.teacher))  # before any training: fine-tuning keeps the architecture
    train_ex, dev_ex, eval_split = read_data(stage, task, data_dir)
    times = Stage()
    teacher, times.teacher = fine_tuned_teacher(dataclasses.replace(stage, data_dir=data_dir and str(data_dir)), task, out,
                                                resume=resume, use_cache=use_cache)
    cfg.choices.check(teacher.arch)
    train, original, _ = training_features(stage, task, teacher, train_ex, times)
    return Prepared(out, task, teacher, train, original, encode(task, dev_ex, teacher.tokenizer), dev_ex,
                    eval_split, times)


def start(cfg: SupernetConfig, prep: Prepared) -> tuple[dict, list[int]]:
    """The supernet's first weights: the teacher's, rewired by importance on the training features; and
    the teacher hidden dim behind each supernet hidden dim (a student's hidden loss projects through it)."""
    t0 = time.perf_counter()
    scores = teacher_importance(cfg.data_stage(), prep.task, prep.teacher, prep.train)
    params = {k: v for k, v in prep.teacher.params.items() if k != "crf"}
    params = rewire(params, prep.teacher.arch, scores)
    prep.times.init = time.perf_counter() - t0
    return params, ranking(scores["hidden"]).tolist()


def run_key(cfg: SupernetConfig, teacher: LoadedBert, train: Features) -> str:
    """What defines the trained supernet: the key of its cache entry, and of its checkpoints (a resume
    under another key is refused)."""
    return config_key({"teacher": weights_fingerprint(teacher.path), "train": features_fingerprint(train),
                       "settings": cfg.cache_settings()})


def _train(cfg: SupernetConfig, prep: Prepared, params: dict, hidden_order: list[int], extras, key: str, *,
           resume: bool):
    """`fit` with the sandwich step; each evaluation scores the largest and smallest sub-networks."""
    task, arch = prep.task, prep.teacher.arch
    total = cfg.loop.total_steps(prep.train)
    tx = cfg.optimizer.build(params, total, arch.num_layers, arch.groups)
    step = make_sandwich_step(arch, cfg.choices, tx, head=task.kind, num_labels=task.num_labels, kind=task.kind,
                              loss_cfg=cfg.loss, num_sampled=cfg.num_sampled, seed=cfg.loop.seed,
                              precision=cfg.loop.precision, attention_dropout=cfg.loop.attention_dropout)
    ends = {"largest": cfg.choices.largest(arch), "smallest": cfg.choices.smallest(arch)}

    def evaluate(p):
        scores = dict(zip(ends, score_subnets(p, arch, ends.values(), task, prep.dev, prep.dev_ex,
                                              cfg.eval_batch_size, how="exact")))
        return {"score": float(np.mean([s[task.metric] for s in scores.values()])),
                **{f"{name}_{k}": v for name, s in scores.items() for k, v in s.items()}}

    def keep_best(p, best):
        save_bert(prep.out / SUPERNET_DIR, arch, jax.device_get(p), prep.teacher.tokenizer, head=task.kind,
                  labels=task.labels, extra={**task_record(task),
                                             "supernet": {**supernet_meta(cfg), "hidden_order": hidden_order},
                                             "eval": best})

    runlog = RunLog(prep.out, {"supernet": cfg, "teacher_dir": str(prep.teacher.path), "total_steps": total,
                               "largest": ends["largest"], "smallest": ends["smallest"]})
    t0 = time.perf_counter()
    try:
        _, progress = fit(TrainState.create(params, tx), StepSchedule.single(step), TrainData(prep.train, extras),
                          cfg.loop, Evaluation(evaluate, "score", keep_best), runlog,
                          lr_at=cfg.optimizer.schedule_fn(total), run_key=key, resume=resume,
                          desc=f"{task.name} supernet")
    finally:
        prep.times.distill = time.perf_counter() - t0
        runlog.close()
    return progress


def supernet_layer_map(path: str | Path) -> str:
    """The layer map (`SubnetChoices.layer_map`) the supernet in model directory `path` was trained with:
    the supernet layers its sub-networks of each depth run ('uniform' for a directory that records none)."""
    meta = read_config(resolve_model_dir(path)).get("bertnas") or {}
    choices = (meta.get("supernet") or {}).get("choices") or {}
    return str(choices.get("layer_map") or "uniform")


def supernet_meta(cfg: SupernetConfig) -> dict:
    """What `bertnas.supernet` records in the supernet's config.json: the sub-networks it was trained for."""
    return {"choices": dataclasses.asdict(cfg.choices), "num_sampled": cfg.num_sampled}


SCORINGS = ("staged", "masked", "exact")
"""How `score_subnets` runs a sub-network: its extracted student stage by stage (`distill.model.infer.
staged_logits`: each layer compiled once per width, shared by every sub-network with it, and only the
sub-network's own widths computed), masked within its shape's widest sub-network (one compilation per
shape, every head and FFN neuron of the shape computed), or its extracted student compiled whole (once per
architecture)."""


def score_subnets(params, supernet, subnets: Iterable[Subnet], task: Task, features: Features, examples,
                  batch_size: int = 128, *, how: str = "staged", precision: str = "fp32",
                  rows: list[dict] | None = None) -> list[dict]:
    """Each sub-network's task metrics (`tasks.metrics.evaluate`, plus examples/s) with the supernet's
    weights, untrained, computed as `how` says (`SCORINGS`) on `scoring_batches` (`rows`: those batches,
    collated once for many calls). `precision` 'bf16': forwards in bfloat16 compute (a search ranking
    hundreds of candidates; see `mixed_matmul`)."""
    if how not in SCORINGS:
        raise ValueError(f"how: {how!r} is not one of {SCORINGS}")
    dtype = COMPUTE_DTYPES[precision]
    if how != "exact":  # sliced on the host: on a device, each new width would compile its slicing
        params = jax.device_get(params)
    rows = scoring_batches(features, batch_size) if rows is None else rows
    out = []
    for sub in subnets:
        t0 = time.perf_counter()
        if how == "masked":
            model = build_model(padded(supernet, sub.shape).arch(supernet), task.kind, task.num_labels, dtype)
            weights = masked(params, supernet, sub.shape, *width_masks(sub, supernet))
        else:
            model = build_model(sub.arch(supernet), task.kind, task.num_labels, dtype)
            weights = extract(params, supernet, sub)
        outputs = predict(model, jax.device_put(weights), rows, len(features), features.max_length,
                          staged=how == "staged")
        seconds = time.perf_counter() - t0
        out.append({**metrics.evaluate(task, features, examples, outputs), "examples": len(examples),
                    "examples_per_second": len(examples) / max(seconds, 1e-9)})
    return out


def scoring_batches(features: Features, batch_size: int = 128) -> list[dict]:
    """The batches every sub-network is scored on, collated once: packed into one row shape where the task's
    features pack on this backend (`tasks.packing`), so that each stage compiles once per width; else padded
    to the features' fitted length buckets (capped in tokens on one CPU device: `token_cap`)."""
    if packable(features) and packs_on(jax.default_backend(), jax.local_device_count()):
        if (shape := pack_shape(features, batch_size)) is not None:
            return list(packed_batches(features, shape))
    return list(batches(features, batch_size, tokens=token_cap()))


def export_subnet(supernet: LoadedBert, sub: Subnet, out_dir: str | Path, task: Task, *,
                  extra: dict | None = None, hf_layout: bool = False) -> dict:
    """Export a sub-network with its supernet weights as an ordinary student (`export_model`)."""
    params = jax.device_get(extract(supernet.params, supernet.arch, sub))
    return export_model(out_dir, sub.arch(supernet.arch), params, supernet.tokenizer, task, extra=extra,
                        hf_layout=hf_layout)


def _results(cfg: SupernetConfig, prep: Prepared, teacher_dev: dict, progress) -> dict[str, Any]:
    task = prep.task
    return {
        "task": task.name, "metric": task.metric, "eval_split": prep.eval_split,
        "teacher_dir": str(prep.teacher.path), "teacher_dev": teacher_dev, "best": progress.best,
        "history": progress.history, "steps": progress.step, "train_features": len(prep.train),
        "train_examples_per_second": progress.examples_seen / max(progress.train_seconds, 1e-9),
        "seconds": dataclasses.asdict(prep.times), "supernet_dir": str(prep.out / SUPERNET_DIR),
        "supernet": supernet_meta(cfg), **devices_record(cfg.loop, prep.train),
    }


def _read_results(out: Path) -> dict:
    return {**json.loads((out / "results.json").read_text()), "supernet_dir": str(out / SUPERNET_DIR)}
