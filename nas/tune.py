"""Architecture search for one task with Ray Tune: `search(config, output_dir)`.

  1. the teacher is fine-tuned on the task (or taken from the cache);
  2. a validation slice is carved from the training set (candidates are
     compared on it; dev only reports the final front), the teacher labels
     the rest once into the on-disk cache that every trial reads;
  3. the teacher's latency is measured at the task's typical length;
  4. Ray Tune runs the trials (`nas.trial.run_trial`): Optuna samples the
     space (multi-objective: validation metric up, latency down), ASHA stops
     weak candidates after their first evaluations, a failed trial is
     recorded and the search goes on;
  5. the most accurate candidate at least `target_speedup` times faster than
     the teacher is trained again, longer and on augmented data, in the
     time the trials left (`nas.final`);
  6. the Pareto front (the final student included) is evaluated on dev and
     exported to `OUTPUT/export/`, with `results.csv`, `results.json`,
     `pareto.png` and a leaderboard.

With `strategy='supernet'` stages 4 and 5 are `nas.oneshot`'s instead: one
supernet trained for the task, every candidate scored with its weights in a
Tune trial, the front measured, the best candidate at each target speedup
trained further.

Local by default (Ray on this machine's CPUs); `address='auto'` or
`$RAY_ADDRESS` joins a cluster. `search(..., resume=True)` continues an
interrupted search with Tuner.restore: finished trials are not re-run.
This package is the only one that imports ray.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from distill.cli.host import cpu_info, retain_freed_memory_env
from distill.export.card import check_hub, command_line, push_to_hub, write_card
from distill.export.onnx import require as require_onnx
from distill.files import (
    cache_root,
    check_output_path,
    enable_compilation_cache,
    export_path,
    owned_output,
    to_jsonable,
    write_json,
)
from distill.model.crf import check_crf
from distill.model.store import read_arch
from distill.run import (
    AugmentConfig,
    DistillConfig,
    LoopConfig,
    LossConfig,
    OptimizerConfig,
    Stage,
    evaluate_dir,
    evaluate_model,
    fine_tuned_teacher,
    read_data,
    teacher_importance,
    teacher_labels,
    training_features,
)
from nas import local, oneshot, report
from nas.config import Constraints, SearchConfig
from nas.cost import Cost, CostModel, device_name, typical_length
from nas.exports import front_readme, onnx_copies
from nas.final import quantized_rows, train_final
from nas.space import SearchSpace, SpaceError, get_space
from nas.trial import OBJECTIVE_LATENCY, TrialSetup, result_trial_id, run_trial, sampled_arch, trial_status
from tasks.errors import UserError
from tasks.features import encode
from tasks.readers import load_task, read_split
from tasks.userdata import DataSpec

log = logging.getLogger(__name__)

EXPERIMENT = "search"
CONFIG_FILE = "search_config.json"


@dataclasses.dataclass
class Sampler:
    """Optuna define-by-run space for OptunaSearch: only samples (picklable, so Tuner.restore works)."""

    space: SearchSpace
    teacher_arch: Any

    def __call__(self, trial) -> dict:
        return self.space.sample(trial, self.teacher_arch)

    def candidate(self, config: dict) -> tuple:
        """Which candidate a sampled `config` is: its student's name and its knobs (as
        `report.distinct_candidates` counts them)."""
        return (self.space.arch(config, self.teacher_arch).name, *self.space.knobs(config).values())


def save_config(out: Path, cfg: SearchConfig) -> None:
    write_json(out / CONFIG_FILE, to_jsonable(cfg))


def load_config(out: Path) -> SearchConfig:
    path = Path(out) / CONFIG_FILE
    if not path.is_file():
        raise UserError(f"{out}: no {CONFIG_FILE}; not a search output directory")
    d = json.loads(path.read_text())
    if "validation_split" not in d:  # drawn at random before tasks.holdout: its scores are on another slice
        raise UserError(f"{path}: this search was started by an older bertnas, whose validation slice was a random "
                        "draw of training examples (not whole ones); its scores and supernet do not carry over: start "
                        "a new search in another --output")
    d["constraints"] = Constraints(**d["constraints"])
    d["data"] = DataSpec(**d.get("data", {}))  # searches from before the field read the benchmark files
    d.setdefault("strategy", "trials")  # searches from before the field (and the supernet default) were trials
    d.setdefault("final_lr", None)  # searches from before the field: the finals at the space's first choice
    d.setdefault("local_rounds", 0)  # searches from before the field: their targets picked without one
    return SearchConfig(**d)


def base_distill_config(cfg: SearchConfig, data_dir: Path | None) -> DistillConfig:
    """What every trial shares: data, validation slice, one trial's training budget."""
    return DistillConfig(
        task=cfg.task,
        teacher=cfg.teacher,
        data_dir=data_dir and str(data_dir),
        data=cfg.data,
        loss=LossConfig(hard_weight=0.5),
        augment=AugmentConfig(copies=cfg.augment, seed=cfg.seed),
        optimizer=OptimizerConfig(learning_rate=2e-4),
        # Trials and finals read the labels the search planned and paid for (its budget times cached steps).
        teacher_outputs="cached",
        loop=LoopConfig(
            epochs=1, max_steps=cfg.trial_steps, batch_size=cfg.batch_size, eval_every=cfg.eval_every,
            checkpoint_every=cfg.eval_every, log_every=min(50, cfg.eval_every), seed=cfg.seed,
            precision=cfg.precision, attention_dropout=cfg.attention_dropout, packing=cfg.packing,
        ),
        train_limit=cfg.train_limit,
        dev_limit=cfg.dev_limit,
        validation=cfg.validation,
        teacher_epochs=cfg.teacher_epochs,
        crf=cfg.crf,
        hf_layout=cfg.hf_layout,
    )


