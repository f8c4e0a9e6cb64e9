"""The teacher stage of a distillation or search: a teacher fine-tuned on the task, fine-tuning it first if need be."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from distill.model.store import LoadedBert, load_bert
from distill.run.config import DistillConfig
from distill.run.finetuning import finetune
from tasks.base import Task

log = logging.getLogger(__name__)


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
    result = finetune(cfg.teacher_stage(), out / "teacher_finetune", resume=resume, use_cache=use_cache)
    return load_bert(result["teacher_dir"]), time.perf_counter() - t0
