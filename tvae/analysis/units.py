"""Accuracy logged in percent (many training scripts log 97.3, not 0.973).

The `accuracy` role is a fraction (DESIGN.md) and the detector's sizes are written in its
points; a percent accuracy read as logged makes every wobble of a point a rise of 100. One whose
finite values lie in [0, 100] with some above 1 is read as that fraction instead.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tvae.analysis.roles import Roles

#: Above this an accuracy is not a fraction (float noise on 1.0 aside) ...
FRACTION_MAX = 1.0 + 1e-9
#: ... and up to this it is a percent.
PERCENT_MAX = 100.0 + 1e-9


def percent_scale(history: pd.DataFrame, key: str | None) -> float:
    """0.01 when ``key`` holds a percent accuracy, else 1."""
    if not key or key not in history.columns:
        return 1.0
    v = history[key].to_numpy(dtype=float)
    v = v[np.isfinite(v)]
    if len(v) and v.min() >= 0.0 and FRACTION_MAX < v.max() <= PERCENT_MAX:
        return 0.01
    return 1.0


def as_fraction(history: pd.DataFrame, roles: Roles) -> tuple[pd.DataFrame, str | None]:
    """``history`` with a percent accuracy as a fraction, and a note saying so."""
    key = roles.accuracy
    if percent_scale(history, key) == 1.0:
        return history, None
    out = history.copy()
    out[key] = out[key] / 100.0
    top = float(np.nanmax(history[key].to_numpy(dtype=float)))
    return out, f"{key} read as a percent (largest value {top:g}): divided by 100"
