"""Tasks: definitions, readers, features, batching and metrics.

- base.py: `Task` (frozen data) and the example records.
- registry.py: `get_task(name)`, `TASKS`, `tagging_task(labels)` (the generic `ner`).
- datafiles.py, readers.py (+ read_glue, read_conll, read_squad):
  `resolve_data_dir`, `load_task(name, data_dir)` (the `ner` tag set from its
  training file), `read_split(task, split, data_dir, limit=)`.
- features.py: `encode(task, examples, tokenizer) -> Features`.
- batching.py: `buckets_for` (lengths fitted to a feature set), `batches`, `num_batches`.
- metrics.py (+ decode.py): metric registry, `evaluate`, `predict_labels`.
- errors.py: `UserError`, `DataError`.
"""
