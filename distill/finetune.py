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

from distill.crf import check_crf
from distill.evaluate import evaluate_model
from distill.export import check_output_path
from distill.loop import LoopConfig, fit, refuse_overwrite
from distill.modeling import init_params
from distill.optim import OptimizerConfig
from distill.runlog import RunLog, cache_root, config_key, file_fingerprint
from distill.teacher import DEFAULT_TEACHER, load_bert, resolve_model_dir, save_bert, weights_fingerprint
from distill.train import TrainState, make_supervised_step
from tasks.datafiles import split_path
from tasks.errors import UserError
from tasks.features import encode
from tasks.readers import load_task, read_split

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    task: str = "sst2"
    teacher: str = DEFAULT_TEACHER
    """Directory, alias ('minilm') or Hub name of the pre-trained BERT."""
    data_dir: str | None = None
    """Folder with the task's files; None: $GLUE_DIR/<TASK> (see tasks.datafiles)."""
    epochs: int = 3
    max_steps: int = 0
    """Stop after this many steps (0: run all epochs)."""
    batch_size: int = 32
    eval_batch_size: int = 128
    optimizer: OptimizerConfig = OptimizerConfig(learning_rate=1e-4)
    reinit_top_layers: int = 0
    """Re-initialise the top k encoder layers (and the pooler) before training."""
    eval_every: int = 0
    """Evaluate on dev every this many steps, besides the end of each epoch (0: epochs only)."""
    patience: int = 0
    """Stop after this many evaluations without improvement (0: never)."""
    train_limit: int | None = None
    """Use only the first N training examples (smoke runs, tests)."""
    dev_limit: int | None = None
    checkpoint_every: int = 500
    """Save a resumable checkpoint every this many steps (and at each evaluation)."""
    seed: int = 0
    crf: bool = False
    """A linear-chain CRF over the tags (token-tagging tasks only)."""

    def __post_init__(self):
        self.loop()  # validates the loop settings
        if self.eval_batch_size < 1:
            raise UserError("eval_batch_size: must be >= 1")
        if self.reinit_top_layers < 0:
            raise UserError(f"reinit_top_layers: must be >= 0, got {self.reinit_top_layers}")

    def loop(self) -> LoopConfig:
        return LoopConfig(
            epochs=self.epochs,
            max_steps=self.max_steps,
            batch_size=self.batch_size,
            eval_every=self.eval_every,
            patience=self.patience,
            checkpoint_every=self.checkpoint_every,
            seed=self.seed,
        )

    def cache_settings(self) -> dict[str, Any]:
        """The settings that change the result (not where data or output live)."""
        d = dataclasses.asdict(self)
        for k in ("data_dir", "teacher", "eval_batch_size", "checkpoint_every"):
            d.pop(k)
        if not d["crf"]:  # the keys of teachers cached before the flag existed stay valid
            d.pop("crf")
        return d


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
    an output directory that already holds checkpoints is refused rather than
    overwritten.
    """
    out = check_output_path(output_dir)
    task, data_dir = load_task(cfg.task, cfg.data_dir)
    check_crf(task, cfg.crf)
    train_ex = read_split(task, "train", data_dir, limit=cfg.train_limit)
    dev_ex = read_split(task, "dev", data_dir, limit=cfg.dev_limit)
    teacher_dir = resolve_model_dir(cfg.teacher)
    data_files = [split_path(task, s, data_dir) for s in ("train", "dev")]
    cached = _cache_dir(cfg, teacher_dir, data_files)
    if resume and (out / "results.json").is_file() and (out / "teacher" / "config.json").is_file():
        # A finished run: resuming it changes nothing (and keeps the teacher's bytes, which keys depend on).
        log.info("%s: already finished; nothing to resume", out)
        return {**_read_json(out / "results.json"), "teacher_dir": str(out / "teacher")}
    if use_cache and not resume and (cached / "results.json").is_file():
        log.info("reusing the cached fine-tuned teacher %s", cached)
        out.mkdir(parents=True, exist_ok=True)
        shutil.copytree(cached, out, dirs_exist_ok=True)
        return {**_read_json(cached / "results.json"), "cached": str(cached), "teacher_dir": str(out / "teacher")}
    refuse_overwrite(out, resume)
    teacher = load_bert(teacher_dir, head=task.kind, num_labels=task.num_labels, seed=cfg.seed, crf=cfg.crf)

    if task.max_length > teacher.arch.max_position_embeddings:
        raise UserError(
            f"task {task.name} uses sequences of {task.max_length} tokens, but the teacher {cfg.teacher} "
            f"has only {teacher.arch.max_position_embeddings} positions"
        )
    model = teacher.model
    params = teacher.params
    if cfg.reinit_top_layers:
        fresh = init_params(model, jax.random.key(cfg.seed + 1))
        params = reinit_top(params, fresh, teacher.arch.num_layers, cfg.reinit_top_layers, teacher.arch.groups)

    t_enc = time.perf_counter()
    train = encode(task, train_ex, teacher.tokenizer)
    dev = encode(task, dev_ex, teacher.tokenizer)
    log.info("encoded %d train / %d dev features in %.1fs", len(train), len(dev), time.perf_counter() - t_enc)
    loop = cfg.loop()
    total, _ = loop.total_steps(train)
    tx = cfg.optimizer.build(params, total, teacher.arch.num_layers, teacher.arch.groups)
    step_fn = make_supervised_step(model, tx, task.kind, task.labels if cfg.crf else ())
    runlog = RunLog(out, {"finetune": cfg, "task": task.name, "teacher_dir": str(teacher.path), "total_steps": total})
    t_start = time.time()

    def on_best(params, result):
        save_bert(
            out / "teacher",
            teacher.arch,
            jax.device_get(params),
            teacher.tokenizer,
            head=task.kind,
            labels=task.labels,
            extra={"task": task.name, "max_length": task.max_length, "dev": result, "source": cfg.teacher},
        )

    _, progress = fit(
        TrainState.create(params, tx),
        lambda step: step_fn,
        train,
        loop,
        out=out,
        runlog=runlog,
        lr_at=cfg.optimizer.schedule_fn(total),
        evaluate=lambda p: evaluate_model(model, p, task, dev, dev_ex, cfg.eval_batch_size),
        metric=task.metric,
        on_best=on_best,
        resume=resume,
        desc=task.name,
    )

    results = {
        "task": task.name,
        "teacher": cfg.teacher,
        "metric": task.metric,
        "best": progress.best,
        "history": progress.history,
        "steps": progress.step,
        "train_examples": len(train_ex),
        "train_examples_per_second": progress.examples_seen / max(progress.train_seconds, 1e-9),
        "wall_seconds": time.time() - t_start,
        "teacher_dir": str(out / "teacher"),
        "num_params": teacher.arch.num_params(task.kind, task.num_labels, crf=cfg.crf),
    }
    runlog.results(results)
    runlog.close()
    if use_cache:
        _store(out, cached)
    return results


def _store(out: Path, cached: Path) -> None:
    """Copy the run's teacher and results into the cache, atomically."""
    tmp = cached.with_name(f".{cached.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shutil.copytree(out / "teacher", tmp / "teacher")
    for name in ("config.json", "results.json"):
        shutil.copy2(out / name, tmp / name)
    shutil.rmtree(cached, ignore_errors=True)
    tmp.rename(cached)
    log.info("cached the fine-tuned teacher at %s", cached)


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text())

