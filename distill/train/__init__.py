"""Training machinery shared by fine-tuning and distillation: optimizer (`optim`), pure jitted steps
(`steps`), the loop (`loop`), Orbax checkpoints (`checkpoint`, the only module that imports orbax) and
the run log (`runlog`).

May import `distill.kd`, `distill.model`, `distill.arch`, `distill.files` and `tasks`.
"""
