"""The supernet: rewiring keeps the function, extraction is an ordinary student, masks equal slices."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import traverse_util

from distill.arch import ArchError, BertArch
from distill.kd.importance import weight_scores
from distill.kd.init import InitConfig, init_student
from distill.kd.supernet import Subnet, SubnetChoices, extract, masked, padded, rewire, width_masks
from distill.model.bert import abstract_params, build_model

HEAD, LABELS = "classification", 3


@pytest.fixture(scope="module")
def teacher_arch() -> BertArch:
    """3 layers, hidden 36, 3 heads of 12, FFN 44."""
    return BertArch.uniform(3, 36, 3, 44, vocab_size=101, max_position_embeddings=16)


@pytest.fixture
def teacher(teacher_arch, random_params) -> dict:
    return random_params(teacher_arch, HEAD, LABELS, seed=1)


@pytest.fixture
def scores(teacher_arch) -> dict:
    """Random importance scores: rewiring must permute every kind of unit."""
    rng = np.random.default_rng(5)
    return {
        "heads": [rng.random(3) for _ in range(3)],
        "ffn": [rng.random(44) for _ in range(3)],
        "hidden": rng.random(36),
    }


def logits(arch: BertArch, params: dict, batch) -> np.ndarray:
    return np.asarray(build_model(arch, HEAD, LABELS).apply({"params": params}, *batch).logits)


HETERO = Subnet(layers=(0, 2), hidden_size=24, num_heads=(1, 2), ffn_sizes=(7, 31))


def test_rewiring_keeps_the_function_and_orders_units(teacher_arch, teacher, scores, padded_batch):
    supernet = rewire(teacher, teacher_arch, scores)
    np.testing.assert_allclose(logits(teacher_arch, supernet, padded_batch),
                               logits(teacher_arch, teacher, padded_batch), atol=1e-5)
    # The rewired network's own weight scores are the teacher's, permuted: the top head moved to the front.
    top = int(np.argmax(scores["heads"][1]))
    np.testing.assert_allclose(weight_scores(supernet, teacher_arch)["heads"][1][0],
                               weight_scores(teacher, teacher_arch)["heads"][1][top], rtol=1e-6)


def test_extraction_is_the_student_that_init_builds(teacher_arch, teacher, scores, padded_batch):
    """An independent path to the same slices: `init_student` keeping the first heads and neurons of the
    mapped layers and the first hidden dims (scores that rank the first highest)."""
    supernet = rewire(teacher, teacher_arch, scores)
    arch = HETERO.arch(teacher_arch)
    params = extract(supernet, teacher_arch, HETERO)
    want = jax.tree_util.tree_map(lambda x: (x.shape, x.dtype), abstract_params(build_model(arch, HEAD, LABELS)))
    assert jax.tree_util.tree_map(lambda x: (x.shape, x.dtype), params) == want
    first = {"heads": [], "ffn": [], "hidden": -np.arange(36.0)}
    cfg = InitConfig(layers=HETERO.layers, heads="first", ffn="first", hidden="slice")
    built = init_student(arch, teacher_arch, supernet, head=HEAD, num_labels=LABELS, cfg=cfg, scores=first,
                         teacher_head=HEAD)
    flat, ref = traverse_util.flatten_dict(params), traverse_util.flatten_dict(built)
    assert flat.keys() == ref.keys()
    for path in ref:
        np.testing.assert_array_equal(flat[path], ref[path], err_msg="/".join(path))
    np.testing.assert_allclose(logits(arch, params, padded_batch), logits(arch, built, padded_batch), atol=1e-6)


def test_masks_compute_the_sliced_subnet(teacher_arch, teacher, scores, padded_batch):
    supernet = rewire(teacher, teacher_arch, scores)
    wide = padded(teacher_arch, HETERO.shape)
    assert wide.num_heads == (2, 2) and wide.ffn_sizes == (44, 44)  # 2 heads of 12 fit hidden 24
    head_mask, ffn_mask = width_masks(HETERO, teacher_arch)
    got = logits(wide.arch(teacher_arch), masked(supernet, teacher_arch, HETERO.shape, head_mask, ffn_mask),
                 padded_batch)
    want = logits(HETERO.arch(teacher_arch), extract(supernet, teacher_arch, HETERO), padded_batch)
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_largest_of_a_teacher_shaped_space_is_the_teacher(teacher_arch, teacher, scores, padded_batch):
    choices = SubnetChoices(layers=(1, 2, 3), hidden=(24, 36), heads=(1, 3), ffn=(7, 44))
    largest = choices.largest(teacher_arch)
    assert largest.arch(teacher_arch) == teacher_arch
    params = extract(rewire(teacher, teacher_arch, scores), teacher_arch, largest)
    np.testing.assert_allclose(logits(teacher_arch, params, padded_batch), logits(teacher_arch, teacher, padded_batch),
                               atol=1e-5)
    assert choices.smallest(teacher_arch) == Subnet((2,), 24, (1,), (7,))  # uniform map: the last layer


def test_sandwich_is_a_function_of_the_step(teacher_arch):
    choices = SubnetChoices(layers=(1, 2), hidden=(24, 36), heads=(1, 2, 3), ffn=(7, 44))
    a = choices.sandwich(teacher_arch, step=4, seed=0, num_sampled=3)
    assert a == choices.sandwich(teacher_arch, step=4, seed=0, num_sampled=3)
    assert a[0] == choices.largest(teacher_arch) and a[1] == choices.smallest(teacher_arch) and len(a) == 5
    assert choices.sandwich(teacher_arch, step=4, seed=-1, num_sampled=3)[0] == a[0]  # any int seed works
    seen = {s for step in range(20) for s in choices.sandwich(teacher_arch, step, 0, 3)[2:]}
    assert len(seen) > 10
    for sub in seen:  # every sampled sub-network is a valid student of the space
        arch = sub.arch(teacher_arch)
        assert arch.num_layers in (1, 2) and arch.hidden_size in (24, 36)
        assert set(arch.num_heads) <= {1, 2, 3} and set(arch.ffn_sizes) <= {7, 44}
        assert all(n * 12 <= arch.hidden_size for n in arch.num_heads)


@pytest.mark.parametrize(
    "choices, field",
    [
        (dict(layers=(1, 4), hidden=(36,), heads=(3,), ffn=(44,)), "layers"),
        (dict(layers=(1,), hidden=(36, 48), heads=(3,), ffn=(44,)), "hidden"),
        (dict(layers=(1,), hidden=(30,), heads=(2,), ffn=(44,)), "hidden"),
        (dict(layers=(1,), hidden=(36,), heads=(4,), ffn=(44,)), "heads"),
        (dict(layers=(1,), hidden=(12, 36), heads=(2, 3), ffn=(44,)), "heads"),
        (dict(layers=(1,), hidden=(36,), heads=(3,), ffn=(45,)), "ffn"),
    ],
)
def test_a_space_the_supernet_cannot_represent_is_refused(teacher_arch, choices, field):
    with pytest.raises(ArchError, match=f"^{field}:"):
        SubnetChoices(**choices).check(teacher_arch)


def test_bad_subnets_and_supernets_are_refused(teacher_arch):
    with pytest.raises(ArchError, match="^layer_map:"):
        SubnetChoices(layers=(1,), hidden=(36,), heads=(3,), ffn=(44,), layer_map="middle")
    with pytest.raises(ArchError, match="^layers:"):
        Subnet((2, 1), 36, (1, 1), (4, 4)).arch(teacher_arch)
    with pytest.raises(ArchError, match="^num_heads:"):
        Subnet((0,), 36, (4,), (4,)).arch(teacher_arch)
    hetero = teacher_arch.replace(num_heads=(3, 2, 3))
    with pytest.raises(ArchError, match="equal heads"):
        Subnet((0,), 36, (1,), (4,)).arch(hetero)
