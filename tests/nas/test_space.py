"""nas/space.py: the search space as data, Optuna define-by-run sampling, files and presets."""

from __future__ import annotations

import dataclasses
import itertools
import json

import optuna
import pytest
import yaml

from distill.arch import BertArch
from nas.space import KNOBS, PRESETS, SearchSpace, SpaceError, get_space, share_groups

optuna.logging.set_verbosity(optuna.logging.WARNING)

TEACHER = BertArch.uniform(6, 384, 12, 1536)  # MiniLM-sized, head size 32
TINY = BertArch.uniform(2, 36, 3, 37, vocab_size=101, max_position_embeddings=16)  # head size 12


def _run(space: SearchSpace, teacher: BertArch, sampler, n: int) -> list[tuple[dict, optuna.trial.FrozenTrial]]:
    """Ask/tell `n` trials; return each sample and its finished trial."""
    study = optuna.create_study(sampler=sampler)
    out = []
    for i in range(n):
        trial = study.ask()
        sample = space.sample(trial, teacher)
        study.tell(trial, float((i * 7919) % 13))  # arbitrary objective values
        out.append((sample, study.trials[-1]))
    return out


def _check_sample(space: SearchSpace, teacher: BertArch, sample: dict) -> BertArch:
    json.dumps(sample)  # a Ray Tune config: plain JSON scalars and lists
    arch = space.arch(sample, teacher)
    n = sample["layers"]
    assert n in space.layers and sample["hidden"] in space.hidden
    assert len(sample["heads"]) == len(sample["ffn"]) == arch.num_layers == n
    assert len(arch.num_heads) == len(arch.ffn_sizes) == n
    assert all(h in space.heads and h * arch.head_size <= arch.hidden_size for h in arch.num_heads)
    assert all(f in space.ffn for f in arch.ffn_sizes)
    assert arch.head_size == teacher.head_size
    assert (arch.vocab_size, arch.max_position_embeddings) == (teacher.vocab_size, teacher.max_position_embeddings)
    knobs = SearchSpace.knobs(sample)
    assert set(knobs) == {"learning_rate", "temperature", "hard_weight", "hidden_weight", "init_layers"}
    for k, v in knobs.items():
        assert v in getattr(space, k)
    return arch


def test_random_sampling_default_space():
    space = PRESETS["default"]
    archs = []
    for sample, trial in _run(space, TEACHER, optuna.samplers.RandomSampler(seed=0), 50):
        assert trial.state == optuna.trial.TrialState.COMPLETE
        archs.append(_check_sample(space, TEACHER, sample))
        # Per-layer parameters exist only for the sampled layers.
        layer_params = {k.split("@")[0] for k in trial.params if k.startswith(("heads", "ffn"))}
        n = sample["layers"]
        assert layer_params == {f"heads_{i}" for i in range(n)} | {f"ffn_{i}" for i in range(n)}
        # A filtered heads list gets a name of its own: `@max<largest fitting choice>`.
        cap = sample["hidden"] // 32
        suffix = "" if cap >= 12 else f"@max{max(h for h in space.heads if h <= cap)}"
        assert f"heads_0{suffix}" in trial.params
        # Single-valued knobs are constants: returned but not suggested.
        assert "hard_weight" not in trial.params and "init_layers" not in trial.params
        assert "temperature" in trial.params and "learning_rate" in trial.params
    assert any(not a.is_uniform for a in archs)
    assert len({a.hidden_size for a in archs}) > 1 and len({a.num_layers for a in archs}) > 1


def test_tpe_sampling_dynamic_space():
    space = PRESETS["default"]
    for sample, trial in _run(space, TEACHER, optuna.samplers.TPESampler(seed=0, n_startup_trials=5), 30):
        assert trial.state == optuna.trial.TrialState.COMPLETE
        _check_sample(space, TEACHER, sample)


