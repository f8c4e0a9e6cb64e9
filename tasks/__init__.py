"""Tasks: definitions, readers, features, batching and metrics.

- base.py: `Task` (frozen data) and the example records.
- registry.py: `get_task(name)`, `TASKS`, `tagging_task(labels)` (the generic `ner`),
  `user_task` (the generic text-classification, text-pair-classification,
  text-regression and token-classification), `task_record` / `saved_task` (a
  saved model's task).
- datafiles.py, readers.py (+ read_glue, read_conll, read_squad):
  `resolve_data_dir`, `load_task(name, data_dir, spec)` (the `ner` tag set from
  its training file), `read_split(task, split, data_dir, limit=)`, `data_files`.
- userdata.py (+ read_table: CSV / TSV / JSON lines, read_dataset: a Hugging
  Face dataset through `datasets`): `DataSpec` (the data flags), the generic
  tasks' label sets and examples, one-line errors naming file and row.
- holdout.py: `split_off`, the validation slice held out of the training examples,
  whole and leak-free (no held-out example's repeats or parts left in training).
- features.py: `encode(task, examples, tokenizer) -> Features`.
- batching.py: `buckets_for` (lengths fitted to a feature set), `batches`, `num_batches`.
- packing.py: several sentences per row (`pack_shape`, `packed_plan`, `packed_batches`):
  sentence-level tasks' training and inference batches with little padding.
- metrics.py (+ decode.py): metric registry, `evaluate`, `predict_labels`.
- errors.py: `UserError`, `DataError`.
"""
