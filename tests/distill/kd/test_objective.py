"""Distillation losses against numpy references, the objective's terms and stages, and the train step."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distill.arch import BertArch
from distill.kd.losses import attention_mse, hidden_mse, kl_divergence, prediction_distill_loss, soft_cross_entropy
from distill.kd.objective import PROJ, LossConfig, TeacherOutputs, distill_loss, init_projection, teacher_forward
from distill.model.bert import build_model, init_params
from distill.train.optim import OptimizerConfig
from distill.train.steps import TrainState, train_step
from tasks.errors import UserError

RNG = np.random.default_rng(0)
W = np.array([1, 1, 1, 0, 0], np.float32)  # 3 real rows, 2 padding rows


def softmax(x, t=1.0):
    z = x / t - (x / t).max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def test_soft_cross_entropy_and_kl_match_numpy_and_ignore_padding():
    s, t = RNG.normal(size=(5, 3)).astype(np.float32), RNG.normal(size=(5, 3)).astype(np.float32)
    s[W == 0] = 1e4  # garbage in padding rows must not leak
    for temp in (1.0, 2.5):
        p, q = softmax(t[:3], temp), softmax(s[:3], temp)
        total, count = soft_cross_entropy(s, t, W, temp)
        assert float(count) == 3
        assert float(total) == pytest.approx(float(-(p * np.log(q)).sum() * temp**2), rel=1e-5)
        kl, _ = kl_divergence(s, t, W, temp)
        assert float(kl) == pytest.approx(float((p * (np.log(p) - np.log(q))).sum() * temp**2), rel=1e-4)
    same, _ = kl_divergence(t, t, W, 2.0)
    assert abs(float(same)) < 1e-6


def test_token_and_span_distillation_count_only_real_positions():
    b, length, c = 2, 7, 5
    s = RNG.normal(size=(b, length, c)).astype(np.float32)
    t = RNG.normal(size=(b, length, c)).astype(np.float32)
    mask = np.zeros((b, length), np.int32)
    mask[0, :4], mask[1, :6] = 1, 1
    batch = {"weights": np.array([1.0, 0.0], np.float32), "attention_mask": mask}
    total, count = prediction_distill_loss("tagging", "ce", s, t, batch)
    assert float(count) == 4  # row 1 is padding
    want = -(softmax(t[0, :4]) * np.log(softmax(s[0, :4]))).sum()
    assert float(total) == pytest.approx(float(want), rel=1e-5)

    s2, t2 = s[..., :2], t[..., :2]
    total, count = prediction_distill_loss("span", "ce", s2, t2, batch)
    assert float(count) == 1
    ref = 0
    for k in range(2):  # start and end: distributions over the 4 real positions
        ref += -(softmax(t2[0, :4, k]) * np.log(softmax(s2[0, :4, k]))).sum()
    assert float(total) == pytest.approx(float(ref / 2), rel=1e-4)


def test_hidden_and_attention_mse():
    mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0]], np.float32)
    s, t = RNG.normal(size=(2, 4, 6)), RNG.normal(size=(2, 4, 6))
    total, count = hidden_mse(s, t, mask)
    assert float(count) == 5
    assert float(total) == pytest.approx(float((((s - t) ** 2).mean(-1) * mask).sum()), rel=1e-5)

    sa, ta = RNG.normal(size=(2, 3, 4, 4)), RNG.normal(size=(2, 3, 4, 4))
    ta[..., 3] = -np.inf  # a masked key in the teacher's scores: clipped, never NaN
    total, count = attention_mse(sa, ta, mask)
    pair = mask[:, :, None] * mask[:, None, :]
    assert float(count) == 9 + 4
    ref = np.where(pair > 0, ((sa - np.clip(ta, -1e4, 1e4)) ** 2).mean(1), 0.0).sum()
    assert float(total) == pytest.approx(float(ref), rel=1e-5)
    ta[..., 3] = 0.0
    total, _ = attention_mse(sa, ta[:, :2], mask)  # 3 student heads vs 2 teacher heads: head means
    ref = ((sa.mean(1) - ta[:, :2].mean(1)) ** 2 * pair).sum()
    assert float(total) == pytest.approx(float(ref), rel=1e-5)


def test_loss_config_validation_names_the_field():
    with pytest.raises(UserError, match="loss.logits"):
        LossConfig(logits="cosine")
    with pytest.raises(UserError, match="loss.temperature"):
        LossConfig(temperature=0)
    with pytest.raises(UserError, match="hidden_weight"):
        LossConfig(hidden_weight=-1)
    with pytest.raises(UserError, match="two_stage"):
        LossConfig(two_stage=True)
    with pytest.raises(UserError, match="nothing trains"):
        LossConfig(logit_weight=0, hard_weight=0)
    cfg = LossConfig(hidden_weight=1.0, two_stage=True, intermediate_ratio=0.25)
    assert [cfg.stage_at(s, 8) for s in range(8)] == ["intermediate"] * 2 + ["prediction"] * 6
    assert LossConfig().stage_at(0, 8) == "all"
    assert cfg.teacher_hidden_layers((1, 3)) == (2, 4)
    assert LossConfig(embedding_weight=1, hidden_weight=1).teacher_hidden_layers((0, 2)) == (0, 1, 3)


# --- the objective on real model outputs ---------------------------------------

TEACHER = BertArch.uniform(3, 36, 3, 44, vocab_size=50, max_position_embeddings=16)
STUDENT = BertArch.uniform(2, 24, 3, 30, vocab_size=50, max_position_embeddings=16).replace(head_size=8)


def _batch(b=4, length=7, seed=1):
    rng = np.random.default_rng(seed)
    mask = np.ones((b, length), np.int32)
    mask[1, 5:] = 0
    return {
        "input_ids": rng.integers(1, 50, (b, length)).astype(np.int32) * mask,
        "token_type_ids": np.zeros((b, length), np.int32),
        "attention_mask": mask,
        "labels": np.array([0, 1, 1, 0], np.int32),
        "weights": np.array([1, 1, 1, 0], np.float32),
        "index": np.array([0, 1, 2, -1], np.int32),
    }


@pytest.fixture(scope="module")
def models():
    teacher = build_model(TEACHER, "classification", 2)
    student = build_model(STUDENT, "classification", 2)
    return teacher, init_params(teacher, jax.random.key(0)), student, init_params(student, jax.random.key(1))


def test_objective_terms_by_stage(models):
    teacher, tp, student, sp = models
    cfg = LossConfig(hard_weight=0.5, hidden_weight=2.0, attention_weight=1.0, embedding_weight=1.0, two_stage=True)
    layer_map = (0, 2)
    batch = _batch()
    t = teacher_forward(teacher, tp, batch, cfg, layer_map)
    assert t.hidden.shape == (3, 4, 7, 36)  # embeddings, layer 0 and layer 2 outputs
    assert len(t.attention) == 2 and t.attention[0].shape == (4, 3, 7, 7)
    out = student.apply(
        {"params": sp}, batch["input_ids"], batch["token_type_ids"], batch["attention_mask"],
        output_hidden_states=True, output_attentions=True,
    )
    proj = init_projection(24, 36, cfg)
    total, terms = distill_loss(proj, out, t, batch, kind="classification", cfg=cfg, layer_map=layer_map)
    assert set(terms) == {"logits", "hard", "hidden", "attention", "embedding"}
    want = sum(w * float(terms[k][0] / terms[k][1]) for k, w in
               [("logits", 1.0), ("hard", 0.5), ("hidden", 2.0), ("attention", 1.0), ("embedding", 1.0)])
    assert float(total) == pytest.approx(want, rel=1e-5)
    assert float(terms["hidden"][1]) == 2 * (3 * 7 - 2)  # 2 layers x real tokens of the 3 real rows
    _, inter = distill_loss(proj, out, t, batch, kind="classification", cfg=cfg, layer_map=layer_map, stage="intermediate")
    _, pred = distill_loss(proj, out, t, batch, kind="classification", cfg=cfg, layer_map=layer_map, stage="prediction")
    assert set(inter) == {"hidden", "attention", "embedding"} and set(pred) == {"logits", "hard"}
    # Augmented rows (original = 0) get no hard-label loss.
    aug = dict(batch, original=np.array([1, 0, 0, 0], np.float32))
    _, terms = distill_loss(proj, out, t, aug, kind="classification", cfg=cfg, layer_map=layer_map)
    assert float(terms["hard"][1]) == 1


def test_train_step_with_cached_outputs_equals_running_the_teacher(models):
    teacher, tp, student, sp = models
    cfg = LossConfig(hidden_weight=1.0)
    layer_map = (0, 2)
    params = {**sp, PROJ: init_projection(24, 36, cfg)}
    tx = OptimizerConfig(learning_rate=1e-3, warmup_ratio=0.0).build(params, 10, 2)
    batch = _batch()
    kw = dict(model=student, tx=tx, kind="classification", loss_cfg=cfg, layer_map=layer_map)
    online, m_online = train_step(TrainState.create(params, tx), batch, jax.random.key(0), tp, teacher_model=teacher, **kw)
    cached_t = teacher_forward(teacher, tp, batch, cfg, layer_map)
    cached_t = TeacherOutputs(np.asarray(cached_t.logits), np.asarray(cached_t.hidden))
    # The teacher model is not even given: cached outputs must suffice.
    cached, m_cached = train_step(TrainState.create(params, tx), batch, jax.random.key(0), cached_t, teacher_model=None, **kw)
    assert float(m_online["loss_sum"]) == pytest.approx(float(m_cached["loss_sum"]), rel=1e-6)
    for a, b in zip(jax.tree.leaves(online.params), jax.tree.leaves(cached.params)):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert int(cached.step) == 1
    assert float(m_cached["hidden_count"]) > 0 and np.isfinite(float(m_cached["grad_norm"]))
    # The projection is trained too.
    assert not np.allclose(cached.params[PROJ]["kernel"], params[PROJ]["kernel"])


def test_distillation_reduces_the_loss(models):
    teacher, tp, student, sp = models
    # A confident teacher (scaled head), so KL starts well above 0; KL is 0 at the optimum.
    tp = {**tp, "classifier": jax.tree.map(lambda x: 300 * x, tp["classifier"])}
    cfg = LossConfig(logits="kl", temperature=2.0)
    tx = OptimizerConfig(learning_rate=5e-3, warmup_ratio=0.0, schedule="constant").build(sp, 30, 2)
    step = jax.jit(
        lambda s, b, r, t: train_step(s, b, r, t, model=student, teacher_model=teacher, tx=tx,
                                      kind="classification", loss_cfg=cfg, layer_map=(0, 2))
    )
    state, batch = TrainState.create(sp, tx), _batch()
    losses = []
    for _ in range(30):
        state, m = step(state, batch, jax.random.key(0), tp)
        losses.append(float(m["loss_sum"] / m["loss_count"]))
    assert losses[-1] < 0.2 * losses[0]
    assert jnp.isfinite(jnp.asarray(losses)).all()
