"""Student initialisation from a teacher: layer maps, exact pruning of dead parts, scores, hidden surgery, errors."""

from __future__ import annotations

import logging
from pathlib import Path

import jax
import numpy as np
import pytest

from distill.arch import ArchError, BertArch
from distill.kd.importance import importance_scores, weight_scores
from distill.kd.init import InitConfig, check_compatible, init_from_teacher, init_student, pca_projection
from distill.kd.layers import teacher_layers
from distill.kd.losses import task_loss
from distill.model.bert import abstract_params, build_model, init_params
from distill.model.store import LoadedBert
from tasks.errors import UserError

HEAD, LABELS = "classification", 3


@pytest.fixture(scope="module")
def teacher_arch() -> BertArch:
    """3 layers, hidden 36, 3 heads of 12, FFN 44."""
    return BertArch.uniform(3, 36, 3, 44, vocab_size=50, max_position_embeddings=16)


@pytest.fixture
def teacher(teacher_arch, random_params) -> dict:
    return random_params(teacher_arch, HEAD, LABELS, seed=1)


@pytest.fixture(scope="module")
def batches() -> list[dict]:
    """Two labelled classification batches of 4 rows, length 9, with padding tokens and one padding row."""
    rng = np.random.default_rng(3)
    out = []
    for lengths in ((9, 5, 3, 7), (4, 9, 6, 0)):
        lengths = np.array(lengths)
        mask = (np.arange(9)[None, :] < lengths[:, None]).astype(np.int32)
        ids = np.where(mask == 1, rng.integers(5, 50, size=(4, 9)), 0).astype(np.int32)
        out.append(
            {
                "input_ids": ids,
                "token_type_ids": np.zeros_like(ids),
                "attention_mask": mask,
                "weights": (lengths > 0).astype(np.float32),
                "index": np.arange(4, dtype=np.int32),
                "labels": rng.integers(0, LABELS, size=4).astype(np.int32),
            }
        )
    return out


def logits(arch: BertArch, params: dict, batch: dict, head: str = HEAD, num_labels: int = LABELS) -> np.ndarray:
    out = build_model(arch, head, num_labels).apply(
        {"params": params}, batch["input_ids"], batch["token_type_ids"], batch["attention_mask"]
    )
    return np.asarray(out.logits)


def shapes(tree: dict) -> dict:
    return jax.tree_util.tree_map(lambda x: tuple(x.shape), tree)


def assert_trees_equal(a: dict, b: dict) -> None:
    assert shapes(a) == shapes(b)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def layer(params: dict, i: int) -> dict:
    return params["encoder"][f"layer_{i}"]


def kill_neurons(params: dict, i: int, neurons: list[int]) -> None:
    """Zero FFN neurons (input column, bias, output row) of layer i in place."""
    lay = layer(params, i)
    lay["intermediate"]["kernel"][:, neurons] = 0
    lay["intermediate"]["bias"][neurons] = 0
    lay["output"]["kernel"][neurons] = 0


def kill_head(params: dict, i: int, n: int) -> None:
    """Zero head n of layer i: its v slice (kernel, bias) and its output projection."""
    att = layer(params, i)["attention"]
    att["qkv"]["kernel"][:, 2, n] = 0
    att["qkv"]["bias"][2, n] = 0
    att["output"]["kernel"][n] = 0


# ----------------------------------------------------------------- layer maps
@pytest.mark.parametrize(
    "t, s, want",
    [(6, 4, (1, 2, 4, 5)), (6, 3, (1, 3, 5)), (6, 2, (2, 5)), (6, 6, (0, 1, 2, 3, 4, 5)), (12, 4, (2, 5, 8, 11))],
)
def test_uniform_layer_map(t, s, want):
    assert teacher_layers("uniform", t, s) == want


def test_first_last_and_explicit_layer_maps():
    assert teacher_layers("first", 6, 4) == (0, 1, 2, 3)
    assert teacher_layers("last", 6, 4) == (2, 3, 4, 5)
    assert teacher_layers((0, 0, 5), 6, 3) == (0, 0, 5)  # repeats allowed
    assert teacher_layers("1,4", 6, 2) == (1, 4)
    with pytest.raises(UserError, match="layers"):
        teacher_layers((0, 1), 6, 3)
    with pytest.raises(UserError, match="layers"):
        teacher_layers((0, 6), 6, 2)
    with pytest.raises(UserError, match="num_layers"):
        teacher_layers("uniform", 3, 4)


