"""Pruning that spares late grokkers: Optuna's median rule, except while the trial's first seed
sits in a plateau the live detector (`tvae.analysis.live`) has found, or in a breakthrough.

A classic pruner compares a trial's metric with other trials' at the same epoch, so it stops
exactly the runs whose validation metric is flat after the fit: the runs that grok late. Here
the trial's first training run reports its metric every epoch (`TrialReporter`), together with
its live grokking state as the trial's user attribute `live_state`; `GrokkingAwarePruner` asks
the median rule only when that state is neither `plateau` nor `breakthrough`.
"""

from __future__ import annotations

import math
from typing import Any

import optuna

from tvae.analysis.live_state import LiveState

LIVE_STATE_ATTR = "live_state"
#: The median rule waits for this many finished trials and this many epochs of a trial.
STARTUP_TRIALS = 4
WARMUP_EPOCHS = 5
PROTECTED_STATES = ("plateau", "breakthrough")


class GrokkingAwarePruner(optuna.pruners.BasePruner):
    """`base`'s verdict, except never while the trial's live state is in `PROTECTED_STATES`."""

    def __init__(self, base: optuna.pruners.BasePruner) -> None:
        self.base = base

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        if trial.user_attrs.get(LIVE_STATE_ATTR) in PROTECTED_STATES:
            return False
        return self.base.prune(study, trial)


def make_pruner(name: str) -> optuna.pruners.BasePruner:
    """The pruner named `name` (one of `sweep_space.PRUNERS`)."""
    if name == "none":
        return optuna.pruners.NopPruner()
    median = optuna.pruners.MedianPruner(
        n_startup_trials=STARTUP_TRIALS, n_warmup_steps=WARMUP_EPOCHS
    )
    return median if name == "median" else GrokkingAwarePruner(median)


class TrialReporter:
    """A live follower's listener: reports `metric` each epoch to the trial, keeps the trial's
    `live_state` attribute current, and asks the trainer to stop when the study prunes it
    (never at the last epoch: a finished run is a result)."""

    def __init__(self, trial: Any, metric: str, trainer: Any) -> None:
        self.trial, self.metric, self.trainer = trial, metric, trainer
        self.state: str | None = None
        self.pruned_at: int | None = None

    def __call__(self, epoch: int, metrics: dict[str, float], state: LiveState) -> None:
        if state.seen_at_step is not None and state.state != self.state:
            self.state = state.state
            self.trial.set_user_attr(LIVE_STATE_ATTR, state.state)
        value = metrics.get(self.metric)
        if value is None or not math.isfinite(value) or self.pruned_at is not None:
            return
        self.trial.report(float(value), epoch)
        if epoch < self.trainer.config.train.epochs and self.trial.should_prune():
            self.pruned_at = epoch
            self.trainer.request_stop()
