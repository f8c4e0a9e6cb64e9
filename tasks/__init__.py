"""Tasks: definitions, readers, features, batching and metrics."""