# ------------------------------------------------------------------ copying
def test_same_arch_copies_the_teacher_exactly(teacher_arch, teacher, batches):
    student = init_student(teacher_arch, teacher_arch, teacher, head=HEAD, num_labels=LABELS)
    assert_trees_equal(student, teacher)
    assert all(x.dtype == np.float32 for x in jax.tree_util.tree_leaves(student))
    np.testing.assert_array_equal(logits(teacher_arch, student, batches[0]), logits(teacher_arch, teacher, batches[0]))


def test_explicit_layer_map_copies_those_layers(teacher_arch, teacher):
    arch = teacher_arch.replace(num_layers=2, num_heads=(3, 3), ffn_sizes=(44, 44))
    student = init_student(arch, teacher_arch, teacher, head=HEAD, num_labels=LABELS, cfg=InitConfig(layers=(0, 2)))
    assert_trees_equal(layer(student, 0), layer(teacher, 0))
    assert_trees_equal(layer(student, 1), layer(teacher, 2))
    for key in ("embeddings", "pooler", "classifier"):
        assert_trees_equal(student[key], teacher[key])


def test_shorter_positions_are_the_first_rows(teacher_arch, teacher):
    arch = teacher_arch.replace(max_position_embeddings=10)
    student = init_student(arch, teacher_arch, teacher, head=HEAD, num_labels=LABELS)
    pos = teacher["embeddings"]["position_embeddings"]["embedding"]
    np.testing.assert_array_equal(student["embeddings"]["position_embeddings"]["embedding"], pos[:10])


# -------------------------------------------------------- exact pruning of dead parts
@pytest.mark.parametrize("ffn", ["norm", "importance"])
def test_dropping_dead_ffn_neurons_is_exact(teacher_arch, teacher, batches, ffn):
    dead = {0: [3, 17, 40], 1: [0, 1, 2], 2: [43, 20, 21]}
    for i, neurons in dead.items():
        kill_neurons(teacher, i, neurons)
    arch = teacher_arch.replace(ffn_sizes=(41, 41, 41))
    scores = None
    if ffn == "importance":
        scores = importance_scores(build_model(teacher_arch, HEAD, LABELS), teacher, batches, task_loss(HEAD))
        for i, neurons in dead.items():
            assert np.all(scores["ffn"][i][neurons] == 0)
    cfg = InitConfig(ffn=ffn, heads="norm")
    student = init_student(arch, teacher_arch, teacher, head=HEAD, num_labels=LABELS, cfg=cfg, scores=scores)
    for batch in batches:
        np.testing.assert_allclose(logits(arch, student, batch), logits(teacher_arch, teacher, batch), atol=1e-5)
    # The kept neurons are the live ones, in their original order.
    live = np.delete(np.arange(44), dead[0])
    np.testing.assert_array_equal(layer(student, 0)["output"]["kernel"], layer(teacher, 0)["output"]["kernel"][live])


def test_dropping_a_dead_head_is_exact(teacher_arch, teacher, batches):
    kill_head(teacher, 0, 1)
    kill_head(teacher, 2, 0)
    arch = BertArch(
        num_layers=3, hidden_size=36, head_size=12, num_heads=(2, 3, 2), ffn_sizes=(44,) * 3,
        vocab_size=50, max_position_embeddings=16,
    )  # fmt: skip
    student = init_student(arch, teacher_arch, teacher, head=HEAD, num_labels=LABELS, cfg=InitConfig(heads="norm"))
    for batch in batches:
        np.testing.assert_allclose(logits(arch, student, batch), logits(teacher_arch, teacher, batch), atol=1e-5)
    wo = layer(teacher, 2)["attention"]["output"]["kernel"]
    np.testing.assert_array_equal(layer(student, 2)["attention"]["output"]["kernel"], wo[[1, 2]])


