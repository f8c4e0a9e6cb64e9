"""Teacher fine-tuning and distillation for one task: the library behind
`bertnas finetune|distill|evaluate|predict|quantize`.

Rooms, from the bottom up (A -> B: A may import B; every room may import `tasks`):

  files.py   cache root, content keys, atomic JSON, output-path checks      -> nothing of ours
  arch.py    `BertArch` and architecture names (no JAX)                      -> nothing of ours
  model/     Flax BERT, CRF, HF weight mapping, model directories, inference -> arch, files
  kd/        distillation: losses, objective, teacher-output cache,
             augmentation, importance, layer maps, student initialisation    -> model, arch, files
  train/     optimizer, pure steps, loop, Orbax checkpoints, run log         -> kd, model, arch, files
  export/    HF export, the int8 format, loading any export                  -> model, arch, files
  run/       finetune, distill, evaluate, predict, quantize as named stages  -> any room of distill
  cli/       the tools' flags, mapped to one run config each                 -> run, export, arch, files
             (run only inside a tool's `main`: --help and flag errors load no JAX)

`nas` imports `distill.run` (its public API), `arch`, `model`, `export`, `files` and
`cli`; never `train` or `kd`. Only `train/checkpoint.py` imports orbax and only
`export/int8.py` imports qwix (and only `export/onnx.py`
jax2onnx, onnx and onnxruntime, the optional `onnx` extra). `tests/test_layering.py` enforces all of this,
imports inside functions included, and that no import cycle exists.
"""