def search(cfg: SearchConfig, output_dir: str | Path, *, resume: bool = False) -> dict[str, Any]:
    """Run (or, with `resume`, continue) a search; returns the summary also written to results.json.
    Ctrl+C stops it (KeyboardInterrupt) with everything needed to resume it saved."""
    what = "--resume" if resume else "--output"
    with owned_output(check_output_path(output_dir, what).resolve(), "search", resume=resume, what=what) as out:
        try:
            return _search(cfg, out, resume=resume)
        except KeyboardInterrupt:
            if (out / CONFIG_FILE).is_file():
                log.warning("search interrupted; continue it with: python scripts/search.py --resume %s", out)
            raise


@dataclasses.dataclass(frozen=True)
class TrialHandle:
    """What a trial leaves besides its row, for the stages after the trials: the sampled candidate (the
    final run trains it again) and its best checkpoint (a Tune Checkpoint, file system included, or None;
    the front's export copies it). Rows hold only plain values; handles are looked up by trial id."""

    config: dict
    checkpoint: Any = None
    export: Callable[[Path], None] | None = None
    """Writes the candidate's export to a directory (a supernet estimate: its weights sliced from the supernet)."""


@dataclasses.dataclass(frozen=True)
class Prepared:
    """What the preparation (stages 1-3) leaves to the trials and the report."""

    task: Any
    data_dir: Path | None
    """None for the generic tasks (their files are in `base.data`)."""
    base: DistillConfig  # what every trial shares, the fine-tuned teacher's absolute path included
    teacher: Any  # the fine-tuned teacher (`fine_tuned_teacher`)
    seq_len: int  # the task's typical length, at which latencies are measured
    teacher_cost: Cost
    teacher_eval: dict  # the teacher's scores on the validation slice
    teacher_row: dict  # the teacher's line in results.json and the leaderboard
    val_features: Any  # the validation slice, encoded
    val_examples: list
    forwards: dict  # teacher forwards spent labelling for the trials, and the training features
    seconds: dict  # teacher, labelling, data_and_importance, teacher_cost_and_eval
    packed: bool  # whether the search's training batches pack (`LoopConfig.packs` of the training features)
    cold_seconds: float = 0.0  # what the teacher and labelling took when computed (this run, or the cached one's)


def _search(cfg: SearchConfig, out: Path, *, resume: bool) -> dict[str, Any]:
    """The stages of the module docstring, in order, each timed into the summary's `seconds`."""
    start = time.time()
    cfg, space, task, data_dir = _settle(cfg, out, resume=resume)
    init_ray(cfg)
    enable_compilation_cache()
    prep = _prepare(cfg, task, data_dir, out, resume=resume)
    seconds = dict(prep.seconds)
    setup = _trial_setup(cfg, prep, space)
    deadline = start + cfg.budget_minutes * 60 - 60  # a minute for the front's export
    stages = _oneshot_stages if cfg.strategy == "supernet" else _trial_stages
    rows, handles, finals, extra = stages(cfg, setup, prep, out, deadline=deadline, resume=resume, seconds=seconds)
    prep = _with_teacher_latency(prep, extra.get("teacher_latency"))
    t0 = time.perf_counter()
    rows, front, exported = _front_and_exports(cfg, setup, prep, rows, handles, out)
    seconds["export"] = time.perf_counter() - t0
    seconds["total"] = time.time() - start
    summary = {**_summary(prep, space, rows, front, finals, seconds), "strategy": cfg.strategy,
               "exported": [r["trial_id"] for r in exported if r.get("export")], **extra}
    _write_reports(out, prep, rows, front, exported, summary)
    if cfg.push_to_hub:  # last: a failed upload (one line naming the flag) keeps every file written above
        summary["hub"] = push_to_hub(out / "export", cfg.push_to_hub)
        write_json(out / "results.json", {**json.loads((out / "results.json").read_text()), "hub": summary["hub"]})
        log.info("pushed the exported front to %s", summary["hub"])
    return summary


def _with_teacher_latency(prep: Prepared, latency: dict | None) -> Prepared:
    """`prep` with the teacher's batch-1 latency the stages divided the speedups by (the median of its
    measurements, `latency`), for the exports, int8 copies and reports; as it was without one."""
    if not latency:
        return prep
    ms = latency["latency_ms"]  # batch-1 only: its p95 and batch latency stay the preparation's measurement
    return dataclasses.replace(prep, teacher_cost=dataclasses.replace(prep.teacher_cost, latency_ms=ms),
                               teacher_row={**prep.teacher_row, "latency_ms": ms,
                                            "latency_samples_ms": latency["samples_ms"]})


def _trial_stages(cfg: SearchConfig, setup: TrialSetup, prep: Prepared, out: Path, *, deadline: float, resume: bool,
                  seconds: dict) -> tuple[list[dict], dict[str, TrialHandle], list[dict], dict]:
    """Stages 4-5 of the trials strategy: every candidate distilled for a few hundred steps, then the chosen
    one trained longer. Returns the rows, their handles, the final rows and what the summary adds."""
    t0 = time.perf_counter()
    setup, teacher_latency = _trials_teacher_latency(cfg, setup, prep, out, resume=resume)
    seconds["teacher_latency"] = time.perf_counter() - t0
    budget = _trial_budget(cfg, deadline)
    t0 = time.perf_counter()
    trainable = tune_trainable(cfg, run_trial, setup)
    grid = _run_tune(cfg, trainable, setup, out, resume=resume, time_budget_s=budget, asha=cfg.scheduler == "asha")
    seconds["trials"] = time.perf_counter() - t0
    rows, handles = _rows(grid, setup)
    finals = []
    if cfg.final_steps:
        t0 = time.perf_counter()
        final = _final(cfg, setup, rows, handles, out, deadline=deadline, resume=resume)
        seconds["final"] = time.perf_counter() - t0
        finals = [final] if final is not None else []
    return rows + finals, handles, finals, {"teacher_latency": teacher_latency} if teacher_latency else {}