def test_naive_naming_would_break_optuna():
    """The reason for the `@max` names: one name with two choice lists is an Optuna error."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    trial.suggest_categorical("heads_0", [2, 4])
    study.tell(trial, 0.0)
    with pytest.raises(ValueError, match="dynamic value space"):
        study.ask().suggest_categorical("heads_0", [2, 4, 6])


def test_uniform_space_gives_uniform_archs():
    space = PRESETS["uniform"]
    for sample, trial in _run(space, TEACHER, optuna.samplers.RandomSampler(seed=1), 20):
        arch = _check_sample(space, TEACHER, sample)
        assert arch.is_uniform
        assert not any(k.startswith(("heads_", "ffn_")) for k in trial.params)


def test_tiny_space_with_tiny_teacher():
    space = PRESETS["tiny"]
    space.validate(TINY)
    for sample, _ in _run(space, TINY, optuna.samplers.RandomSampler(seed=2), 20):
        arch = _check_sample(space, TINY, sample)
        assert arch.vocab_size == 101 and arch.head_size == 12


def test_size_counts_distinct_archs():
    space = PRESETS["tiny"]
    archs = set()
    for layers, hidden in itertools.product(space.layers, space.hidden):
        fit = [h for h in space.heads if h * TINY.head_size <= hidden]
        for combo in itertools.product(itertools.product(fit, space.ffn), repeat=layers):
            archs.add((layers, hidden, combo))
    assert space.size(TINY) == len(archs) == 62
    uniform = dataclasses.replace(space, heterogeneous=False)
    assert uniform.size(TINY) == (2 * 2 + 3 * 2) * 2


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"ffn": ()}, "ffn"),
        ({"heads": []}, "heads"),
        ({"hidden": (128, 0)}, "hidden"),
        ({"layers": (2, 2)}, "layers"),
        ({"learning_rate": (0.0,)}, "learning_rate"),
        ({"learning_rate": (float("inf"),)}, "learning_rate"),
        ({"temperature": (-1.0,)}, "temperature"),
        ({"hidden_weight": (-0.1,)}, "hidden_weight"),
        ({"init_layers": ("middle",)}, "init_layers"),
        ({"head_size": -1}, "head_size"),
        ({"heterogeneous": "yes"}, "heterogeneous"),
    ],
)
def test_post_init_rejects(changes, field):
    with pytest.raises(SpaceError, match=f"^{field}:"):
        SearchSpace(**changes)


def test_post_init_coerces_lists():
    space = SearchSpace(layers=[2, 3], learning_rate=["1e-4", 2e-4], init_layers="first")
    assert space.layers == (2, 3) and space.learning_rate == (1e-4, 2e-4) and space.init_layers == ("first",)
    assert hash(space) == hash(SearchSpace(layers=(2, 3), learning_rate=(1e-4, 2e-4), init_layers=("first",)))


@pytest.mark.parametrize(
    "changes, field, text",
    [
        ({"layers": (2, 8)}, "layers", "8 exceeds the teacher's 6"),
        ({"hidden": (128, 512)}, "hidden", "512 exceeds"),
        ({"ffn": (512, 3072)}, "ffn", "3072 exceeds"),
        ({"heads": (2, 16)}, "heads", "16 exceeds"),
        ({"hidden": (128, 200)}, "hidden", "200 is not a multiple of the head size 32"),
        ({"hidden": (64, 128), "heads": (4, 6)}, "heads", "fits hidden 64"),
        ({"head_size": 64}, "head_size", "64 exceeds"),
    ],
)
def test_validate_rejects(changes, field, text):
    space = dataclasses.replace(PRESETS["default"], **changes)
    with pytest.raises(SpaceError, match=f"^{field}: ") as err:
        space.validate(TEACHER)
    assert text in str(err.value)


def test_smaller_head_size():
    space = dataclasses.replace(PRESETS["default"], head_size=16, hidden=(96, 128), heads=(2, 6, 8))
    space.validate(TEACHER)
    for sample, _ in _run(space, TEACHER, optuna.samplers.RandomSampler(seed=3), 10):
        arch = space.arch(sample, TEACHER)
        assert arch.head_size == 16 and all(h * 16 <= arch.hidden_size for h in arch.num_heads)


def test_presets():
    assert set(PRESETS) >= {"default", "uniform", "smoke", "tiny"}
    for name, space in PRESETS.items():
        assert space.name == name
        assert SearchSpace.from_dict(space.to_dict()) == space
    PRESETS["default"].validate(TEACHER)
    PRESETS["uniform"].validate(TEACHER)
    PRESETS["smoke"].validate(TEACHER)
    PRESETS["tiny"].validate(TINY)
    assert PRESETS["default"].heterogeneous and not PRESETS["uniform"].heterogeneous
    assert len({PRESETS["default"], PRESETS["uniform"], PRESETS["default"]}) == 2  # hashable


def test_every_named_layer_map_of_the_space_is_one_the_initialisation_takes():
    from distill.arch import LAYER_MAPS
    from distill.kd.layers import teacher_layers

    space = dataclasses.replace(PRESETS["default"], init_layers=LAYER_MAPS)
    for name in space.init_layers:
        mapping = teacher_layers(name, 6, 4)
        assert len(mapping) == 4 and all(0 <= i < 6 for i in mapping)
    with pytest.raises(SpaceError, match="init_layers"):
        dataclasses.replace(PRESETS["default"], init_layers=("middle",))


@pytest.mark.parametrize("suffix", [".json", ".yaml", ".yml"])
def test_file_round_trip(tmp_path, suffix):
    space = dataclasses.replace(PRESETS["default"], name="mine", layers=(2, 4), temperature=(1.0, 3.0))
    path = tmp_path / f"space{suffix}"
    path.write_text(json.dumps(space.to_dict()) if suffix == ".json" else yaml.safe_dump(space.to_dict()))
    assert SearchSpace.from_file(path) == space
    assert get_space(str(path)) == space


def test_yaml_file_name_defaults_and_scalars(tmp_path):
    path = tmp_path / "narrow.yaml"
    path.write_text("layers: [2]\nhidden: 256\nlearning_rate: [1e-4, 3e-4]\ninit_layers: last\n")
    space = SearchSpace.from_file(path)
    assert space.name == "narrow" and space.hidden == (256,) and space.learning_rate == (1e-4, 3e-4)
    assert space.init_layers == ("last",)
    space.validate(TEACHER)


def test_file_errors(tmp_path):
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps({"layers": [2], "num_experts": [4]}))
    with pytest.raises(SpaceError, match="num_experts") as err:
        SearchSpace.from_file(unknown)
    assert str(unknown) in str(err.value)

    bad = tmp_path / "bad.yaml"
    bad.write_text("layers: [2, 3\nhidden: {")
    with pytest.raises(SpaceError, match="malformed YAML") as err:
        SearchSpace.from_file(bad)
    assert str(bad) in str(err.value)

    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{layers: ")
    with pytest.raises(SpaceError, match="malformed JSON"):
        SearchSpace.from_file(bad_json)

    empty = tmp_path / "empty.yaml"
    empty.write_text("ffn: []\n")
    with pytest.raises(SpaceError) as err:
        SearchSpace.from_file(empty)
    assert str(err.value) == f"{empty}: ffn: empty choice list"

    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n- 2\n")
    with pytest.raises(SpaceError, match="mapping"):
        SearchSpace.from_file(listed)

    missing = tmp_path / "missing.yaml"
    with pytest.raises(SpaceError, match="missing.yaml"):
        get_space(str(missing))


def test_get_space():
    assert get_space("default") is PRESETS["default"]
    with pytest.raises(SpaceError) as err:
        get_space("huge")
    assert "huge" in str(err.value)
    for name in PRESETS:
        assert name in str(err.value)


# ------------------------------------------------------------------ sharing
SHARING = dataclasses.replace(PRESETS["default"], layers=(2, 3, 4), share=(1, 2, 3))


def test_sharing_samples_sizes_per_group():
    seen = set()
    for sample, trial in _run(SHARING, TEACHER, optuna.samplers.RandomSampler(seed=4), 40):
        arch = _check_sample(SHARING, TEACHER, sample)
        n, s = sample["layers"], sample["share"]
        assert s in SHARING.share and arch.layer_groups == share_groups(n, s)
        assert arch.groups == tuple(i // s for i in range(n))
        groups = -(-n // s)
        layer_params = {k.split("@")[0] for k in trial.params if k.startswith(("heads", "ffn"))}
        assert layer_params == {f"heads_{g}" for g in range(groups)} | {f"ffn_{g}" for g in range(groups)}
        assert arch.num_groups == groups
        seen.add(arch.layer_groups is not None)
    assert seen == {True, False}


def test_tpe_sampling_with_sharing():
    for sample, trial in _run(SHARING, TEACHER, optuna.samplers.TPESampler(seed=0, n_startup_trials=5), 25):
        assert trial.state == optuna.trial.TrialState.COMPLETE
        _check_sample(SHARING, TEACHER, sample)


def test_default_search_does_not_share():
    """The default space has one sharing choice (none): it is a constant, so sampling is as before."""
    assert PRESETS["default"].share == (1,) and PRESETS["uniform"].share == (1,)
    for sample, trial in _run(PRESETS["default"], TEACHER, optuna.samplers.RandomSampler(seed=0), 10):
        assert "share" not in trial.params and sample["share"] == 1
        assert PRESETS["default"].arch(sample, TEACHER).layer_groups is None
    old = {k: v for k, v in sample.items() if k != "share"}  # a config from a search before sharing existed
    assert PRESETS["default"].arch(old, TEACHER) == PRESETS["default"].arch(sample, TEACHER)
    shared = PRESETS["shared"]
    shared.validate(TEACHER)
    assert shared.share == (1, 2) and dataclasses.replace(shared, name="default", share=(1,)) == PRESETS["default"]


def test_share_groups():
    assert share_groups(4, 2) == (0, 0, 1, 1) and share_groups(3, 2) == (0, 0, 1) and share_groups(2, 4) == (0, 0)
    assert share_groups(4, 1) is None and share_groups(1, 3) is None  # nothing shared
    with pytest.raises(SpaceError, match="^share: "):
        share_groups(3, 0)


def test_size_counts_distinct_archs_with_sharing():
    space = dataclasses.replace(PRESETS["tiny"], share=(1, 2))
    archs = set()
    for layers, hidden, share in itertools.product(space.layers, space.hidden, space.share):
        fit = [h for h in space.heads if h * TINY.head_size <= hidden]
        groups = -(-layers // share)
        for combo in itertools.product(itertools.product(fit, space.ffn), repeat=groups):
            per_layer = [combo[i // share] for i in range(layers)]
            sample = {"layers": layers, "hidden": hidden, "share": share,
                      "heads": [h for h, _ in per_layer], "ffn": [f for _, f in per_layer]}
            archs.add(space.arch(sample, TINY))
    assert space.size(TINY) == len(archs) > PRESETS["tiny"].size(TINY)
    uniform = dataclasses.replace(space, heterogeneous=False)
    assert uniform.size(TINY) == (2 * 2 + 3 * 2) * 3  # 1 layer; 2 layers unshared; 2 layers shared


@pytest.mark.parametrize(
    "changes, text",
    [
        ({"share": (0,)}, "positive integers"),
        ({"share": (1, 1)}, "duplicate"),
        ({"layers": (2, 3), "share": (1, 4)}, "group size 4 exceeds the largest layer count 3"),
    ],
)
def test_share_validation(changes, text):
    with pytest.raises(SpaceError, match="^share: ") as err:
        SearchSpace(**changes)
    assert text in str(err.value)


def test_architecture_only_fixes_each_knob_at_its_first_choice():
    space = get_space("default")
    fixed = space.architecture_only()
    assert space.temperature == (1.0, 2.0) and len(space.learning_rate) == 3
    assert [getattr(fixed, k) for k in KNOBS] == [getattr(space, k)[:1] for k in KNOBS]
    assert (fixed.layers, fixed.hidden, fixed.heads, fixed.ffn) == (space.layers, space.hidden, space.heads, space.ffn)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    fixed.sample(trial, TEACHER)
    assert not set(trial.params) & set(KNOBS)  # nothing suggested for the knobs
