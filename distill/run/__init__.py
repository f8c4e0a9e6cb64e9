"""The runs: named stages that the tools, the search and the benchmarks call.

The public API (what `nas`, `scripts` and `bench` may use) is what this file
re-exports; the modules behind it:

  config        `FinetuneConfig`, `DistillConfig`, `SupernetConfig` (one run config per entry point)
  finetuning    `finetune(cfg, out)`: a teacher fine-tuned on the task, cached
  teacher       `fine_tuned_teacher(cfg, task, out)`: load it, fine-tuning first if need be
  data          `read_data`, `training_features`, `teacher_labels`, `teacher_importance`
  distillation  `distill(cfg, out)`: teacher -> data -> labels -> init -> train -> export
  supernet      `train_supernet(cfg, out)`: teacher -> data -> labels -> rewire -> sandwich training;
                `score_subnets`: sub-networks scored with the supernet's weights (on `scoring_batches`);
                `export_subnet`
  evaluation    `evaluate_dir`, `evaluate_model`, `load_for_task`; `split_predictions` (per example, for
                paired comparisons); `paired_comparison` (a model against another on the same examples)
  prediction    `predict_lines`, `predict_table`
  speed         `training_speed` (-> `Speed`): a run's steps and evaluation timed on its own batches before it starts
  quantization  `quantize_run`, `compare`, `compare_models`
  onnx_export   `export_onnx_run`: a run's export as ONNX (and its int8 variant), evaluated with onnxruntime
  processes     `run_process`: one process's part of a fine-tune, distillation or supernet training across
                processes (Ray Train workers)

May import any room of `distill` and `tasks`; nothing of `nas`.
"""

from distill.kd.augment import AugmentConfig
from distill.kd.init import InitConfig
from distill.kd.objective import LossConfig
from distill.kd.supernet import Subnet, SubnetChoices
from distill.run.config import DistillConfig, FinetuneConfig, SupernetConfig
from distill.run.data import Stage, read_data, teacher_importance, teacher_labels, training_features
from distill.run.distillation import distill, loss_layer_map
from distill.run.evaluation import (
    evaluate_dir,
    evaluate_model,
    load_for_task,
    paired_comparison,
    predict_features,
    split_predictions,
)
from distill.run.finetuning import finetune
from distill.run.onnx_export import export_onnx_run
from distill.run.prediction import predict_lines, predict_table
from distill.run.processes import RUNS, free_address, run_process
from distill.run.quantization import compare, compare_models, quantize_run
from distill.run.speed import Speed, training_speed
from distill.run.supernet import export_subnet, score_subnets, scoring_batches, supernet_layer_map, train_supernet
from distill.run.teacher import fine_tuned_teacher
from distill.train.loop import LoopConfig
from distill.train.optim import OptimizerConfig

__all__ = [
    "AugmentConfig", "DistillConfig", "FinetuneConfig", "InitConfig", "LoopConfig", "LossConfig", "OptimizerConfig",
    "RUNS", "Speed", "Stage", "Subnet", "SubnetChoices", "SupernetConfig", "compare", "compare_models", "distill",
    "evaluate_dir", "evaluate_model", "export_onnx_run", "export_subnet", "fine_tuned_teacher", "finetune",
    "free_address", "load_for_task", "loss_layer_map", "paired_comparison", "predict_features", "predict_lines",
    "predict_table", "quantize_run", "read_data", "run_process", "score_subnets", "scoring_batches",
    "split_predictions", "supernet_layer_map", "teacher_importance", "teacher_labels", "train_supernet",
    "training_features", "training_speed",
]