def _trials_teacher_latency(cfg: SearchConfig, setup: TrialSetup, prep: Prepared, out: Path, *,
                            resume: bool) -> tuple[TrialSetup, dict | None]:
    """The trials strategy's teacher latency where its trials measure on this machine's kind of device (CPU
    trials of a local Ray): the teacher measured twice more in one child process, the median of the three
    with the preparation's (a resumed search's recorded ones, `nas.oneshot.teacher_samples`); `setup` with
    it, and the record. Elsewhere (a cluster, GPU or TPU trials) each trial divides by the teacher measured
    on its own device, and `setup` is returned as it was, with None."""
    if cfg.address is not None or cfg.gpus_per_trial or cfg.tpus_per_trial:
        return setup, None
    first, again = oneshot.teacher_samples(out, prep.teacher_cost.latency_ms, resume=resume,
                                           scored=resume and _restorable(cfg, out))
    model = CostModel(setup.head, setup.num_labels, setup.seq_len, threads=setup.latency_threads)
    more = model.costs_beside([], setup.teacher_arch)[1] if again else []
    latency = oneshot.record_teacher_latency(out, [*first, *more])
    log.info("teacher latency: %.2f ms (median of %s)", latency["latency_ms"],
             ", ".join(f"{t:.2f}" for t in latency["samples_ms"]))
    return dataclasses.replace(setup, teacher_latency_ms=latency["latency_ms"]), latency


