"""The Tune searcher of both strategies: Optuna's, handing Tune each candidate once.

A converging TPE (or NSGA-II) proposes architectures it has already seen: session 22's cold SST-2 search
ran 240 scoring trials on 161 distinct students. A repeat costs a trial and teaches the search nothing, so
`DistinctOptunaSearch` draws again instead: first from the study's own sampler, then uniformly at random,
and hands Tune a repeat only when no fresh candidate turns up (a small space all seen). Each redrawn Optuna
trial is told FAILED (the samplers skip failed trials) with the trial it repeats as a user attribute.

Imported where a search starts (`nas.tune._run_tune`), since it imports Ray Tune and Optuna.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import optuna
from ray.tune.search.optuna import OptunaSearch

log = logging.getLogger(__name__)

SAMPLER_REDRAWS = 4
"""Draws from the study's sampler after a repeat, before falling back to random draws."""
RANDOM_REDRAWS = 32
"""Random draws after those, before a repeat is handed to Tune."""


def candidate_key(config: dict[str, Any]) -> str:
    """What makes two sampled configs the same candidate: all of their values."""
    return json.dumps(config, sort_keys=True, default=str)


class DistinctOptunaSearch(OptunaSearch):
    """`OptunaSearch` (define-by-run) whose suggestions are distinct configs while fresh ones can be found.

    `seen` maps each handed-out config's key to its Tune trial id; `redrawn` counts the draws discarded as
    repeats. Both are pickled with the searcher, so a restored search keeps them.
    """

    def __init__(self, *args, seed: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen: dict[str, str] = {}
        self.redrawn = 0
        self.repeats = 0
        self._random = optuna.samplers.RandomSampler(seed=seed)

    def suggest(self, trial_id: str) -> dict | None:
        config, draws = super().suggest(trial_id), 0
        while config is not None and (key := candidate_key(config)) in self.seen:
            if draws == SAMPLER_REDRAWS + RANDOM_REDRAWS:
                self.repeats += 1
                log.info("no new candidate in %d draws: trial %s repeats trial %s", draws, trial_id, self.seen[key])
                break
            self._discard(trial_id, self.seen[key])
            config = self._draw(trial_id, randomly=draws >= SAMPLER_REDRAWS)
            draws += 1
        if config is not None:
            self.seen.setdefault(candidate_key(config), trial_id)
        return config

    def _discard(self, trial_id: str, original: str) -> None:
        """Tell Optuna that the trial asked for `trial_id` is dropped as a repeat of Tune trial `original`."""
        ot_trial = self._ot_trials.pop(trial_id)
        ot_trial.set_user_attr("repeats", original)
        self._ot_study.tell(ot_trial, state=optuna.trial.TrialState.FAIL)
        self.redrawn += 1

    def _draw(self, trial_id: str, *, randomly: bool) -> dict | None:
        """A fresh Optuna trial for `trial_id`, sampled by the study's sampler or uniformly at random."""
        if not randomly:
            return super().suggest(trial_id)
        sampler, self._ot_study.sampler = self._ot_study.sampler, self._random
        try:
            return super().suggest(trial_id)
        finally:
            self._ot_study.sampler = sampler
