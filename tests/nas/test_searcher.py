"""The search's Optuna searcher hands Tune each candidate once while fresh ones exist."""

import optuna

from nas.searcher import RANDOM_REDRAWS, SAMPLER_REDRAWS, DistinctOptunaSearch, candidate_key
from nas.space import PRESETS
from nas.tune import Sampler
from tests.nas.test_space import TEACHER


def _small(trial):
    return {"layers": trial.suggest_categorical("layers", [1, 2, 3]),
            "hidden": trial.suggest_categorical("hidden", [8, 16])}


def _searcher(space, sampler, seed=0):
    return DistinctOptunaSearch(space=space, metric=["score", "ms"], mode=["max", "min"], sampler=sampler, seed=seed)


def _run(searcher, n, score):
    """Suggest and complete `n` trials one after another, as Tune does with one worker."""
    configs = []
    for i in range(n):
        config = searcher.suggest(f"t{i}")
        configs.append(config)
        searcher.on_trial_complete(f"t{i}", {"score": score(config), "ms": 1.0})
    return configs


def test_a_converging_tpe_is_redrawn_until_every_candidate_is_new():
    space = PRESETS["default"].architecture_only()
    searcher = _searcher(Sampler(space, TEACHER), optuna.samplers.TPESampler(seed=0, n_startup_trials=4))
    # One architecture scores far above the rest, so TPE keeps proposing it and its neighbours.
    configs = _run(searcher, 60, lambda c: 1.0 if c["layers"] == 2 and c["hidden"] == 192 else 0.1)
    keys = [candidate_key(c) for c in configs]
    assert len(set(keys)) == 60 and searcher.repeats == 0
    assert searcher.redrawn > 0  # TPE did repeat itself
    study = searcher._ot_study
    failed = study.get_trials(states=[optuna.trial.TrialState.FAIL])
    assert len(failed) == searcher.redrawn
    assert all(t.user_attrs["repeats"] in {f"t{i}" for i in range(60)} for t in failed)
    assert len(study.get_trials(states=[optuna.trial.TrialState.COMPLETE])) == 60


def test_a_space_all_seen_hands_out_repeats_after_bounded_draws():
    searcher = _searcher(_small, optuna.samplers.TPESampler(seed=1, n_startup_trials=2))
    configs = _run(searcher, 8, lambda c: c["layers"] / 3)
    assert len({candidate_key(c) for c in configs[:6]}) == 6  # the six points of the space, each once
    assert searcher.repeats == 2
    assert searcher.redrawn <= 8 * (SAMPLER_REDRAWS + RANDOM_REDRAWS)  # bounded per suggestion


def test_the_searcher_keeps_what_it_has_seen_across_save_and_restore(tmp_path):
    searcher = _searcher(_small, optuna.samplers.RandomSampler(seed=2))
    first = _run(searcher, 3, lambda c: 0.5)
    searcher.save(str(tmp_path / "searcher.pkl"))
    restored = _searcher(_small, optuna.samplers.RandomSampler(seed=2))
    restored.restore(str(tmp_path / "searcher.pkl"))
    later = [restored.suggest(f"u{i}") for i in range(3)]
    assert {candidate_key(c) for c in first}.isdisjoint(candidate_key(c) for c in later)
    assert len({candidate_key(c) for c in later}) == 3
