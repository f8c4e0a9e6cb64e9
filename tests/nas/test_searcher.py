"""The search's Optuna searcher hands Tune each candidate once while fresh ones exist."""

import dataclasses

import optuna

from nas.searcher import REDRAWS, DistinctOptunaSearch
from nas.space import PRESETS
from nas.tune import Sampler
from tests.nas.test_space import TEACHER


def _small(trial):
    return {"layers": trial.suggest_categorical("layers", [1, 2, 3]),
            "hidden": trial.suggest_categorical("hidden", [8, 16])}


def _small_key(config):
    return config["layers"], config["hidden"]


def _searcher(space, sampler, key=_small_key):
    return DistinctOptunaSearch(space=space, metric=["score", "ms"], mode=["max", "min"], sampler=sampler, key=key,
                                fallback_seed=0)


def _run(searcher, n, score, prefix="t"):
    """Suggest and complete `n` trials one after another, as Tune does with one worker."""
    configs = []
    for i in range(n):
        config = searcher.suggest(f"{prefix}{i}")
        configs.append(config)
        searcher.on_trial_complete(f"{prefix}{i}", {"score": score(config), "ms": 1.0})
    return configs


def test_a_converging_tpe_is_redrawn_until_every_candidate_is_new():
    space = Sampler(PRESETS["default"].architecture_only(), TEACHER)
    tpe = optuna.samplers.TPESampler(seed=0, n_startup_trials=4)
    searcher = _searcher(space, tpe, key=space.candidate)
    # One architecture scores far above the rest, so TPE keeps proposing it and its neighbours.
    configs = _run(searcher, 60, lambda c: 1.0 if c["layers"] == 2 and c["hidden"] == 192 else 0.1)
    assert len({space.candidate(c) for c in configs}) == 60 and searcher.repeats == 0
    assert searcher.redrawn > 0  # TPE did repeat itself
    assert searcher._ot_study.sampler is tpe  # the random fallback's sampler swapped back
    study = searcher._ot_study
    failed = study.get_trials(states=[optuna.trial.TrialState.FAIL])
    assert len(failed) == searcher.redrawn
    assert all(t.user_attrs["repeats"] in {f"t{i}" for i in range(60)} for t in failed)
    assert len(study.get_trials(states=[optuna.trial.TrialState.COMPLETE])) == 60


def test_a_space_all_seen_hands_out_repeats_after_bounded_draws():
    searcher = _searcher(_small, optuna.samplers.TPESampler(seed=1, n_startup_trials=2))
    configs = _run(searcher, 8, lambda c: c["layers"] / 3)
    assert len({_small_key(c) for c in configs[:6]}) == 6  # the six points of the space, each once
    assert searcher.repeats == 2
    assert 2 * REDRAWS <= searcher.redrawn <= 8 * REDRAWS  # each repeat only after all its draws


def test_the_searcher_keeps_what_it_has_seen_across_save_and_restore(tmp_path):
    searcher = _searcher(_small, optuna.samplers.RandomSampler(seed=2))
    first = _run(searcher, 5, lambda c: 0.5)
    searcher.save(str(tmp_path / "searcher.pkl"))
    restored = _searcher(_small, optuna.samplers.RandomSampler(seed=2))
    restored.restore(str(tmp_path / "searcher.pkl"))
    assert restored.seen == searcher.seen and len(restored.seen) == 5
    (last,) = _run(restored, 1, lambda c: 0.5, prefix="u")
    assert {_small_key(c) for c in first + [last]} == {(n, h) for n in (1, 2, 3) for h in (8, 16)}
    assert restored.repeats == 0


def test_configs_that_build_the_same_student_are_one_candidate():
    space = Sampler(dataclasses.replace(PRESETS["default"], layers=(1, 2), share=(1, 2)), TEACHER)
    one = {"layers": 1, "hidden": 192, "share": 1, "heads": [4], "ffn": [512], "learning_rate": 1e-4,
           "temperature": 1.0, "hard_weight": 0.5, "hidden_weight": 0.0, "init_layers": "uniform"}
    assert space.candidate(one) == space.candidate({**one, "share": 2})  # one layer: nothing to share
    assert space.candidate(one) != space.candidate({**one, "temperature": 2.0})
