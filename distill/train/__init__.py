"""Training machinery shared by fine-tuning and distillation: optimizer (`optim`), pure jitted steps
(`steps`), the supernet's sandwich step (`sandwich`), the loop (`loop`), Orbax checkpoints
(`checkpoint`, the only module that imports orbax), the run log (`runlog`), one process of several
(`multihost`) and the summary of a profiler trace (`profile`).

May import `distill.kd`, `distill.model`, `distill.arch`, `distill.files` and `tasks`.
"""
