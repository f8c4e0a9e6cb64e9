"""Cross-layer parameter sharing (`BertArch.layer_groups`): the arch, the model, teacher init, HF I/O and export.

Tiny odd sizes (hidden 36 or 30, 3 heads of 12, FFN 37 / 20, sequence 7) with
several groupings: adjacent pairs with different sizes per group, a cycle
(0, 1, 0) and all layers in one group.
"""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from distill.arch import HEADS, ArchError, BertArch, parse_arch_name
from distill.export.hf import export_model
from distill.export.load import load_export
from distill.kd.importance import importance_scores, weight_scores
from distill.kd.init import InitConfig, init_student
from distill.kd.losses import task_loss
from distill.model.bert import abstract_params, build_model
from distill.model.hf import WeightsError, from_hf, to_hf
from tasks.registry import get_task

SHARED = [
    BertArch(4, 36, 12, (3, 3, 1, 1), (37, 37, 20, 20), vocab_size=101, max_position_embeddings=16,
             layer_groups=(0, 0, 1, 1)),
    BertArch.uniform(3, 36, 3, 37, vocab_size=101, max_position_embeddings=16, layer_groups=(0, 1, 0)),
    BertArch.uniform(3, 30, 3, 7, vocab_size=29, max_position_embeddings=11, type_vocab_size=3,
                     layer_groups=(0, 0, 0)),
]
IDS = [a.name for a in SHARED]


def unshared(arch: BertArch) -> BertArch:
    return arch.replace(layer_groups=None)


def expand(params: dict, arch: BertArch) -> dict:
    """Shared params -> the unshared model's tree, each layer holding a copy of its group's weights."""
    encoder = {f"layer_{i}": jax.tree.map(np.array, params["encoder"][f"layer_{g}"]) for i, g in enumerate(arch.groups)}
    return {**params, "encoder": encoder}


def n_params(tree) -> int:
    return sum(math.prod(np.shape(x)) for x in jax.tree.leaves(tree))


def forward(arch: BertArch, params: dict, batch, head: str = "classification", num_labels: int = 3):
    model = build_model(arch, head, num_labels)
    return model.apply({"params": params}, *batch, output_hidden_states=True, output_attentions=True)


# ------------------------------------------------------------------------ the arch
@pytest.mark.parametrize("arch", SHARED, ids=IDS)
def test_name_json_and_dict_round_trips(arch):
    assert arch.name.endswith("-G" + ",".join(map(str, arch.layer_groups)))
    assert parse_arch_name(arch.name, base=arch) == arch
    back = BertArch.from_json(arch.to_json())
    assert back == arch and hash(back) == hash(arch) and isinstance(back.layer_groups, tuple)
    assert json.loads(arch.to_json())["layer_groups"] == list(arch.layer_groups)
    assert back != unshared(arch) and back.name != unshared(arch).name


def test_unshared_dict_has_no_field_and_old_configs_load(tiny_arch):
    """An unshared arch's dict (config.json, cache keys) is what it was before sharing existed."""
    d = tiny_arch.to_dict()
    assert "layer_groups" not in d
    assert BertArch.from_dict(d) == tiny_arch and BertArch.from_dict(d).layer_groups is None
    assert "-G" not in tiny_arch.name


def test_every_layer_in_its_own_group_is_no_sharing(tiny_arch):
    own = tiny_arch.replace(layer_groups=[0, 1])
    assert own.layer_groups is None and own == tiny_arch and hash(own) == hash(tiny_arch)
    assert own.groups == (0, 1) and own.num_groups == 2 and own.group_starts == (0, 1)
    assert parse_arch_name("2L-36-H3-F37-G0,1", base=tiny_arch) == tiny_arch


def test_group_properties():
    arch = SHARED[0]
    assert arch.groups == (0, 0, 1, 1) and arch.num_groups == 2 and arch.group_starts == (0, 2)
    cycle = SHARED[1]
    assert cycle.num_groups == 2 and cycle.group_starts == (0, 1)


@pytest.mark.parametrize(
    "groups, text",
    [
        ((0, 0, 1), "has 3 entries for 4 layers"),
        ((1, 1, 0, 0), "layer 0 uses group 1 before group 0"),
        ((0, 0, 2, 2), "layer 2 uses group 2 before group 1"),
        ((0, 0, -1, 1), "integers >= 0"),
        ((0, True, 1, 1), "integers >= 0"),
        ((0, 1, 1, 1), "layers 1 and 2 share group 1 but have heads 3 and 1"),
        ("0011", "expected one group index per layer"),
    ],
)
def test_invalid_groupings_name_the_field(groups, text):
    kwargs = dict(num_layers=4, hidden_size=36, head_size=12, num_heads=(3, 3, 1, 1), ffn_sizes=(37, 37, 20, 20))
    with pytest.raises(ArchError, match="^layer_groups: ") as err:
        BertArch(**kwargs, layer_groups=groups)
    assert text in str(err.value)