def test_dropping_dead_head_dimensions_is_exact(teacher_arch, teacher, batches):
    """Head size 12 -> 9: q/k dims and v/output dims that contribute nothing go; q is rescaled for sqrt(D)."""
    rng = np.random.default_rng(0)
    for i in range(3):
        att = layer(teacher, i)["attention"]
        for n in range(3):
            qk_dead, v_dead = rng.choice(12, 3, replace=False), rng.choice(12, 3, replace=False)
            att["qkv"]["kernel"][:, 0, n, qk_dead] = 0  # q.k then has no term in these dims
            att["qkv"]["bias"][0, n, qk_dead] = 0
            att["qkv"]["kernel"][:, 1, n, qk_dead] = 0
            att["qkv"]["bias"][1, n, qk_dead] = 0
            att["output"]["kernel"][n, v_dead] = 0
            att["qkv"]["kernel"][:, 2, n, v_dead] = 0
            att["qkv"]["bias"][2, n, v_dead] = 0
    arch = teacher_arch.replace(head_size=9)
    cfg = InitConfig(heads="first", ffn="first")
    student = init_student(arch, teacher_arch, teacher, head=HEAD, num_labels=LABELS, cfg=cfg)
    assert layer(student, 0)["attention"]["qkv"]["kernel"].shape == (36, 3, 3, 9)
    for batch in batches:
        np.testing.assert_allclose(logits(arch, student, batch), logits(teacher_arch, teacher, batch), atol=1e-5)


# ------------------------------------------------------------------ scores
def test_importance_scores(teacher_arch, teacher, batches):
    layer(teacher, 1)["attention"]["output"]["kernel"][2] = 0
    scores = importance_scores(build_model(teacher_arch, HEAD, LABELS), teacher, batches, task_loss(HEAD))
    assert [s.shape for s in scores["heads"]] == [(3,)] * 3
    assert [s.shape for s in scores["ffn"]] == [(44,)] * 3
    assert scores["hidden"].shape == (36,)
    for s in [*scores["heads"], *scores["ffn"], scores["hidden"]]:
        assert np.all(np.isfinite(s)) and np.all(s >= 0)
    assert scores["heads"][1][2] == 0
    assert np.all(scores["heads"][1][:2] > 0) and np.all(scores["hidden"] > 0)
    # max_batches limits the data; one batch gives other numbers.
    one = importance_scores(build_model(teacher_arch, HEAD, LABELS), teacher, batches, task_loss(HEAD), max_batches=1)
    assert not np.allclose(one["heads"][0], scores["heads"][0])
    # The zero head is the first to go.
    arch = teacher_arch.replace(num_heads=(3, 2, 3))
    student = init_student(arch, teacher_arch, teacher, head=HEAD, num_labels=LABELS, scores=scores)
    wo = layer(teacher, 1)["attention"]["output"]["kernel"]
    np.testing.assert_array_equal(layer(student, 1)["attention"]["output"]["kernel"], wo[[0, 1]])


def test_importance_ignores_padding(teacher_arch, teacher, batches):
    """Garbage in padded tokens and padding rows changes no score."""
    model = build_model(teacher_arch, HEAD, LABELS)
    noisy = []
    for batch in batches:
        batch = dict(batch)
        batch["input_ids"] = np.where(batch["attention_mask"] == 1, batch["input_ids"], 7).astype(np.int32)
        batch["labels"] = np.where(batch["weights"] > 0, batch["labels"], 2).astype(np.int32)
        noisy.append(batch)
    a = importance_scores(model, teacher, batches, task_loss(HEAD))
    b = importance_scores(model, teacher, noisy, task_loss(HEAD))
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-9)


def test_weight_scores(teacher_arch, teacher):
    kill_head(teacher, 1, 0)
    kill_neurons(teacher, 2, [5])
    scores = weight_scores(teacher, teacher_arch)
    assert scores["heads"][1][0] == 0 and np.all(scores["heads"][1][1:] > 0)
    assert scores["ffn"][2][5] == 0 and np.sum(scores["ffn"][2] == 0) == 1
    norms = [teacher["embeddings"]["LayerNorm"]] + [layer(teacher, i)[k] for i in range(3) for k in
                                                     ("attention_norm", "output_norm")]  # fmt: skip
    np.testing.assert_allclose(scores["hidden"], sum(np.abs(n["scale"]) for n in norms), rtol=1e-6)


