"""Runs logged against optimizer steps (HF Trainer, Lightning): how many steps an epoch is.

Both log an ``epoch`` metric beside each step's metrics. The detector's lengths are counted in
epochs (DESIGN.md's seed), so on such a run they count that many epochs' worth of steps.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import numpy as np
import pandas as pd

from tvae.analysis.roles import Roles
from tvae.analysis.thresholds import Thresholds

#: Below this departure from one step per epoch the x-axis is read as epochs.
SAME_AXIS = 0.05


def steps_per_epoch(history: pd.DataFrame, key: str | None) -> float | None:
    """Steps per epoch from the ``key`` metric (the epoch at each step), or None when the run
    does not log it, it never advances, it goes backwards, or the x-axis already is epochs."""
    if not key or key not in history.columns:
        return None
    s = history[key].replace([np.inf, -np.inf], np.nan).dropna()
    e = s.to_numpy(dtype=float)
    d = np.diff(e)
    if len(e) < 2 or e[-1] <= e[0] or (d < 0).any():
        return None
    first = np.r_[True, d > 0]  # where each epoch value is first logged
    k = float(np.polyfit(e[first], s.index.to_numpy(dtype=float)[first], 1)[0])
    return k if abs(k - 1) > SAME_AXIS else None


def on_axis(history: pd.DataFrame, roles: Roles, t: Thresholds) -> tuple[Thresholds, str | None]:
    """``t`` on the run's x-axis, and a note saying so when that is not epochs."""
    k = steps_per_epoch(history, roles.epoch)
    if k is None:
        return t, None
    note = (
        f"x-axis is steps: {k:.4g} steps per epoch by {roles.epoch}; lengths counted in epochs "
        "are counted in that many steps"
    )
    return t.per_step(k), note


def run_epochs(history: pd.DataFrame, key: str, steps: Iterable[float]) -> list[float]:
    """The run's own epoch at each of ``steps``: ``key``'s value at its last row at or before
    the step (its first row for a step before it), as the run logged it (HF's fractions,
    Lightning's whole epochs counted from 0)."""
    s = history[key].replace([np.inf, -np.inf], np.nan).dropna()
    x, v = s.index.to_numpy(dtype=float), s.to_numpy(dtype=float)
    at = np.searchsorted(x, np.asarray(list(steps), dtype=float), side="right") - 1
    return [float(e) for e in v[np.clip(at, 0, len(x) - 1)]]


def in_steps(text: str) -> str:
    """``text`` (a detector's reason, written in epochs) with its lengths and positions said
    in steps, for a run on a step axis; key names such as ``train_loss_epoch`` are kept."""
    return re.sub(r"\bepoch(s?)\b", r"step\1", text)
