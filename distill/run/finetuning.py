"""Fine-tune a BERT teacher on a task, evaluate on dev, keep the best, cache it.

`finetune(config, output_dir)` writes to `output_dir`: config.json,
metrics.jsonl, tb/, results.json and `teacher/` (the best fine-tuned teacher
in the Hugging Face layout). The result is also cached under
`cache_root()/teachers/<task>-<key>`, keyed by (teacher weights, task, data
files, settings), and later runs with the same key reuse it.

With `crf`, a token-tagging teacher gets a linear-chain CRF over its tags,
trained on the negative CRF log-likelihood under the task's IOB2 constraints
and evaluated with constrained Viterbi decoding.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import jax

from distill.files import cache_root, config_key, file_fingerprint, owned_output, publish
from distill.model.bert import in_precision, init_params
from distill.model.crf import check_crf
from distill.model.store import load_bert, resolve_model_dir, save_bert, weights_fingerprint
from distill.run.config import FinetuneConfig
from distill.run.evaluation import evaluate_model
from distill.train.loop import Evaluation, StepSchedule, TrainData, devices_record, fit
from distill.train.runlog import RunLog
from distill.train.steps import TrainState, make_supervised_step
from tasks.errors import UserError
from tasks.features import encode
from tasks.readers import data_files, load_task, read_split
from tasks.registry import task_record

log = logging.getLogger(__name__)


def reinit_top(params: dict, fresh: dict, num_layers: int, k: int, groups: tuple[int, ...] | None = None) -> dict:
    """Replace the top `k` encoder layers (and the pooler) by fresh values; with shared layers (`groups`,
    each layer's parameter group), the groups those layers use."""
    if k > num_layers:
        raise UserError(f"reinit_top_layers: {k} exceeds the teacher's {num_layers} layers")
    params = dict(params)
    encoder = dict(params["encoder"])
    for i in sorted({groups[i] if groups is not None else i for i in range(num_layers - k, num_layers)}):
        encoder[f"layer_{i}"] = fresh["encoder"][f"layer_{i}"]
    params["encoder"] = encoder
    if k and "pooler" in params:
        params["pooler"] = fresh["pooler"]
    return params


def _cache_dir(cfg: FinetuneConfig, teacher_dir: Path, data_files: list[Path]) -> Path:
    key = config_key(
        {
            "teacher": weights_fingerprint(teacher_dir),
            "data": file_fingerprint(*data_files),
            "settings": cfg.cache_settings(),
        }
    )
    return cache_root() / "teachers" / f"{cfg.task}-{key}"


def finetune(
    cfg: FinetuneConfig, output_dir: str | Path, *, use_cache: bool = True, resume: bool = False
) -> dict[str, Any]:
    """Fine-tune `cfg.teacher` on `cfg.task`; returns the results dict.

    With `resume`, continues from the last complete checkpoint in
    `output_dir/checkpoints` (same data order and learning rate). Without it,
    an output directory that holds anything (an earlier run included) is
    refused rather than written into (`distill.files.owned_output`).
    """
    with owned_output(output_dir, "finetune", resume=resume) as out:
        return _finetune(cfg, out, use_cache=use_cache, resume=resume)


def _finetune(cfg: FinetuneConfig, out: Path, *, use_cache: bool, resume: bool) -> dict[str, Any]:
    task, data_dir = load_task(cfg.task, cfg.data_dir, cfg.data)
    check_crf(task, cfg.crf)
    train_ex = read_split(task, "train", data_dir, limit=cfg.train_limit)
    dev_ex = read_split(task, "dev", data_dir, limit=cfg.dev_limit)
    teacher_dir = resolve_model_dir(cfg.teacher)
    cached = _cache_dir(cfg, teacher_dir, data_files(task, ("train", "dev"), data_dir))
    done = _finished(out, cached, resume=resume, use_cache=use_cache)
    if done is not None:
        return done
    teacher, params = _start(cfg, task, teacher_dir)
    results = _train(cfg, task, teacher, params, train_ex, dev_ex, out, resume=resume)
    if use_cache:
        publish(out, cached, "teacher")
        log.info("cached the fine-tuned teacher at %s", cached)
    return results


def _finished(out: Path, cached: Path, *, resume: bool, use_cache: bool) -> dict[str, Any] | None:
    """The results when nothing is left to train: a finished run being resumed, or a cache hit (copied to
    `out`, which `owned_output` has checked is empty); else None."""
    if resume and (out / "results.json").is_file() and (out / "teacher" / "config.json").is_file():
        # A finished run: resuming it changes nothing (and keeps the teacher's bytes, which keys depend on).
        log.info("%s: already finished; nothing to resume", out)
        return {**_read_json(out / "results.json"), "teacher_dir": str(out / "teacher")}
    if use_cache and not resume and (cached / "results.json").is_file():
        log.info("reusing the cached fine-tuned teacher %s", cached)
        out.mkdir(parents=True, exist_ok=True)
        shutil.copytree(cached, out, dirs_exist_ok=True)
        return {**_read_json(cached / "results.json"), "cached": str(cached), "teacher_dir": str(out / "teacher")}
    return None


def _start(cfg: FinetuneConfig, task, teacher_dir: Path):
    """The pre-trained teacher with a fresh head for the task, and its starting parameters."""
    teacher = load_bert(teacher_dir, head=task.kind, num_labels=task.num_labels, seed=cfg.loop.seed, crf=cfg.crf)
    if task.max_length > teacher.arch.max_position_embeddings:
        raise UserError(
            f"task {task.name} uses sequences of {task.max_length} tokens, but the teacher {cfg.teacher} "
            f"has only {teacher.arch.max_position_embeddings} positions"
        )
    params = teacher.params
    if cfg.reinit_top_layers:
        fresh = init_params(teacher.model, jax.random.key(cfg.loop.seed + 1))
        params = reinit_top(params, fresh, teacher.arch.num_layers, cfg.reinit_top_layers, teacher.arch.groups)
    return teacher, params


def _train(cfg: FinetuneConfig, task, teacher, params, train_ex, dev_ex, out: Path, *, resume: bool) -> dict:
    """Encode, `fit` with the supervised step (the best teacher saved to OUT/teacher as it comes), results."""
    t_enc = time.perf_counter()
    train = encode(task, train_ex, teacher.tokenizer)
    dev = encode(task, dev_ex, teacher.tokenizer)
    log.info("encoded %d train / %d dev features in %.1fs", len(train), len(dev), time.perf_counter() - t_enc)
    cfg = dataclasses.replace(cfg, loop=cfg.loop.resolved(train))  # 'auto' packing decided and saved as such
    total = cfg.loop.total_steps(train)
    tx = cfg.optimizer.build(params, total, teacher.arch.num_layers, teacher.arch.groups)
    model = in_precision(teacher.model, cfg.loop.precision, attention_dropout=cfg.loop.attention_dropout)
    step = make_supervised_step(model, tx, task.kind, task.labels if cfg.crf else (), grad_accum=cfg.loop.grad_accum)
    runlog = RunLog(out, {"finetune": cfg, "task": task.name, "teacher_dir": str(teacher.path), "total_steps": total})
    t_start = time.time()

    def keep_best(params, result):
        extra = {**task_record(task), "dev": result, "source": cfg.teacher}
        save_bert(out / "teacher", teacher.arch, jax.device_get(params), teacher.tokenizer, head=task.kind,
                  labels=task.labels, extra=extra)

    evaluation = Evaluation(lambda p: evaluate_model(teacher.model, p, task, dev, dev_ex, cfg.eval_batch_size),
                            task.metric, keep_best)
    try:
        _, progress = fit(TrainState.create(params, tx), StepSchedule.single(step), TrainData(train), cfg.loop,
                          evaluation, runlog, lr_at=cfg.optimizer.schedule_fn(total), resume=resume, desc=task.name)
        results = {
            "task": task.name, "teacher": cfg.teacher, "metric": task.metric, "best": progress.best,
            "history": progress.history, "steps": progress.step, "train_examples": len(train_ex),
            "train_examples_per_second": progress.examples_seen / max(progress.train_seconds, 1e-9),
            "wall_seconds": time.time() - t_start, "teacher_dir": str(out / "teacher"),
            "num_params": teacher.arch.num_params(task.kind, task.num_labels, crf=cfg.crf),
            **devices_record(cfg.loop, train),
        }
        runlog.results(results)
    finally:
        runlog.close()
    return results


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text())

