"""SearchConfig checks, the smoke variant, the saved config round trip and the Optuna sampler choice."""

from __future__ import annotations

import json

import optuna
import pytest

from nas.config import Constraints, SearchConfig, smoke
from tasks.errors import UserError


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"algorithm": "grid"}, "algorithm"),
        ({"scheduler": "pbt"}, "scheduler"),
        ({"num_samples": 0}, "num_samples"),
        ({"trial_steps": 0}, "trial_steps"),
        ({"evals_per_trial": 7, "trial_steps": 5}, "evals_per_trial"),
        ({"budget_minutes": 0}, "budget_minutes"),
        ({"validation": 0}, "validation"),
        ({"cpus_per_trial": -1}, "cpus_per_trial"),
        ({"reduction_factor": 1}, "reduction_factor"),
        ({"augment": -1}, "augment"),
        ({"strategy": "evolution"}, "strategy"),
        ({"targets": ()}, "targets"),
        ({"targets": (3.0, float("inf"))}, "targets"),
        ({"targets": (0.0,)}, "targets"),
        ({"supernet_steps": 0}, "supernet_steps"),
        ({"latency_design": 2}, "latency_design"),
        ({"gpus_per_trial": 1.5}, "gpus_per_trial"),  # Ray shares a GPU only as a fraction below 1
        ({"tpus_per_trial": -1}, "tpus_per_trial"),
        ({"gpus_per_trial": 1, "tpus_per_trial": 4}, "tpus_per_trial"),
    ],
)
def test_invalid_settings_name_the_field(changes, field):
    with pytest.raises(UserError, match=field):
        SearchConfig(**changes)


def test_eval_every_splits_the_trial_into_its_evaluations():
    assert SearchConfig(trial_steps=600, evals_per_trial=3).eval_every == 200
    assert SearchConfig(trial_steps=7, evals_per_trial=2).eval_every == 3


def test_smoke_is_small_and_keeps_the_users_task_and_space():
    cfg = smoke(SearchConfig(task="stsb", space="tiny", strategy="trials", budget_minutes=60))
    assert (cfg.task, cfg.space, cfg.num_samples, cfg.teacher_epochs) == ("stsb", "tiny", 4, 1)
    assert cfg.train_limit and cfg.train_limit <= 512 and cfg.budget_minutes <= 10
    assert smoke(SearchConfig()).space == "smoke"
    oneshot = smoke(SearchConfig())  # the default strategy
    assert SearchConfig().num_samples == 240 and SearchConfig(strategy="trials").num_samples == 24
    assert oneshot.num_samples == 16 and oneshot.supernet_steps <= 32 and oneshot.latency_design >= 3


def test_saved_config_round_trips(tmp_path):
    from nas.tune import load_config, save_config

    cfg = SearchConfig(task="stsb", constraints=Constraints(min_speedup=5.0, max_params=10_000_000), seed=3,
                       strategy="supernet", targets=(2, 4.5))
    save_config(tmp_path, cfg)
    assert load_config(tmp_path) == cfg and cfg.targets == (2.0, 4.5)
    with pytest.raises(UserError, match="not a search output"):
        load_config(tmp_path / "elsewhere")


def test_sampler_choice():
    from nas.tune import make_sampler

    assert isinstance(make_sampler(SearchConfig(algorithm="tpe")), optuna.samplers.TPESampler)
    assert isinstance(make_sampler(SearchConfig(algorithm="random")), optuna.samplers.RandomSampler)
    nsga = make_sampler(SearchConfig(algorithm="nsga2", num_samples=24))
    assert isinstance(nsga, optuna.samplers.NSGAIISampler)
    assert nsga._population_size <= 24 // 2  # generations turn over within the search


def test_crf_passes_through_to_every_trial(tmp_path):
    """`--crf/--no-crf` reach the trials' distillation settings and survive --resume; unset, trials follow the teacher."""
    from nas.tune import base_distill_config, load_config, save_config

    for crf in (True, False, None):
        cfg = SearchConfig(task="conll2003", crf=crf)
        assert base_distill_config(cfg, tmp_path).crf is crf
        (tmp_path / str(crf)).mkdir()
        save_config(tmp_path / str(crf), cfg)
        assert load_config(tmp_path / str(crf)).crf is crf
    from nas.cli import parse

    assert parse(["search", "--crf"]).crf is True
    assert parse(["search", "--no-crf"]).crf is False
    assert parse(["search"]).crf is None


def test_a_saved_search_from_before_whole_validation_slices_is_not_resumed(tmp_path):
    """Its candidates were scored on a random slice (`tasks.holdout` now holds out whole examples): one line
    naming its config file, nothing resumed; a config saved now loads back equal."""
    from nas.tune import load_config, save_config

    save_config(tmp_path, SearchConfig(task="sst2", final_lr=1e-4))
    assert load_config(tmp_path) == SearchConfig(task="sst2", final_lr=1e-4)
    saved = json.loads((tmp_path / "search_config.json").read_text())
    del saved["validation_split"]
    (tmp_path / "search_config.json").write_text(json.dumps(saved))
    with pytest.raises(UserError, match="search_config.json: this search was started by an older bertnas"):
        load_config(tmp_path)
    with pytest.raises(UserError, match="validation_split"):
        SearchConfig(validation_split="random")