def test_groups_need_equal_ffn_sizes():
    with pytest.raises(ArchError, match="^layer_groups: layers 0 and 1 share group 0 but have FFN size 37 and 20"):
        BertArch(2, 36, 12, (3, 3), (37, 20), layer_groups=(0, 0))
    with pytest.raises(ArchError, match="^layer_groups: "):
        parse_arch_name("2L-36-H3-F37,20-G0,0")


@pytest.mark.parametrize("arch", SHARED, ids=IDS)
@pytest.mark.parametrize("head", HEADS)
def test_num_params_counts_each_group_once(arch, head):
    num_labels = {"classification": 3, "tagging": 5, "regression": 1, "span": 2, "none": 0}[head]
    real = n_params(abstract_params(build_model(arch, head, num_labels)))
    assert arch.num_params(head, num_labels) == real < unshared(arch).num_params(head, num_labels)
    assert arch.flops(7, head, num_labels) == unshared(arch).flops(7, head, num_labels)


# ------------------------------------------------------------------------ the model
@pytest.mark.parametrize("arch", SHARED, ids=IDS)
def test_param_tree_has_one_entry_per_group(arch):
    tree = abstract_params(build_model(arch, "classification", 3))
    flat = abstract_params(build_model(unshared(arch), "classification", 3))
    assert set(tree["encoder"]) == {f"layer_{g}" for g in range(arch.num_groups)}
    for g, i in enumerate(arch.group_starts):
        shapes = jax.tree.map(lambda x: x.shape, tree["encoder"][f"layer_{g}"])
        assert shapes == jax.tree.map(lambda x: x.shape, flat["encoder"][f"layer_{i}"])


@pytest.mark.parametrize("arch", SHARED, ids=IDS)
def test_forward_equals_unshared_model_with_copied_weights(arch, random_params, padded_batch):
    params = random_params(arch, "classification", 3, seed=2)
    batch = tuple(np.minimum(x, arch.vocab_size - 1) for x in padded_batch)
    got, want = forward(arch, params, batch), forward(unshared(arch), expand(params, arch), batch)
    assert len(got.hidden_states) == arch.num_layers + 1 and len(got.attention_scores) == arch.num_layers
    np.testing.assert_allclose(got.logits, want.logits, atol=1e-6, rtol=0)
    for a, b in zip(got.hidden_states + got.attention_scores, want.hidden_states + want.attention_scores):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
    # The layers of a group really run one set of weights: the outputs differ from layer to layer.
    assert not np.allclose(got.hidden_states[1], got.hidden_states[2])


def test_gradient_of_a_group_is_the_sum_over_its_layers(random_params, padded_batch):
    arch = SHARED[0]
    params = random_params(arch, "classification", 3, seed=4)

    def loss(a, p):
        return jnp.sum(forward(a, p, padded_batch).logits ** 2)

    shared = jax.jit(jax.grad(lambda p: loss(arch, p)))(params)["encoder"]
    per_layer = jax.jit(jax.grad(lambda p: loss(unshared(arch), p)))(expand(params, arch))["encoder"]
    for g in range(arch.num_groups):
        layers = [per_layer[f"layer_{i}"] for i, gi in enumerate(arch.groups) if gi == g]
        summed = jax.tree.map(lambda *xs: sum(xs), *layers)
        for a, b in zip(jax.tree.leaves(shared[f"layer_{g}"]), jax.tree.leaves(summed)):
            np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------------------ init
@pytest.fixture(scope="module")
def teacher_arch() -> BertArch:
    """4 layers, hidden 36, 3 heads of 12, FFN 44."""
    return BertArch.uniform(4, 36, 3, 44, vocab_size=101, max_position_embeddings=16)


