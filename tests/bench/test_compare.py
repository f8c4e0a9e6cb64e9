"""`bench.compare`'s cases in bfloat16: ours in bfloat16 compute, PyTorch under CPU autocast, the same
tiny weights; the case keys and comparison rows carry the precision."""

from __future__ import annotations

import importlib.util
import math

import jax
import numpy as np
import pytest

from bench import steps
from bench.common import HEAD, NUM_LABELS, hf_bert_kwargs, make_batch, shape_arch
from bench.compare import Case, compare_rows, ratio_rows
from distill.model.bert import build_model, init_params

HAS_TORCH = importlib.util.find_spec("torch") is not None


def test_a_bf16_case_is_its_own_row():
    fp32, bf16 = Case("train", "teacher", 32, 128), Case("train", "teacher", 32, 128, "bf16")
    assert fp32.key == "train/teacher/b32/s128" and bf16.key == "train/teacher/b32/s128/bf16"
    rows = [{**c.fields(), "side": side, "arch": "6L-384", "examples_per_s": rate}
            for c in (fp32, bf16) for side, rate in (("ours", 30.0), ("torch", 20.0 if c is fp32 else 40.0))]
    comparison = compare_rows(rows)
    assert [(c["precision"], c["ratio"]) for c in comparison] == [("fp32", 1.5), ("bf16", 0.75)]
    assert [r["name"] for r in ratio_rows(comparison)] == ["train teacher b32 s128", "train teacher b32 s128 bf16"]


def _train(step, carry, n: int) -> list[float]:
    losses = []
    for _ in range(n):
        carry, loss = step(carry)
        losses.append(float(np.asarray(loss["loss_sum"] / loss["loss_count"]) if isinstance(loss, dict) else loss))
    return losses


def test_both_sides_train_in_bf16_from_the_same_weights():
    """Our bf16 steps and PyTorch's autocast steps give float32's losses (to bfloat16's precision) from the
    same weights. (The benchmark's optimizer warms up over 10,000 steps: the weights barely move here.)"""
    arch = shape_arch("teacher", quick=True)
    params = jax.device_get(init_params(build_model(arch, HEAD, NUM_LABELS), jax.random.key(0)))
    batch = make_batch(4, 7, arch.vocab_size)
    ours = {p: _train(*steps.ours_step(arch, params, batch, p), 8) for p in ("fp32", "bf16")}
    assert ours["bf16"] == pytest.approx(ours["fp32"], rel=0.02)
    if not HAS_TORCH:
        return
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from distill.model.hf import to_hf

    model = BertForSequenceClassification(BertConfig(**hf_bert_kwargs(arch), num_labels=NUM_LABELS))
    model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in to_hf(params, arch).items()})
    theirs = _train(steps.torch_step(model, batch, "bf16"), None, 8)
    assert all(math.isfinite(x) for x in theirs)
    assert theirs == pytest.approx(ours["fp32"], rel=0.05)  # dropout differs between the frameworks
