"""The Tune searcher of both strategies: Optuna's, handing Tune each candidate once.

A converging TPE (or NSGA-II) proposes architectures it has already seen: session 22's cold SST-2 search
ran 240 scoring trials on 161 distinct students. A repeat costs a trial and teaches the search nothing, so
`DistinctOptunaSearch` draws again instead: from the study's own sampler, and for TPE then uniformly at
random, and hands Tune a repeat only when no fresh candidate turns up (a small space all seen). Each
redrawn Optuna trial is told FAILED (the samplers learn from completed trials only) with the Tune trial it
repeats as its `repeats` user attribute.

Imported where a search starts (`nas.tune._run_tune`), since it imports Ray Tune and Optuna.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Hashable

import numpy as np
import optuna
from ray.tune.search.optuna import OptunaSearch

log = logging.getLogger(__name__)

SAMPLER_REDRAWS = 4
"""Draws from a TPE study's sampler after a repeat, before falling back to random draws."""
REDRAWS = 36
"""Draws in all after a repeat, before the repeat is handed to Tune."""


class DistinctOptunaSearch(OptunaSearch):
    """`OptunaSearch` (define-by-run) whose suggestions are distinct candidates while fresh ones can be found.

    `key(config)` says which candidate a sampled config is (the search passes the student's name and its
    knobs, so two configs that build the same student are one candidate). `seen` maps each handed-out
    candidate to its Tune trial id, `redrawn` counts the draws discarded as repeats and `repeats` the
    suggestions that were repeats all the same; all are pickled with the searcher (`save`, `Tuner.restore`).
    `fallback_seed` seeds the random draws (apart from the study sampler's own seed, whose first random
    draws the study has already made).
    """

    def __init__(self, *args, key: Callable[[dict], Hashable], fallback_seed: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.key = key
        self.seen: dict[Hashable, str] = {}
        self.redrawn = 0
        self.repeats = 0
        seed = None if fallback_seed is None else int(np.random.SeedSequence([fallback_seed, 1]).generate_state(1)[0])
        self._random = optuna.samplers.RandomSampler(seed=seed)

    def suggest(self, trial_id: str) -> dict[str, Any]:
        """Optuna's suggestion for `trial_id`, drawn again (up to `REDRAWS` times) while it repeats one of
        `seen`."""
        config, draws = super().suggest(trial_id), 0
        while (key := self.key(config)) in self.seen:
            if draws == REDRAWS:
                self.repeats += 1
                log.info("no new candidate in %d draws: trial %s repeats trial %s", draws, trial_id, self.seen[key])
                break
            self._discard(trial_id, self.seen[key])
            config = self._draw(trial_id, randomly=draws >= SAMPLER_REDRAWS and self._falls_back())
            draws += 1
        self.seen.setdefault(key, trial_id)
        return config

    def _falls_back(self) -> bool:
        """Random draws only behind TPE: NSGA-II mutates at random itself, and a trial it did not sample
        belongs to no generation of its populations."""
        return isinstance(self._ot_study.sampler, optuna.samplers.TPESampler)

    def _discard(self, trial_id: str, original: str) -> None:
        """Tell Optuna that the trial asked for `trial_id` is dropped as a repeat of Tune trial `original`."""
        ot_trial = self._ot_trials.pop(trial_id)
        ot_trial.set_user_attr("repeats", original)
        self._ot_study.tell(ot_trial, state=optuna.trial.TrialState.FAIL)
        self.redrawn += 1

    def _draw(self, trial_id: str, *, randomly: bool) -> dict[str, Any]:
        """A fresh Optuna trial for `trial_id`, sampled by the study's sampler or uniformly at random."""
        if not randomly:
            return super().suggest(trial_id)
        sampler, self._ot_study.sampler = self._ot_study.sampler, self._random
        try:
            return super().suggest(trial_id)
        finally:
            self._ot_study.sampler = sampler