def test_group_copies_the_teacher_layer_of_its_first_layer(teacher_arch, random_params):
    teacher = random_params(teacher_arch, "classification", 3, seed=1)
    flat = teacher_arch.replace(num_heads=(2, 2, 2, 2), ffn_sizes=(30, 30, 19, 19))
    shared = flat.replace(layer_groups=(0, 0, 1, 1))
    for layers in ("uniform", (3, 0, 2, 1)):
        cfg = InitConfig(layers=layers, heads="norm", ffn="norm")
        a = init_student(shared, teacher_arch, teacher, head="classification", num_labels=3, cfg=cfg)
        b = init_student(flat, teacher_arch, teacher, head="classification", num_labels=3, cfg=cfg)
        assert set(a["encoder"]) == {"layer_0", "layer_1"}
        for g, i in enumerate(shared.group_starts):
            for x, y in zip(jax.tree.leaves(a["encoder"][f"layer_{g}"]), jax.tree.leaves(b["encoder"][f"layer_{i}"])):
                np.testing.assert_array_equal(x, y)
        for part in ("embeddings", "pooler", "classifier"):
            for x, y in zip(jax.tree.leaves(a[part]), jax.tree.leaves(b[part])):
                np.testing.assert_array_equal(x, y)
    # Same sizes as the teacher: group 1 is an exact copy of teacher layer 1 under the 'first' map.
    same = teacher_arch.replace(layer_groups=(0, 1, 1, 1))
    c = init_student(same, teacher_arch, teacher, head="classification", num_labels=3, cfg=InitConfig(layers="first"))
    for x, y in zip(jax.tree.leaves(c["encoder"]["layer_1"]), jax.tree.leaves(teacher["encoder"]["layer_1"])):
        np.testing.assert_array_equal(x, np.asarray(y))


def test_scores_of_a_shared_model_are_its_groups(random_params):
    """weight_scores / importance_scores walk layers: on a shared model a layer scores as its group."""
    arch = SHARED[0]
    params = random_params(arch, "classification", 3, seed=6)
    rng = np.random.default_rng(0)
    batch = {
        "input_ids": rng.integers(5, 101, (4, 7)).astype(np.int32),
        "token_type_ids": np.zeros((4, 7), np.int32),
        "attention_mask": np.ones((4, 7), np.int32),
        "weights": np.ones(4, np.float32),
        "index": np.arange(4, dtype=np.int32),
        "labels": rng.integers(0, 3, 4).astype(np.int32),
    }
    model = build_model(arch, "classification", 3)
    for scores in (weight_scores(params, arch),
                   importance_scores(model, params, [batch], task_loss("classification"))):
        assert [len(h) for h in scores["heads"]] == list(arch.num_heads)
        assert [len(f) for f in scores["ffn"]] == list(arch.ffn_sizes)
        for i, g in enumerate(arch.groups):
            np.testing.assert_array_equal(scores["heads"][i], scores["heads"][arch.group_starts[g]])


# ------------------------------------------------------------------------ HF layout and export
@pytest.mark.parametrize("arch", SHARED, ids=IDS)
def test_to_hf_writes_every_layer_or_each_group_once(arch, random_params):
    params = random_params(arch, "none", seed=3)
    target = abstract_params(build_model(arch, "none"))
    full, grouped = to_hf(params, arch, prefix=""), to_hf(params, arch, prefix="", grouped=True)
    layers = lambda state: {int(k.split(".")[2]) for k in state if k.startswith("encoder.layer.")}  # noqa: E731
    assert layers(full) == set(range(arch.num_layers)) and layers(grouped) == set(arch.group_starts)
    assert full.keys() >= grouped.keys() and all(np.array_equal(full[k], grouped[k]) for k in grouped)
    # HF BERT cannot share: every layer holds its group's weights, and the unshared model reads them as such.
    flat_params, _, _ = from_hf(full, unshared(arch), abstract_params(build_model(unshared(arch), "none")))
    expanded = expand(params, arch)
    for path, value in traverse_util.flatten_dict(flat_params).items():
        np.testing.assert_array_equal(value, traverse_util.flatten_dict(expanded)[path])
    for state in (full, grouped):
        back, missing, unexpected = from_hf(state, arch, target)
        assert not missing and not unexpected
        assert jax.tree.map(np.shape, back) == jax.tree.map(np.shape, params)
        for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params)):
            np.testing.assert_array_equal(a, b)


def test_copies_of_a_group_must_agree(random_params):
    arch = SHARED[0]
    state = to_hf(random_params(arch, "none", seed=3), arch, prefix="")
    state["encoder.layer.3.output.dense.bias"] = state["encoder.layer.3.output.dense.bias"] + 1.0
    with pytest.raises(WeightsError, match="layers 2 and 3 share parameter group 1 .* output/bias weights differ"):
        from_hf(state, arch, abstract_params(build_model(arch, "none")), source="ckpt")


def _export(arch, random_params, tokenizer, out, **kw):
    task = get_task("sst2")
    params = random_params(arch, task.kind, task.num_labels, seed=5)
    return task, params, export_model(out, arch, params, tokenizer, task, **kw)


def _weight_layers(out) -> set[int]:
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), framework="numpy") as f:
        return {int(k.split(".")[3]) for k in f.keys() if k.startswith("bert.encoder.layer.")}


