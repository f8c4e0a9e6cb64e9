"""Knowledge distillation: task and distillation losses (`losses`), the objective with its config
(`objective`), the on-disk teacher-output cache (`outputs`), TinyBERT-style augmentation (`augment`),
importance scores (`importance`), layer maps (`layers`) and student initialisation (`init`).

May import `distill.model`, `distill.arch`, `distill.files` and `tasks`; never `train`, `export` or `run`.
"""