# ------------------------------------------------------------------ hidden size
def small_student(**kw) -> BertArch:
    return BertArch.uniform(2, 24, 3, 30, head_size=8, vocab_size=50, max_position_embeddings=16, **kw)


@pytest.mark.parametrize("hidden", ["slice", "project"])
def test_smaller_hidden_size(teacher_arch, teacher, batches, hidden):
    arch = small_student()
    cfg = InitConfig(hidden=hidden, heads="norm", ffn="norm")
    student = init_student(arch, teacher_arch, teacher, head=HEAD, num_labels=LABELS, cfg=cfg)
    assert shapes(student) == shapes(abstract_params(build_model(arch, HEAD, LABELS)))
    assert np.all(np.isfinite(logits(arch, student, batches[0])))
    # The classifier comes from the teacher (its kernel shrunk), not from a random init.
    np.testing.assert_array_equal(student["classifier"]["bias"], teacher["classifier"]["bias"])


def test_slice_keeps_the_top_hidden_dims(teacher_arch, teacher):
    hidden = np.arange(36.0)[::-1] % 7  # ties broken by the earlier dim
    keep = np.sort(np.argsort(-hidden, kind="stable")[:24])
    scores = {**weight_scores(teacher, teacher_arch), "hidden": hidden}
    arch = small_student()
    student = init_student(arch, teacher_arch, teacher, head=HEAD, num_labels=LABELS, scores=scores)
    word = teacher["embeddings"]["word_embeddings"]["embedding"]
    np.testing.assert_array_equal(student["embeddings"]["word_embeddings"]["embedding"], word[:, keep])
    np.testing.assert_array_equal(student["pooler"]["kernel"], teacher["pooler"]["kernel"][np.ix_(keep, keep)])
    np.testing.assert_array_equal(student["classifier"]["kernel"], teacher["classifier"]["kernel"][keep])
    norm = layer(teacher, 2)["output_norm"]["scale"]
    np.testing.assert_array_equal(layer(student, 1)["output_norm"]["scale"], norm[keep])


def test_project_uses_the_principal_directions(teacher_arch, teacher):
    arch = small_student()
    cfg = InitConfig(hidden="project", heads="norm", ffn="norm")
    student = init_student(arch, teacher_arch, teacher, head=HEAD, num_labels=LABELS, cfg=cfg)
    word = teacher["embeddings"]["word_embeddings"]["embedding"].astype(np.float64)
    p = pca_projection(word, 24)
    assert p.shape == (36, 24)
    np.testing.assert_allclose(p.T @ p, np.eye(24), atol=1e-10)
    np.testing.assert_allclose(student["embeddings"]["word_embeddings"]["embedding"], word @ p, atol=1e-6)
    np.testing.assert_allclose(student["pooler"]["kernel"], p.T @ teacher["pooler"]["kernel"] @ p, atol=1e-6)
    centred = word - word.mean(axis=0)
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(36, 24)))
    error = lambda m: np.linalg.norm(centred - centred @ m @ m.T)  # noqa: E731
    assert error(p) < error(q)


# ------------------------------------------------------------------ task heads, random
def one_layer(arch: BertArch) -> BertArch:
    return arch.replace(num_layers=1, num_heads=arch.num_heads[:1], ffn_sizes=arch.ffn_sizes[:1])


def test_task_head_for_another_label_set_is_random(teacher_arch, random_params, caplog):
    arch = one_layer(teacher_arch)  # one layer and one student model: a single quick init compile
    teacher = random_params(arch, HEAD, LABELS)
    random = init_params(build_model(arch, HEAD, 4), jax.random.key(5))
    with caplog.at_level(logging.WARNING, logger="distill.kd.init"):
        student = init_student(arch, arch, teacher, head=HEAD, num_labels=4, seed=5)
    assert_trees_equal(student["classifier"], random["classifier"])
    assert_trees_equal(student["pooler"], teacher["pooler"])
    assert "classifier" in caplog.text and "random" in caplog.text

    # A token-level head with the same label count: reused only when the teacher's head is not known to differ.
    tagger = random_params(arch, "tagging", 4)
    student = init_student(arch, arch, tagger, head=HEAD, num_labels=4, seed=5)
    assert_trees_equal(student["classifier"], tagger["classifier"])
    assert_trees_equal(student["pooler"], random["pooler"])  # a tagger has no pooler
    student = init_student(arch, arch, tagger, head=HEAD, num_labels=4, seed=5, teacher_head="tagging")
    assert_trees_equal(student["classifier"], random["classifier"])

    reader = random_params(arch, "span")
    span = init_student(arch, arch, reader, head="span", num_labels=0)
    assert "pooler" not in span
    assert_trees_equal(span["qa_outputs"], reader["qa_outputs"])


