"""The criteria a candidate transition must pass to be a grokking event, in the order applied.

Each criterion looks at one thing and returns a `Rejection` (its reason, with the numbers it
was judged on) or None. The first rejection is the candidate's verdict; how many it passed
feeds the run's confidence score.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from tvae.analysis.confounds import nonfinite_in, quantised_jump
from tvae.analysis.context import RunContext
from tvae.analysis.transitions import Transition


@dataclass(frozen=True)
class Rejection:
    """Why a candidate is not an event; ``confound`` names what mimicked one, if anything."""

    criterion: str
    reason: str
    confound: str | None = None
    details: dict | None = None


def _window(ctx: RunContext, tr: Transition) -> float:
    """How far before the rise leaves its plateau a scheduled change counts as its cause: a
    few epochs, or a share of the rise or of the plateau (a warm restart acts over part of its
    cycle)."""
    c = ctx.t.confounds
    return max(c.window_epochs, c.window_frac * max(tr.rise_len, tr.plateau_len))


def recovery(ctx: RunContext, tr: Transition) -> Rejection | None:
    """A return to a level already reached (slingshot dips, collapse and recovery)."""
    before = tr.m.s[: tr.ps]
    bar = tr.level + ctx.t.confounds.recovery_frac * tr.m.scale(tr.size, ctx.t)
    if not len(before) or before.max() < bar:
        return None
    k = int(np.argmax(before >= bar))
    return Rejection(
        "recovery",
        f"recovery to a level already reached at epoch {tr.m.e[k]:g} "
        "(a dip and recovery, not a new event)",
        "recovery",
    )


def spike(ctx: RunContext, tr: Transition) -> Rejection | None:
    """Up for one logged epoch only."""
    if tr.raw_above <= 1 and tr.sustained_for == 0:
        at = tr.epoch(tr.end)
        return Rejection(
            "spike", f"single-epoch spike at epoch {at:g}: gone the next epoch", "spike"
        )
    return None


def sustained(ctx: RunContext, tr: Transition) -> Rejection | None:
    """The new level holds (seed: >= 5 epochs; and a tenth of the rise, so a run that ends
    while still rising has no new level yet)."""
    need = max(ctx.t.sustain.epochs, ctx.t.sustain.rise_frac * tr.rise_len)
    if tr.sustained_for < need:
        return Rejection(
            "sustained", f"not sustained: {tr.sustained_for:g} epochs < {need:g}", "not sustained"
        )
    return None


def precision(ctx: RunContext, tr: Transition) -> Rejection | None:
    """A jump of a step or two of a coarsely logged metric."""
    q = tr.m.quantum(ctx.t)
    if quantised_jump(q, tr.size, tr.m.role, ctx.t):
        return Rejection(
            "precision",
            f"apparent plateau from logging precision: {tr.m.key} is quantised in steps of "
            f"{q:.3g} and the jump is {tr.size / q:.1f} steps",
            "precision",
        )
    return None


def nan(ctx: RunContext, tr: Transition) -> Rejection | None:
    """NaN/Inf in the metric or the training loss around the rise."""
    a, b = min(tr.plateau_end, tr.epoch(tr.start)) - _window(ctx, tr), tr.epoch(tr.end)
    for key in (tr.m.key, ctx.roles.loss):
        bad = nonfinite_in(ctx.nonfinite.get(key or "", []), a, b)
        if bad:
            return Rejection(
                "nan", f"NaN/Inf stretch in {key} at epochs {bad[0]:g}-{bad[1]:g}", "nan"
            )
    return None


def _in_cycle(ctx: RunContext, tr: Transition, rise: float) -> list:
    """LR increases after the fit (warm restarts, not warmup) whose cycle, until the LR is
    back where it was, holds the start of the rise: annealing after a restart moves metrics."""
    fit = ctx.fit_epoch(tr.plateau_start, tr.plateau_end)
    return [
        c
        for c in ctx.controls
        if c.until is not None and fit is not None and fit < c.epoch <= rise <= c.until
    ]


def control(ctx: RunContext, tr: Transition) -> Rejection | None:
    """A scheduled control (LR step or restart, freeze, loss switch) changed just before or
    during the rise, or the rise starts inside a warm restart's cycle."""
    rise = min(tr.plateau_end, tr.epoch(tr.start))
    a, b = rise - _window(ctx, tr), tr.epoch(tr.end)
    hits = _in_cycle(ctx, tr, rise) + [c for c in ctx.controls if a <= c.epoch <= b]
    if not hits:
        return None
    c = hits[0]
    where = (
        f"within the window {a:g}-{b:g} of the jump"
        if a <= c.epoch
        else f"and the rise starts at epoch {rise:g}, before it is back at epoch {c.until:g}"
    )
    return Rejection(
        "control",
        f"confound: {c.key} changed at epoch {c.epoch:g} ({c.before:g} -> {c.after:g}), {where}",
        c.key,
        {"controls": [asdict(h) for h in hits]},
    )


