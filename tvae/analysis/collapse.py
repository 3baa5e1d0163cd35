"""A slow collapse of the validation loss long after the fit: grokking without a plateau.

With a large initialisation ("Omnigrok"), weight decay shrinks the weights at a steady rate and
the validation loss falls log-linearly for tens of thousands of epochs after the training set
was fitted: no plateau and no sudden jump, yet accuracy generalises long after the fit. In the
losses alone the signature is: the training loss fitted (`RunContext.gap_fit`); the validation
loss still near its level at the fit for `delay.factor` x the fit; then a fall of
`collapse.min_log10` decades that holds. The onset is where half of that fall is done.
"""

from __future__ import annotations

import numpy as np

from tvae.analysis.context import RunContext
from tvae.analysis.criteria import Criterion, Rejection, control, nan, sustained
from tvae.analysis.transitions import Metric, Transition


def find_collapse(ctx: RunContext, m: Metric) -> Transition | None:
    """The validation loss's fall from its level at the fit to its final level, or None
    without a fit or a fall."""
    fit = ctx.gap_fit
    if fit is None or m.unit != "log10" or len(m.s) < 20:
        return None
    med, wide = m.med, m.wide_med
    i = int(np.searchsorted(m.e, fit))
    if i >= len(m.s) - 10:
        return None
    level = float(wide[i])
    final = float(np.median(m.s[-max(3, len(m.s) // 20) :]))
    drop = final - level
    if drop <= 0:
        return None
    onset = i + int(np.argmax(wide[i:] >= level + 0.5 * drop))
    end = onset + int(np.argmax(wide[onset:] >= level + 0.9 * drop))
    near = np.nonzero(wide[i : onset + 1] <= level + 0.1 * drop)[0]
    start = i + int(near[-1]) if len(near) else i
    mid = level + 0.5 * drop
    fell = np.nonzero(med[end:] < mid)[0]
    held = end + int(fell[0]) - 1 if len(fell) else len(med) - 1
    below = np.nonzero(m.s[end:] < mid)[0]
    raw_above = int(below[0]) if len(below) else len(m.s) - end
    return Transition(m, i, start, start, onset, end, level, final, held, raw_above, "collapse")


def deep(ctx: RunContext, tr: Transition) -> Rejection | None:
    """The fall is large: `collapse.min_log10` decades from the level at the fit."""
    need = ctx.t.collapse.min_log10
    if tr.size >= need:
        return None
    return Rejection("deep", f"slow fall too small: {tr.size:.3g} log10 < {need:g}")


def quiet(ctx: RunContext, tr: Transition) -> Rejection | None:
    """The validation loss stayed near its level at the fit (within a tenth of the fall)
    for `delay.factor` x the epochs the fit took: generalisation came late, not with the fit."""
    fit = tr.plateau_start
    ratio = ctx.elapsed(tr.plateau_end) / ctx.elapsed(fit)
    if ratio >= ctx.t.delay.factor:
        return None
    return Rejection(
        "quiet",
        f"no delay: {tr.m.key} left its level at the fit (epoch {fit:g}) by epoch "
        f"{tr.plateau_end:g}, {ratio:.2f}x the fit; grokking needs {ctx.t.delay.factor:g}x",
        details={"fit_epoch": fit, "delay": ratio},
    )


#: Applied in this order to a slow collapse; `deep` first, so a small fall is no candidate.
COLLAPSE_CRITERIA: tuple[tuple[str, Criterion], ...] = (
    ("deep", deep),
    ("nan", nan),
    ("control", control),
    ("sustained", sustained),
    ("quiet", quiet),
)
