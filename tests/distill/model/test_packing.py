"""Packed rows (several examples per row) compute what padded rows compute, example by example.

A packed batch (`tasks.packing`) holds the same examples as a padded one; the model attends within each
example, restarts positions and pools each example's own [CLS], so logits, per-token hidden states, the
task loss and its gradient, and every distillation term equal the padded batch's. Tiny odd sizes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import token_features

from distill.kd.losses import hard_loss
from distill.kd.objective import LossConfig, distill_loss, teacher_forward
from distill.model.bert import build_model
from distill.model.infer import model_inputs
from tasks.batching import collate
from tasks.features import Features
from tasks.packing import PackShape, collate_packed, packed_plan


def _pair(f: Features):
    """The same examples as one packed batch and as one padded batch (length 7), examples in the same order."""
    shape = PackShape(rows=5, length=15, examples=13)
    plans = packed_plan(f, shape, shuffle=True, seed=1)
    assert len(plans) == 1  # all 11 in one batch
    packed = collate_packed(f, plans[0], shape)
    padded = collate(f, packed["index"].astype(np.int64), 7)
    return packed, padded


@pytest.mark.parametrize("kind, labels", [("classification", 3), ("regression", 1)])
def test_packed_outputs_equal_padded_ones(tiny_arch, random_params, kind, labels):
    f = token_features(kind)
    model = build_model(tiny_arch, kind, labels)
    params = random_params(tiny_arch, kind, labels)
    packed, padded = _pair(f)
    a = model.apply({"params": params}, **model_inputs(packed), output_hidden_states=True)
    b = model.apply({"params": params}, **model_inputs(padded), output_hidden_states=True)
    real = packed["index"] >= 0
    assert a.logits.shape == (13, labels)
    np.testing.assert_allclose(np.asarray(a.logits)[real], np.asarray(b.logits)[real], rtol=0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(a.pooled_output)[real], np.asarray(b.pooled_output)[real], atol=1e-5)
    length = packed["input_ids"].shape[1]
    for hp, hb in zip(a.hidden_states, b.hidden_states):  # every token of every example, every layer
        for e in np.flatnonzero(real):
            r, t = divmod(int(packed["cls_index"][e]), length)
            n = f.lengths[packed["index"][e]]
            np.testing.assert_allclose(np.asarray(hp)[r, t : t + n], np.asarray(hb)[e, :n], rtol=0, atol=1e-5)


def test_packed_loss_and_gradient_equal_padded_ones(tiny_arch, random_params):
    f = token_features("classification")
    model = build_model(tiny_arch, "classification", 3)
    params = random_params(tiny_arch, "classification", 3)

    def mean_loss(p, batch):
        total, count = hard_loss("classification", model.apply({"params": p}, **model_inputs(batch)), batch)
        return total / count

    packed, padded = _pair(f)
    (la, ga), (lb, gb) = (jax.value_and_grad(mean_loss)(params, b) for b in (packed, padded))
    np.testing.assert_allclose(la, lb, rtol=1e-5)
    for x, y in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-6)


def test_packed_distillation_terms_equal_padded_ones(tiny_arch, hetero_arch, random_params):
    """Logits, hidden-state and attention-score terms over a packed batch equal the padded batch's: the
    masks keep each example's own tokens and (query, key) pairs."""
    f = token_features("classification")
    teacher = build_model(tiny_arch, "classification", 3)
    student = build_model(hetero_arch, "classification", 3)
    t_params, s_params = random_params(tiny_arch, "classification", 3, seed=1), random_params(
        hetero_arch, "classification", 3, seed=2)
    cfg = LossConfig(hidden_weight=1.0, attention_weight=1.0, embedding_weight=1.0, hard_weight=0.5)
    layer_map = (0, 1)

    def terms(batch):
        t_out = teacher_forward(teacher, t_params, batch, cfg, layer_map)
        s_out = student.apply({"params": s_params}, **model_inputs(batch), output_hidden_states=True,
                              output_attentions=True)
        total, parts = distill_loss(None, s_out, t_out, batch, kind="classification", cfg=cfg, layer_map=layer_map)
        return total, parts

    packed, padded = _pair(f)
    (ta, pa), (tb, pb) = terms(packed), terms(padded)
    assert set(pa) == {"logits", "hard", "embedding", "hidden", "attention"}
    for name in pa:
        np.testing.assert_allclose(pa[name][1], pb[name][1])  # the same counts: tokens, pairs, examples
        np.testing.assert_allclose(pa[name][0], pb[name][0], rtol=1e-4, err_msg=name)
    np.testing.assert_allclose(ta, tb, rtol=1e-5)


def test_packed_rows_refuse_token_heads(tiny_arch, random_params):
    model = build_model(tiny_arch, "tagging", 5)
    ids = jnp.ones((1, 7), jnp.int32)
    with pytest.raises(ValueError, match="sentence head"):
        model.init(jax.random.key(0), ids, ids, ids, position_ids=ids, cls_index=jnp.zeros(2, jnp.int32))