def size(ctx: RunContext, tr: Transition) -> Rejection | None:
    """The new level is clear of the plateau by the minimum rise (seed: > 2 points; an
    accuracy rise slower than the seed's few epochs must be `slow_points` large)."""
    need = tr.m.min_size(ctx.t)
    b = ctx.t.breakthrough
    if tr.m.unit == "points" and tr.rise_len > b.epochs:
        need = max(need, b.slow_points)
    if tr.size >= need:
        return None
    scale = 100 if tr.m.unit == "points" else 1
    return Rejection(
        "size", f"rise too small: {tr.size * scale:.3g} {tr.m.unit} < {need * scale:.3g}"
    )


def plateau(ctx: RunContext, tr: Transition) -> Rejection | None:
    """The stagnant stretch is long enough (seed: >= 15 epochs)."""
    need = ctx.t.plateau.min_epochs
    if tr.plateau_len < need:
        return Rejection("plateau", f"plateau too short: {tr.plateau_len:g} epochs < {need:g}")
    return None


def sudden(ctx: RunContext, tr: Transition) -> Rejection | None:
    """The rise is short: within the seed's epochs, or next to the plateau (epochs or log)."""
    b = ctx.t.breakthrough
    rise, flat = tr.rise_len, tr.plateau_len
    if rise <= b.epochs or rise <= b.sudden_ratio * flat:
        return None
    log_rise = math.log((tr.epoch(tr.end) + 1) / (tr.plateau_end + 1))
    log_flat = math.log((tr.plateau_end + 1) / (tr.plateau_start + 1))
    if flat >= 100 * b.epochs / 3 and log_rise <= b.sudden_ratio * log_flat:
        return None
    return Rejection(
        "sudden",
        f"not sudden: rise took {rise:g} epochs after a {flat:g}-epoch plateau "
        f"(log-epoch {log_rise:.2f} vs {log_flat:.2f})",
    )


def fitted(ctx: RunContext, tr: Transition) -> Rejection | None:
    """The training set was fitted by the end of the plateau (see `RunContext.fit_epoch`)."""
    if ctx.train_loss is None:
        return None
    fit = ctx.fit_epoch(tr.plateau_start, tr.plateau_end)
    if fit is not None and fit <= tr.plateau_end:
        return None
    when = f"only at epoch {fit:g}" if fit is not None else "never"
    if fit is None and ctx.has("val_loss"):
        when += f" (never 10x below {ctx.roles.val_loss}, nor settled on the plateau)"
    return Rejection(
        "fitted",
        f"training not yet fitted on the plateau ({tr.plateau_start:g}-{tr.plateau_end:g}): "
        f"{ctx.roles.loss} fitted {when}",
    )


def delayed(ctx: RunContext, tr: Transition) -> Rejection | None:
    """Generalisation comes long after the fit (>= `delay.factor` x the fit's epochs)."""
    fit = ctx.fit_epoch(tr.plateau_start, tr.plateau_end)
    if fit is None:
        return None
    done = tr.epoch(tr.end)
    ratio = ctx.elapsed(done) / ctx.elapsed(fit)
    if ratio >= ctx.t.delay.factor:
        return None
    return Rejection(
        "delayed",
        f"no delay: reached its new level at epoch {done:g}, {ratio:.2f}x the epochs the "
        f"training loss took to fit (epoch {fit:g}); grokking needs {ctx.t.delay.factor:g}x",
        details={"fit_epoch": fit, "delay": ratio},
    )


Criterion = Callable[[RunContext, Transition], Rejection | None]

#: Applied in this order; the first rejection is the verdict's reason.
CRITERIA: tuple[tuple[str, Criterion], ...] = (
    ("recovery", recovery),
    ("spike", spike),
    ("sustained", sustained),
    ("precision", precision),
    ("nan", nan),
    ("control", control),
    ("size", size),
    ("plateau", plateau),
    ("sudden", sudden),
    ("fitted", fitted),
    ("delayed", delayed),
)

#: Criteria about the run around the transition rather than about one metric's curve.
RUN_LEVEL = frozenset({"nan", "control"})