@pytest.mark.parametrize("arch", SHARED[:2], ids=IDS[:2])
def test_export_round_trip_stores_each_group_once(arch, random_params, tiny_tokenizer, padded_batch, tmp_path):
    task, params, summary = _export(arch, random_params, tiny_tokenizer, tmp_path / "m")
    out = tmp_path / "m"
    assert _weight_layers(out) == set(arch.group_starts)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["bertnas"]["arch"]["layer_groups"] == list(arch.layer_groups)
    assert cfg["num_hidden_layers"] == arch.num_layers
    padded = arch.replace(num_heads=(3,) * arch.num_layers, ffn_sizes=(37,) * arch.num_layers)
    assert summary["num_params"] == arch.num_params(task.kind, task.num_labels)
    assert summary["stored_params"] == padded.num_params(task.kind, task.num_labels)  # each group once (padded)

    back = load_export(out)
    assert back.arch == arch and back.arch.layer_groups == arch.layer_groups
    for a, b in zip(jax.tree.leaves(back.params), jax.tree.leaves(params)):
        np.testing.assert_array_equal(a, b)
    logits = lambda a, p: forward(a, p, padded_batch, task.kind, task.num_labels).logits  # noqa: E731
    np.testing.assert_array_equal(logits(back.arch, back.params), logits(arch, params))

    # The HF layout writes every layer (more bytes) and loads back the same.
    _, _, full = _export(arch, random_params, tiny_tokenizer, tmp_path / "hf", hf_layout=True)
    assert _weight_layers(tmp_path / "hf") == set(range(arch.num_layers))
    assert full["stored_params"] == unshared(padded).num_params(task.kind, task.num_labels) > summary["stored_params"]
    assert full["weight_bytes"] > summary["weight_bytes"]
    again = load_export(tmp_path / "hf")
    assert again.arch == arch
    np.testing.assert_array_equal(logits(again.arch, again.params), logits(arch, params))


@pytest.mark.torch
def test_transformers_loads_the_hf_layout_export(random_params, tiny_tokenizer, padded_batch, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    arch = SHARED[0]
    task, params, _ = _export(arch, random_params, tiny_tokenizer, tmp_path / "hf", hf_layout=True)
    hf_model, info = transformers.AutoModelForSequenceClassification.from_pretrained(
        tmp_path / "hf", output_loading_info=True, attn_implementation="eager"
    )
    hf_model.eval()
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    names = ("input_ids", "token_type_ids", "attention_mask")
    with torch.no_grad():
        hf_logits = hf_model(**{k: torch.as_tensor(v, dtype=torch.long) for k, v in zip(names, padded_batch)}).logits
    ours = forward(arch, params, padded_batch, task.kind, task.num_labels).logits
    np.testing.assert_allclose(hf_logits.numpy(), ours, atol=1e-4, rtol=0)


# ------------------------------------------------------------------------ end to end
def test_distill_a_shared_student_end_to_end(tmp_path):
    """`distill` with a `-G` student: teacher init, per-layer hidden loss, checkpoints, export, load_export."""
    from helpers import write_sst2, write_task_teacher

    from distill.kd.objective import LossConfig
    from distill.run.config import DistillConfig
    from distill.run.distillation import distill
    from distill.run.evaluation import predict_features
    from distill.train.loop import LoopConfig
    from tasks.features import encode
    from tasks.readers import read_split

    data = write_sst2(tmp_path / "data", n_train=48, n_dev=24)
    teacher = write_task_teacher(tmp_path / "teacher", "sst2")
    cfg = DistillConfig(
        task="sst2", teacher=str(teacher), student="3L-24-H3-F30-D8-G0,0,1", data_dir=str(data),
        init=InitConfig(layers="0,1,1"), loss=LossConfig(hidden_weight=1.0),
        loop=LoopConfig(epochs=1, batch_size=16, checkpoint_every=2),
    )
    results = distill(cfg, tmp_path / "out")
    export = load_export(tmp_path / "out" / "export")
    assert results["student"] == export.arch.name == "3L-24-H3-F30-G0,0,1" and results["layer_map"] == [0, 1, 1]
    assert export.arch.layer_groups == (0, 0, 1) and set(export.params["encoder"]) == {"layer_0", "layer_1"}
    assert results["student_params"] == results["export"]["num_params"] == results["export"]["stored_params"]
    assert results["student_params"] == export.arch.num_params("classification", 2)
    task = get_task("sst2")
    dev_ex = read_split(task, "dev", data)
    dev = encode(task, dev_ex, export.tokenizer)
    accuracy = (predict_features(export.model, export.params, dev).argmax(-1) == dev.labels).mean()
    assert accuracy == results["best"]["accuracy"]
