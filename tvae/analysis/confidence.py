"""The run-level grokking score in [0, 1] (tag `grokking.confidence`, `confidence` in report.json).

Above 0.5 only with a confirmed event: more with a longer delay after the fit, a larger rise
(for an accuracy, a larger share of the way from its plateau to 1: a rise that stops well short
of it is weaker evidence) and more metrics moving with it. Below 0.5 it ranks the
evidence short of an event: a transition after the fit that missed only on its shape (too
small, too short a plateau, not sudden, not held) is weak evidence for grokking; one explained
by a schedule, NaNs, a spike, a recovery, or one without a delay after the fit, is evidence
against; a generalisation metric with no transition at all scores by how much it improved long
after the fit.
"""

from __future__ import annotations

import math

import numpy as np

from tvae.analysis.context import RunContext
from tvae.analysis.criteria import CRITERIA, Rejection
from tvae.analysis.transitions import Metric, Transition

#: Failures that explain a rise as something other than delayed generalisation.
AGAINST = frozenset({"recovery", "spike", "precision", "nan", "control", "fitted", "delayed"})


def of_event(ctx: RunContext, tr: Transition, moved: list[str]) -> float:
    """A confirmed event's score, in (0.5, 1]."""
    t = ctx.t
    fit = ctx.fit_epoch(tr.plateau_start, tr.plateau_end)
    if fit is None:
        delay = 0.5
    else:
        ratio = ctx.elapsed(tr.epoch(tr.end)) / ctx.elapsed(fit)
        delay = min(1.0, max(0.0, math.log(ratio / t.delay.factor) / math.log(10)))
    size = min(1.0, tr.size / (4 * tr.m.min_size(t)))
    if tr.m.unit == "points" and tr.m.raw.max() <= 1.0 and tr.level < 1:  # share of the room
        size = min(size, tr.size / (1 - tr.level))
    metrics = 1.0 - 0.5 ** len(moved)  # each other metric that moved with it halves the doubt
    return round(0.5 + 0.5 * (delay + size + metrics) / 3, 4)


def of_rejection(fails: list[Rejection]) -> float:
    """A rejected candidate's score, below 0.45."""
    passed = 1.0 - len(fails) / len(CRITERIA)
    against = any(f.criterion in AGAINST for f in fails)
    return round(0.45 * passed * (0.3 if against else 1.0), 4)


def late_improvement(ctx: RunContext, m: Metric) -> float:
    """Evidence from a metric with no candidate transition: how far it improved between
    `delay.factor` x the fit and the end of the run, in units of the smallest rise (at most
    0.4: improvement without a transition is never an event)."""
    e = ctx.history.index.to_numpy(dtype=float)
    fit = ctx.fit_epoch(float(e[0]), float(e[-1]))
    if fit is None or len(m.s) < 6:
        return 0.0
    late = ctx.elapsed(m.e) >= ctx.t.delay.factor * ctx.elapsed(fit)
    if late.sum() < 6:
        return 0.0
    tail = max(3, int(late.sum()) // 20)
    final = float(np.median(m.s[late][-tail:]))
    gain = final - float(m.wide_med[late].min())
    return round(0.4 * min(1.0, max(0.0, gain / (4 * m.min_size(ctx.t)))), 4)
