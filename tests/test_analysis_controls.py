"""Which LR changes count as scheduled control changes (confounds), and which are a schedule's
smooth course."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from tvae.analysis import Thresholds
from tvae.analysis.confounds import control_changes


def _lr_change_epochs(lr: list[float]) -> list[float]:
    history = pd.DataFrame({"lr": lr}, index=pd.Index(np.arange(1, len(lr) + 1), name="epoch"))
    return [c.epoch for c in control_changes(history, ["lr"], "lr", Thresholds())]


def test_cosine_warm_restarts_mark_only_the_restarts():
    period, base = 10, 1e-3
    lr = [
        1e-4 + 0.5 * (base - 1e-4) * (1 + math.cos(math.pi * (e % period) / (period - 1)))
        for e in range(30)
    ]
    assert _lr_change_epochs(lr) == [11.0, 21.0]


def test_step_drops_are_marked_and_a_linear_decay_only_where_it_starts():
    assert _lr_change_epochs([1e-3] * 5 + [1e-4] * 5 + [1e-5] * 5) == [6.0, 11.0]
    lr = [1e-3] * 5 + list(np.linspace(1e-3, 1e-5, 10)[1:])
    assert _lr_change_epochs(lr) == [6.0]


def test_a_step_inside_a_smooth_decay_is_marked():
    lr = [1e-3 * 0.97**e for e in range(10)]
    lr += [v * 0.2 for v in lr[-1:]] + [lr[-1] * 0.2 * 0.97**e for e in range(1, 6)]
    assert _lr_change_epochs(lr) == [11.0]
