"""Flax BERT, teacher loading, fine-tuning and distillation."""