def test_random_method(teacher_arch, teacher):
    arch = one_layer(teacher_arch)  # the model of the test above: its init is compiled already
    cfg = InitConfig(method="random")
    student = init_student(arch, teacher_arch, teacher, head=HEAD, num_labels=4, cfg=cfg, seed=5)
    random = init_params(build_model(arch, HEAD, 4), jax.random.key(5))
    assert_trees_equal(student, jax.tree_util.tree_map(np.asarray, random))


def test_init_from_loaded_teacher(teacher_arch, teacher, batches):
    kill_head(teacher, 0, 2)
    loaded = LoadedBert(teacher_arch, HEAD, LABELS, teacher, None, Path("."), {})
    arch = teacher_arch.replace(num_heads=(2, 3, 3))
    student = init_from_teacher(arch, loaded, head=HEAD, num_labels=LABELS, batches=iter(batches))
    for batch in batches:
        np.testing.assert_allclose(logits(arch, student, batch), logits(teacher_arch, teacher, batch), atol=1e-5)


# ------------------------------------------------------------------ validation
def test_incompatible_students_name_the_field(teacher_arch):
    base = dict(vocab_size=50, max_position_embeddings=16)
    cases = {
        "hidden_size": BertArch.uniform(3, 48, 4, 44, **base),
        "head_size": BertArch.uniform(3, 36, 2, 44, **base),
        "num_heads": teacher_arch.replace(num_heads=(3, 3, 4), head_size=9),
        "ffn_sizes": teacher_arch.replace(ffn_sizes=(44, 45, 44)),
        "vocab_size": teacher_arch.replace(vocab_size=51),
        "type_vocab_size": teacher_arch.replace(type_vocab_size=3),
        "max_position_embeddings": teacher_arch.replace(max_position_embeddings=17),
        "num_layers": BertArch.uniform(4, 36, 3, 44, **base),
    }
    for field, arch in cases.items():
        with pytest.raises(ArchError, match=field):
            check_compatible(arch, teacher_arch, InitConfig())
    check_compatible(teacher_arch.replace(max_position_embeddings=8), teacher_arch, InitConfig())
    # A random init needs nothing from the teacher; an explicit map may repeat layers.
    check_compatible(cases["hidden_size"], teacher_arch, InitConfig(method="random"))
    check_compatible(cases["num_layers"], teacher_arch, InitConfig(layers=(0, 1, 1, 2)))
    with pytest.raises(ArchError, match="layers"):
        check_compatible(cases["num_layers"], teacher_arch, InitConfig(layers=(0, 1, 2)))
    with pytest.raises(ArchError, match="layers"):
        check_compatible(teacher_arch, teacher_arch, InitConfig(layers=(0, 1, 3)))


@pytest.mark.parametrize(
    "kw, field",
    [
        ({"method": "copy"}, "method"),
        ({"layers": "middle"}, "layers"),
        ({"layers": (0, -1)}, "layers"),
        ({"layers": (0, 1.5)}, "layers"),
        ({"heads": "random"}, "heads"),
        ({"ffn": "magnitude"}, "ffn"),
        ({"hidden": "pca"}, "hidden"),
        ({"importance_batches": 0}, "importance_batches"),
    ],
)
def test_bad_config_names_the_field(kw, field):
    with pytest.raises(UserError, match=field) as e:
        InitConfig(**kw)
    if field in ("method", "heads", "ffn", "hidden"):
        assert "valid" in str(e.value)


def test_config_parses_layer_lists():
    assert InitConfig(layers="0, 2,5").layers == (0, 2, 5)
    assert InitConfig(layers=[1, 2]).layers == (1, 2)
    assert InitConfig(heads="norm", ffn="first").needs_importance is False
    assert InitConfig().needs_importance is True