def _oneshot_stages(cfg: SearchConfig, setup: TrialSetup, prep: Prepared, out: Path, *, deadline: float,
                    resume: bool, seconds: dict) -> tuple[list[dict], dict[str, TrialHandle], list[dict], dict]:
    """Stages of the supernet strategy (`nas.oneshot`, `nas.local`): supernet, latency predictor, scoring
    trials, the front measured, a local search around each target (the front measured again), the targets
    trained. Candidates are architectures only: the knobs, which no supernet
    score depends on, are each space's first choice (`SearchSpace.architecture_only`)."""
    setup = dataclasses.replace(setup, space=setup.space.architecture_only())
    space, teacher_arch = setup.space, prep.teacher.arch
    choices = space.subnet_choices(teacher_arch)
    left = deadline - time.time()
    finals_reserve = cfg.final_share * left if cfg.final_steps else 0.0
    # Planned as a cold run would be: a repeat with the teacher and its labels cached trains the same supernet
    # (a cache hit too), and the time it saved goes to scoring and the finals.
    saved = max(0.0, prep.cold_seconds - prep.seconds["teacher"] - prep.seconds["labelling"])
    plan = oneshot.supernet_plan(cfg, choices, teacher_arch, setup.seq_len, prep.teacher_cost, out,
                                 seconds=oneshot.SUPERNET_SHARE * max(0.0, left - saved), resume=resume,
                                 packed=prep.packed)
    t0 = time.perf_counter()
    supernet = oneshot.train_stage(cfg, prep.base, choices, plan, out, resume=resume)
    seconds["supernet"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    first, again = oneshot.teacher_samples(out, prep.teacher_cost.latency_ms, resume=resume,
                                           scored=resume and _restorable(cfg, out))
    predictor, teacher_ms = oneshot.fit_latency(cfg, setup, space, choices, first, again=again)
    teacher_latency = oneshot.record_teacher_latency(out, teacher_ms)
    seconds["latency_design"] = time.perf_counter() - t0
    score_setup = oneshot.ScoreSetup(
        space=space, choices=choices, teacher_arch=teacher_arch, supernet_dir=supernet["supernet_dir"],
        task=prep.task.name, val_examples=tuple(prep.val_examples), constraints=cfg.constraints,
        metric=setup.metric, task_metric=setup.task_metric, predictor=predictor,
        teacher_latency_ms=teacher_latency["latency_ms"], head=setup.head, num_labels=setup.num_labels,
        seq_len=setup.seq_len, eval_batch_size=prep.base.eval_batch_size, cache_root=setup.cache_root,
        precision=cfg.precision,
    )
    t0 = time.perf_counter()
    trainable = tune_trainable(cfg, oneshot.score_trial, score_setup)
    scoring_budget = max(30.0, deadline - time.time() - finals_reserve - oneshot.front_reserve(cfg.num_samples))
    grid = _run_tune(cfg, trainable, setup, out, resume=resume, time_budget_s=scoring_budget, asha=False,
                     reuse_actors=True)
    rows, configs = oneshot.score_rows(grid, score_setup)
    seconds["scoring"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    measured = oneshot.measure_front(rows, configs, setup, space, cfg.constraints, teacher_latency["latency_ms"])
    seconds["measure_front"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    rows, configs, near = _local_stage(cfg, setup, score_setup, rows, configs, out, deadline=deadline,
                                       resume=resume, design_error=measured["error"])
    seconds["local_search"] = time.perf_counter() - t0
    finals = []
    if cfg.final_steps:
        t0 = time.perf_counter()
        finals = oneshot.train_targets(cfg, setup, rows, configs, out, supernet=supernet, choices=choices,
                                       deadline=deadline, resume=resume)
        seconds["final"] = time.perf_counter() - t0
    handles = {tid: TrialHandle(config=c, export=functools.partial(
        oneshot.export_candidate, supernet["supernet_dir"], choices, space.arch(c, teacher_arch), prep.task,
        hf_layout=cfg.hf_layout)) for tid, c in configs.items()}
    extra = {
        "supernet": {**{k: supernet.get(k) for k in ("supernet_dir", "steps", "train_examples_per_second", "best",
                                                     "cached")}, "plan": plan},
        "latency_predictor": {"design": predictor.measured, "loo_error": predictor.error,
                              "front_measured": measured["measured"], "front_error": measured["error"]},
        "teacher_latency": teacher_latency,
        "local_search": near,
    }
    return rows + finals, handles, finals, extra


def _local_stage(cfg: SearchConfig, setup: TrialSetup, score_setup: oneshot.ScoreSetup, rows: list[dict],
                 configs: dict[str, dict], out: Path, *, deadline: float, resume: bool,
                 design_error: float | None) -> tuple[list[dict], dict[str, dict], dict]:
    """The local search around the targets (`nas.local`) and the front measured again with its candidates:
    the rows and configs with theirs, and the stage's summary."""
    budget = local.LOCAL_SHARE * max(0.0, deadline - time.time()) - local.measure_reserve(cfg.targets)
    near, near_configs, summary = local.search_around_targets(
        rows, score_setup, cfg.targets, rounds=cfg.local_rounds, seconds=max(0.0, budget), out=out, resume=resume,
        design_error=design_error)
    rows, configs = rows + near, {**configs, **near_configs}
    again = oneshot.measure_front(rows, configs, setup, setup.space, cfg.constraints, score_setup.teacher_latency_ms)
    return rows, configs, {**summary, "front_measured": again["measured"], "front_error": again["error"]}


def optuna_storage(url: str):
    """The Optuna storage at `url` (created if new: an SQLite file, a database's tables); one line naming
    the flag when it cannot be opened."""
    import optuna  # here, as in make_sampler: the command starts without Optuna

    try:
        return optuna.storages.RDBStorage(url)
    except Exception as e:  # sqlalchemy's errors for a bad URL, a missing driver, an unreachable server
        raise UserError(f"--optuna-storage {url}: cannot open it: {str(e).splitlines()[0][:200]}") from None


def _settle(cfg: SearchConfig, out: Path, *, resume: bool) -> tuple[SearchConfig, SearchSpace, Any, Path]:
    """The config the search runs with (on resume, the saved one), its space, task and data directory. Bad
    input (an earlier search in `out`, an invalid space or teacher directory) fails here, before any
    fine-tuning or trial; a new search saves its config."""
    if resume:
        cfg = load_config(out)
    cfg = dataclasses.replace(cfg, data=cfg.data.resolved())  # trials run in directories of their own
    task, data_dir = load_task(cfg.task, cfg.data_dir, cfg.data)
    check_crf(task, bool(cfg.crf))
    space = get_space(cfg.space)
    data_dir = data_dir and Path(data_dir).resolve()
    try:
        teacher_arch = read_arch(cfg.teacher)
        space.validate(teacher_arch)
        if cfg.strategy == "supernet":
            space.subnet_choices(teacher_arch)
            if space.size(teacher_arch) < 3:
                raise SpaceError(f"the supernet strategy needs >= 3 distinct students to fit its latency model; "
                                 f"the space has {space.size(teacher_arch)}")
    except SpaceError as e:
        raise SpaceError(f"--space {cfg.space}: {e}") from None
    if cfg.storage_path and "://" not in cfg.storage_path:
        cfg = dataclasses.replace(cfg, storage_path=str(Path(cfg.storage_path).resolve()))
    if cfg.optuna_storage and not resume:  # a bad URL fails now, not after the teacher's fine-tuning
        optuna_storage(cfg.optuna_storage)
    if cfg.push_to_hub:  # offline, no token or a bad name: now, not after the hour's work (a resume too)
        check_hub(cfg.push_to_hub)
    if cfg.export_onnx:  # the onnx extra missing: likewise
        try:
            require_onnx("jax2onnx", "onnx", "onnxruntime")
        except UserError as e:
            raise UserError(f"--export-onnx: {e}") from None
    if not resume:
        # At most a tenth of the training set is held out (2,000 would be 35% of STS-B).
        n_train = len(read_split(task, "train", data_dir, limit=cfg.train_limit))
        cfg = dataclasses.replace(cfg, validation=max(1, min(cfg.validation, n_train // 10)))
        out.mkdir(parents=True, exist_ok=True)
        save_config(out, cfg)
    return cfg, space, task, data_dir


def _prepare(cfg: SearchConfig, task, data_dir: Path, out: Path, *, resume: bool) -> Prepared:
    """Stages 1-3: the teacher fine-tuned (or taken from the cache); the validation slice carved and the
    rest labelled once by the teacher into the cache every trial reads, with the importance scores every
    trial initialises from; the teacher's cost at the typical length and its validation and dev scores."""
    seconds: dict[str, float] = {}
    base = base_distill_config(cfg, data_dir)
    teacher, seconds["teacher"] = fine_tuned_teacher(base, task, out, resume=resume)
    base = dataclasses.replace(base, teacher=str(Path(teacher.path).resolve()))  # trials run in other dirs
    t0 = time.perf_counter()
    train_ex, val_ex, _ = read_data(base, task, data_dir)
    train, _, _ = training_features(base, task, teacher, train_ex, Stage())
    cache = teacher_labels(base, task, teacher, train)
    seconds["labelling"] = cache.seconds
    teacher_importance(base, task, teacher, train)  # every trial initialises from these scores
    seconds["data_and_importance"] = time.perf_counter() - t0 - cache.seconds
    seq_len = typical_length(train.lengths)
    t0 = time.perf_counter()
    cost = CostModel(task.kind, task.num_labels, seq_len, threads=cfg.latency_threads).cost(teacher.arch)
    dev = evaluate_dir(teacher.path, task.name, data_dir=data_dir and str(data_dir), limit=cfg.dev_limit,
                       spec=cfg.data)
    val_features = encode(task, val_ex, teacher.tokenizer)
    val = evaluate_model(teacher.model, teacher.params, task, val_features, val_ex, base.eval_batch_size)
    seconds["teacher_cost_and_eval"] = time.perf_counter() - t0
    row = _teacher_row(teacher, cost, val[task.metric], dev[task.metric])
    log.info("teacher %s: dev %s %.4f, %.2f ms at batch 1, length %d", teacher.arch.name, task.metric,
             row["dev_metric"], cost.latency_ms, seq_len)
    return Prepared(
        task=task, data_dir=data_dir, base=base, teacher=teacher, seq_len=seq_len, teacher_cost=cost,
        teacher_eval=val, teacher_row=row, val_features=val_features, val_examples=val_ex,
        forwards={"trials": cache.labelled, "train_features": len(train)}, seconds=seconds,
        packed=base.loop.packs(train),
        cold_seconds=_teacher_seconds(out, seconds["teacher"]) + max(cache.seconds, cache.recorded_seconds),
    )


def _teacher_seconds(out: Path, spent: float) -> float:
    """The teacher's fine-tuning time: as recorded by its run (a cache hit copies the original run's
    results), else what this search spent on it (a teacher given fine-tuned: loading it)."""
    try:
        recorded = json.loads((out / "teacher_finetune" / "results.json").read_text()).get("wall_seconds")
    except (OSError, ValueError):
        return spent
    return max(spent, float(recorded)) if isinstance(recorded, (int, float)) else spent


def _teacher_row(teacher, cost: Cost, val_metric: float, dev_metric: float) -> dict:
    return {
        "arch": teacher.arch.name, "params": cost.params, "flops": cost.flops,
        "latency_ms": cost.latency_ms, "batch_latency_ms": cost.batch_latency_ms,
        "val_metric": val_metric, "dev_metric": dev_metric, "path": str(teacher.path),
    }


def _label_rate(prep: Prepared) -> float:
    """Teacher forwards/s: measured by this search's labelling, else from the teacher's batch latency (one
    latency thread, so an underestimate where labelling has more)."""
    labelled, seconds = prep.forwards["trials"], prep.seconds.get("labelling", 0.0)
    if labelled >= 1000 and seconds > 0:
        return labelled / seconds
    cost = prep.teacher_cost
    return cost.batch_size / (cost.batch_latency_ms / 1000)


def _trial_setup(cfg: SearchConfig, prep: Prepared, space: SearchSpace) -> TrialSetup:
    task = prep.task
    return TrialSetup(
        base=prep.base, space=space, teacher_arch=prep.teacher.arch, head=task.kind, num_labels=task.num_labels,
        seq_len=prep.seq_len, constraints=cfg.constraints, metric=f"val_{task.metric}", task_metric=task.metric,
        cache_root=str(cache_root().resolve()), teacher_eval=prep.teacher_eval, latency_threads=cfg.latency_threads,
        train_features=prep.forwards["train_features"], label_rate=_label_rate(prep),
    )


def _trial_budget(cfg: SearchConfig, deadline: float) -> float:
    """Stage 4's seconds: what is left until the deadline, less the final run's share (at least 30 s)."""
    remaining = deadline - time.time()
    if cfg.final_steps:
        remaining *= 1 - cfg.final_share  # the rest trains the chosen candidate (stage 5)
    return max(remaining, 30.0)


def _final(cfg: SearchConfig, setup: TrialSetup, rows: list[dict], handles: dict[str, TrialHandle], out: Path, *,
           deadline: float, resume: bool) -> dict | None:
    """Stage 5: the chosen candidate trained longer on augmented data (`nas.final`); its row, with what it
    shares with its trial's, or None."""
    configs = {trial_id: h.config for trial_id, h in handles.items()}
    final = train_final(cfg, setup, rows, configs, out, deadline=deadline, resume=resume)
    if final is None:
        return None
    source = next(r for r in rows if r["trial_id"] == final["from_trial"])
    return {**{k: source[k] for k in _INHERITED}, **final}


def _front_and_exports(cfg: SearchConfig, setup: TrialSetup, prep: Prepared, rows: list[dict],
                       handles: dict[str, TrialHandle], out: Path) -> tuple[list[dict], list[dict], list[dict]]:
    """Stage 6: the Pareto front, and every trained final besides (a target's final that another one beats
    on validation is still the student trained for that target), exported and scored on dev. With
    `--quantize`, int8 copies of them join the rows and the exports, and the front is taken again over all.
    Returns all the rows, the front (marked) and what was exported."""
    front = report.pareto_front(rows)
    exported = _with_finals(front, rows)
    threads = cfg.latency_threads or "all"
    _export_front(out, exported, handles, prep.task, prep.base, cfg.dev_limit,
                  latency_device=f"{device_name()} (batch 1, {threads} thread(s), as the search measures)")
    if cfg.export_onnx:
        onnx_copies(exported, prep.task, prep.base, cfg.dev_limit, cfg.quantize)
    if cfg.quantize:  # an int8 copy of each exported student, written beside it: exported too
        copies = quantized_rows(cfg.quantize, setup, exported, prep.teacher_cost.latency_ms, prep.val_features,
                                prep.val_examples, dev_limit=cfg.dev_limit)
        rows, exported = rows + copies, exported + copies
        front = report.pareto_front(rows)
    for r in front:
        r["pareto"] = True
    if (out / "export").is_dir():
        try:
            front_readme(out / "export", exported, prep.teacher_row, prep.task.name, prep.task.metric,
                         command_line())
        except Exception as e:  # noqa: BLE001 - the front's README is never worth the search's report
            log.warning("no README.md for %s: %s: %s", out / "export", type(e).__name__, e)
    return rows, front, exported


def _with_finals(front: list[dict], rows: list[dict]) -> list[dict]:
    """`front` and, after it, every trained final that is not on it."""
    ids = {r["trial_id"] for r in front}
    return front + [r for r in rows if r.get("status") == "final" and r["trial_id"] not in ids]


def _summary(prep: Prepared, space: SearchSpace, rows: list[dict], front: list[dict], finals: list[dict],
             seconds: dict[str, float]) -> dict[str, Any]:
    """What results.json holds besides the rows (and what `search` returns)."""
    statuses = ("completed", "stopped", "scored", "rejected", "failed", "not_started")
    final = finals[0] if finals else None
    return {
        "task": prep.task.name,
        "metric": prep.task.metric,
        "space": space.to_dict(),
        "seq_len": prep.seq_len,
        "teacher": prep.teacher_row,
        "pareto": [r["trial_id"] for r in front],
        "final": final,
        "finals": finals,
        "candidates": sum(r["status"] in report.SEARCHED for r in rows),
        "distinct_candidates": len(report.distinct_candidates(rows)),
        "counts": {s: sum(r["status"] == s for r in rows) for s in statuses},
        "seconds": seconds,
        "teacher_forwards": _forwards(prep.forwards, finals),
        "host": cpu_info(),  # the driver's CPU: its budget's steps and a local search's latencies depend on it
    }


def _write_reports(out: Path, prep: Prepared, rows: list[dict], front: list[dict], exported: list[dict],
                   summary: dict) -> None:
    """results.csv, results.json, pareto.png (the front highlighted) and leaderboard.txt (what was exported;
    also printed)."""
    metric = prep.task.metric
    report.write_table(out, rows, summary)
    report.plot(out / "pareto.png", rows, front, prep.teacher_row, metric)
    board = report.leaderboard(exported, prep.teacher_row, metric)
    (out / "leaderboard.txt").write_text(board + "\n")
    print(board, flush=True)


def _forwards(setup: dict, finals: list[dict]) -> dict:
    """Teacher forwards spent labelling in this run (0 for what a cache held) and the distinct training
    features the students trained on; per_feature is 1 when nothing was labelled twice (a cold cache)."""
    out = {**setup, "final": sum(f.get("labelled_features") or 0 for f in finals)}
    features = max([setup["train_features"], *(f.get("train_features") or 0 for f in finals)])
    out.update(total=out["trials"] + out["final"], distinct_features=features)
    out["per_feature"] = out["total"] / features if features else None
    return out


def tune_trainable(cfg: SearchConfig, fn, setup):
    """`fn(config, setup)` as a Tune trainable with the search's resources per trial."""
    import ray
    from ray import tune

    cpus = cfg.cpus_per_trial or max(n["Resources"].get("CPU", 1) for n in ray.nodes() if n["Alive"])
    resources = {"cpu": cpus, "gpu": cfg.gpus_per_trial}
    if cfg.tpus_per_trial:
        resources["TPU"] = cfg.tpus_per_trial
    return tune.with_resources(tune.with_parameters(fn, setup=setup), resources)


MEMORY_HEADROOM = 0.9
"""The share of a fractional trial's slice of GPU memory its JAX allocator may use: the rest is left to
what lives outside JAX's pool (the CUDA context, cuDNN and cuBLAS workspaces)."""


def trial_device_env(gpus_per_trial: float, environ=os.environ) -> dict[str, str]:
    """The environment variables every Ray worker of a GPU search gets (`ray_init_kwargs`), read when JAX
    starts in a trial: allocation on demand, and for a fraction of a GPU a cap on JAX's memory pool at that
    share of the GPU (less `MEMORY_HEADROOM`), so that the trials sharing it cannot take each other's
    memory. A variable already set in `environ` (the user's) is left as it is."""
    if gpus_per_trial <= 0:
        return {}
    env = {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    if gpus_per_trial < 1:
        share = f"{gpus_per_trial * MEMORY_HEADROOM:.3f}"
        env.update(XLA_CLIENT_MEM_FRACTION=share, XLA_PYTHON_CLIENT_MEM_FRACTION=share)  # the name, and the old one
    return {k: v for k, v in env.items() if k not in environ}


def _experiment_path(cfg: SearchConfig, out: Path) -> str:
    """Where Tune keeps the search's experiment (in `--storage-path`, default OUTPUT/ray)."""
    return f"{(cfg.storage_path or str(out / 'ray')).rstrip('/')}/{EXPERIMENT}"


def _restorable(cfg: SearchConfig, out: Path) -> bool:
    """Whether the search's Tune experiment exists to restore (its trials ran)."""
    from ray import tune  # with Ray Tune, as `_run_tune`

    return tune.Tuner.can_restore(_experiment_path(cfg, out))


def _run_tune(cfg: SearchConfig, trainable, setup: TrialSetup, out: Path, *, resume: bool, time_budget_s: float,
              asha: bool, reuse_actors: bool = False):
    """Tune with Optuna over the space; `reuse_actors`: a worker process runs trial after trial (a scoring
    trial takes milliseconds once its process holds the supernet and the compiled shapes)."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from nas.searcher import DistinctOptunaSearch  # imports Ray Tune and Optuna

    # Ctrl+C raises KeyboardInterrupt here, as anywhere else in the search: Tune's own handler would return
    # a partial result as if the search had ended. Its state on disk resumes either way (`--resume`).
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
    storage = cfg.storage_path or str(out / "ray")
    path = _experiment_path(cfg, out)
    if resume and _restorable(cfg, out):
        log.info("resuming the search in %s", path)
        tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=False)
        return tuner.fit()
    if resume:
        log.warning("%s: nothing to restore; starting the trials from the beginning", path)
    sampler = make_sampler(cfg)
    study_storage = optuna_storage(cfg.optuna_storage) if cfg.optuna_storage else None
    space = Sampler(setup.space, setup.teacher_arch)
    searcher = DistinctOptunaSearch(
        space=space, metric=[setup.metric, OBJECTIVE_LATENCY], mode=["max", "min"], sampler=sampler,
        storage=study_storage, key=space.candidate, fallback_seed=cfg.seed,
        study_name=f"{out.name}-{time.strftime('%Y%m%d-%H%M%S')}" if study_storage is not None else None,
    )
    if asha:
        # Rungs in training steps (epoch ends add evaluations, so iterations would drift). A trial sends
        # its final report only once distill() has finished (see run_trial), so a stop there cuts nothing.
        scheduler = ASHAScheduler(
            time_attr="step", metric=setup.metric, mode="max", max_t=cfg.trial_steps + 1,
            grace_period=cfg.eval_every, reduction_factor=cfg.reduction_factor,
        )
    else:
        scheduler = FIFOScheduler()
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher, scheduler=scheduler, num_samples=cfg.num_samples, time_budget_s=time_budget_s,
            trial_dirname_creator=trial_dirname, reuse_actors=reuse_actors,
        ),
        run_config=tune.RunConfig(
            name=EXPERIMENT,
            storage_path=storage,
            failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=1, checkpoint_score_attribute=setup.metric, checkpoint_score_order="max"
            ),
            verbose=1,
        ),
    )
    return tuner.fit()


_INHERITED = (  # what the final run shares with the trial of its candidate
    "params", "flops", "latency_ms", "batch_latency_ms", "speedup",
    "learning_rate", "temperature", "hard_weight", "hidden_weight", "init_layers",
)


def trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"


LOCALHOST = "127.0.0.1"


def ray_init_kwargs(cfg: SearchConfig) -> dict[str, Any]:
    """`ray.init` arguments of a search (`ray_kwargs`), its GPU trials' memory settings in every worker's
    environment (`trial_device_env`); CPU trials get the host allocator's (`worker_host_env`)."""
    accelerated = cfg.gpus_per_trial > 0 or cfg.tpus_per_trial > 0
    return ray_kwargs(cfg.address, {**worker_host_env(accelerated), **trial_device_env(cfg.gpus_per_trial)})


def worker_host_env(accelerated: bool, environ=os.environ) -> dict[str, str]:
    """The environment that makes glibc keep freed memory in a CPU training worker
    (`distill.cli.host.retain_freed_memory_env`: its train steps run without page faults); nothing for
    workers whose steps run on accelerators, or where `environ` (the user's: on a cluster, the driver's) sets
    any of those variables."""
    return {} if accelerated else retain_freed_memory_env(environ)


def ray_kwargs(address: str | None, env: dict[str, str] | None = None, **extra) -> dict[str, Any]:
    """`ray.init` arguments: join the cluster at `address` / $RAY_ADDRESS, else start a private local
    Ray (address "local": never a stray one that happens to run on this machine) that listens on 127.0.0.1
    only, with no dashboard (one started anyway would listen on 127.0.0.1 too); `env`: environment variables
    of every worker; `extra`: more `ray.init` arguments. Nothing here touches Ray's token authentication,
    which Ray turns on for a local Ray and which a cluster's own settings govern."""
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    kwargs: dict[str, Any] = {"address": address, "include_dashboard": False, "logging_level": logging.WARNING}
    if address == "local":
        kwargs.update(_node_ip_address=LOCALHOST, dashboard_host=LOCALHOST)
    if env:
        kwargs["runtime_env"] = {"env_vars": dict(env)}
    return {**kwargs, **extra}


def init_ray(cfg: SearchConfig) -> None:
    """`start_ray(ray_init_kwargs(cfg))`, called before JAX starts its threads (Ray forks)."""
    start_ray(ray_init_kwargs(cfg))


def start_ray(kwargs: dict[str, Any]) -> None:
    """`ray.init(**kwargs)` (`ray_kwargs`), unless Ray is running in this process already.

    A local Ray's servers (GCS, raylet, workers, agents) listen on all interfaces unless the node IP is
    loopback, and Ray 2.60 turns a node IP of 127.0.0.1 into the machine's outward address, except where
    Ray clusters are off (macOS, Windows). So for the local Ray they are off while it starts: its node IP,
    and every address it listens on, is 127.0.0.1 (`tests/nas/test_ray_security.py` checks the sockets).
    """
    import ray
    from ray._private import ray_constants

    if ray.is_initialized():
        return
    if kwargs["address"] != "local":
        ray.init(**kwargs)
        return
    clusters = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        ray.init(**kwargs)
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = clusters


def make_sampler(cfg: SearchConfig):
    import optuna

    if cfg.algorithm == "nsga2":
        # The default population (50) would exceed a typical search: generations would never turn over.
        return optuna.samplers.NSGAIISampler(population_size=max(4, min(50, cfg.num_samples // 3)), seed=cfg.seed)
    if cfg.algorithm == "random":
        return optuna.samplers.RandomSampler(seed=cfg.seed)
    return optuna.samplers.TPESampler(seed=cfg.seed, n_startup_trials=min(8, max(2, cfg.num_samples // 3)))


def _rows(results, setup: TrialSetup) -> tuple[list[dict], dict[str, TrialHandle]]:
    """The trials' rows, in Tune's order, and their handles by trial id."""
    rows, handles = [], {}
    for result in results:
        row, handle = _row(result, setup)
        rows.append(row)
        handles[row["trial_id"]] = handle
    return rows, handles


def _row(result, setup: TrialSetup) -> tuple[dict, TrialHandle]:
    """One trial's line of results.csv, from its Tune result, and its handle (sampled config, best checkpoint)."""
    config, m = result.config or {}, result.metrics or {}
    arch = sampled_arch(setup.space, config, setup.teacher_arch)
    row = {
        "trial_id": result_trial_id(result),
        "arch": arch.name if arch is not None else m.get("arch"),
        "params": m.get("params", arch.num_params(setup.head, setup.num_labels) if arch is not None else None),
        "flops": m.get("flops", arch.flops(setup.seq_len, setup.head, setup.num_labels) if arch is not None else None),
        "latency_ms": m.get("latency_ms"),
        "batch_latency_ms": m.get("batch_latency_ms"),
        "speedup": m.get("speedup"),
        "steps": m.get("step", 0),
        "steps_per_second": m.get("steps_per_second"),
        "seconds": m.get("time_total_s"),
        **{k: config.get(k) for k in ("learning_rate", "temperature", "hard_weight", "hidden_weight", "init_layers")},
        "pareto": False,
    }
    done = "completed" if m.get("step", 0) >= setup.base.loop.max_steps else "stopped"
    row["status"], row["error"] = trial_status(result, setup.metric, has_config=arch is not None, done=done)
    row["val_metric"] = m.get(setup.metric) if row["status"] in ("completed", "stopped") else None
    best = result.get_best_checkpoint(setup.metric, "max") if result.best_checkpoints else result.checkpoint
    row["checkpoint"] = best.path if best is not None else None
    return row, TrialHandle(config=config, checkpoint=best)


def _export_front(out: Path, front: list[dict], handles: dict[str, TrialHandle], task, base: DistillConfig,
                  dev_limit: int | None, *, latency_device: str) -> None:
    """Copy each front member's best export (the final run's, else its trial's best checkpoint, found in
    `handles`) to OUTPUT/export/<rank>-<arch>, score it on dev and give it a model card with its measured
    speedup and latency. A member whose export or scoring fails is logged and keeps the error in its row
    (`export_error`): the others and the report are written."""
    root = out / "export"
    if root.exists():
        shutil.rmtree(root)
    for i, r in enumerate(front):
        dest = export_path(root, f"{i + 1:02d}-{r['arch']}")
        try:
            if not _export_member(r, handles, dest):
                # Every trial that reported a score also reported its best export: a member without one is
                # a search that lost it (listed with the reason, never left out silently).
                log.error("front member %s (%s) has no model to export: its trial kept no checkpoint",
                          r["trial_id"], r["arch"])
                r.update(export=None, dev_metric=None, export_error="no model: its trial kept no checkpoint")
                continue
            r["export"] = str(dest)
            r["dev_metric"] = evaluate_dir(dest, task.name, data_dir=base.data_dir, limit=dev_limit,
                                           spec=base.data)[task.metric]
            _card(dest, r, latency_device)
        except Exception as e:  # noqa: BLE001 - one member must not cost the search its report
            log.error("export of front member %s (%s) failed: %s: %s", r["trial_id"], r["arch"], type(e).__name__, e)
            r.update(export=None, dev_metric=None, export_error=f"{type(e).__name__}: {e}")
            shutil.rmtree(dest, ignore_errors=True)


def _card(dest: Path, r: dict, latency_device: str) -> None:
    """The front member's model card (`distill.export.card`) with its measured speedup and latency; a card
    that cannot be written is logged, never the member's failure (its export and score stand)."""
    try:
        write_card(dest, run={"speedup": r.get("speedup"), "latency_ms": r.get("latency_ms"),
                              "device": latency_device})
    except Exception as e:  # noqa: BLE001
        log.warning("no model card for %s: %s: %s", dest, type(e).__name__, e)


def _export_member(r: dict, handles: dict[str, TrialHandle], dest: Path) -> bool:
    """Write front member `r`'s model to `dest`; False when it has none."""
    handle = handles.get(r["trial_id"])
    if r.get("export_dir"):  # a final run's export
        shutil.copytree(r["export_dir"], dest)
    elif handle is not None and handle.export is not None:  # a supernet estimate
        handle.export(dest)
    elif (checkpoint := _checkpoint(handles, r["trial_id"])) is not None:
        checkpoint.to_directory(str(dest))
    else:
        return False
    return True


def _checkpoint(handles: dict[str, TrialHandle], trial_id: str):
    handle = handles.get(trial_id)
    return handle.checkpoint if handle is not None else None
