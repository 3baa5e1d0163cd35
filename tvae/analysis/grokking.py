"""Grokking events: delayed, sudden, sustained generalisation, each candidate with a verdict.

Candidates are the transitions (`tvae.analysis.transitions`) of the generalisation metrics
(accuracy and val_loss; quality, else hierarchy, when a run has neither). Each is judged by
the ordered criteria of `tvae.analysis.criteria`. The same transition seen in several metrics
is one event: it counts once, and the metrics that moved with it raise its confidence.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from tvae.analysis import confidence
from tvae.analysis.collapse import COLLAPSE_CRITERIA, find_collapse
from tvae.analysis.confounds import ControlChange
from tvae.analysis.context import RunContext
from tvae.analysis.criteria import CRITERIA, RUN_LEVEL, Rejection
from tvae.analysis.roles import Roles
from tvae.analysis.thresholds import Thresholds
from tvae.analysis.transitions import Transition, find_transitions

SEVERITIES = ["none", "micro", "standard", "major"]
SOURCES = ("accuracy", "val_loss")
FALLBACK_SOURCES = ("quality", "hierarchy")
CONFIRMING = ("accuracy", "val_loss", "loss", "quality", "hierarchy")


@dataclass
class Candidate:
    """One candidate transition, its verdict and the numbers it was judged on."""

    verdict: str
    reason: str
    severity: str
    plateau_start: float
    plateau_end: float
    breakthrough_epoch: float
    rise_end: float
    size: float
    size_unit: str
    sustained_for: float
    metrics: list[str]
    primary: str
    confidence: float = 0.0
    confound: str | None = None
    criterion: str | None = None
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Judged:
    tr: Transition
    fails: list[Rejection]

    @property
    def ok(self) -> bool:
        return not self.fails

    @property
    def passed(self) -> float:
        return 1.0 - len(self.fails) / len(CRITERIA)

    def span(self, ctx: RunContext) -> tuple[float, float]:
        pad = max(ctx.t.confounds.window_epochs, ctx.t.confounds.window_frac * self.tr.rise_len)
        return self.tr.plateau_end - pad, self.tr.epoch(self.tr.end) + pad


def source_roles(roles: Roles, present: set[str]) -> list[str]:
    """Roles whose transitions are candidates: the generalisation metrics the run has."""
    have = [r for r in SOURCES if getattr(roles, r) in present]
    if have:
        return have
    return [r for r in FALLBACK_SOURCES if getattr(roles, r) in present][:1]


def _severity(tr: Transition, t: Thresholds) -> str:
    s = t.severity
    plateau = tr.plateau_len
    by_plateau = 3 if plateau >= s.major_plateau else 2 if plateau >= s.standard_plateau else 1
    lo, hi = (
        (s.standard_log10, s.major_log10)
        if tr.m.unit == "log10"
        else (s.standard_points, s.major_points)
    )
    by_size = 3 if tr.size > hi else 2 if tr.size > lo else 1
    return SEVERITIES[min(by_plateau, by_size)]


def _median_between(e: np.ndarray, v: np.ndarray, a: float, b: float) -> float:
    sel = (e >= a) & (e <= b)
    return float(np.median(v[sel])) if sel.any() else math.nan


def _moved_with(ctx: RunContext, tr: Transition) -> list[str]:
    """Other metrics whose level moved the right way across the transition."""
    pre = (tr.plateau_start + 0.5 * tr.plateau_len, tr.plateau_end)
    end = tr.epoch(tr.end)
    post = (end, end + max(ctx.t.sustain.epochs, tr.rise_len))
    out = []
    for role in CONFIRMING:
        key = getattr(ctx.roles, role)
        if key == tr.m.key or not ctx.has(role):
            continue
        m = ctx.metric(role)
        if len(m.s) < 3:
            continue
        before, after = _median_between(m.e, m.s, *pre), _median_between(m.e, m.s, *post)
        need = max(3 * m.sigma, 0.1 * m.scale(m.spread, ctx.t), 1e-12)
        if math.isfinite(before) and math.isfinite(after) and after - before > need:
            out.append(key)
    return out


def _epochs(n: float) -> str:
    return f"{n:g} epoch" + ("" if n == 1 else "s")


def _candidate(ctx: RunContext, group: list[_Judged]) -> Candidate:
    """One candidate for a transition seen by one or more metrics."""
    blocked = [f for j in group for f in j.fails if f.criterion in RUN_LEVEL]
    confirmed = [j for j in group if j.ok] if not blocked else []
    confirmed.sort(key=lambda j: SOURCES.index(j.tr.m.role) if j.tr.m.role in SOURCES else 0)
    best = confirmed[0] if confirmed else max(group, key=lambda j: j.passed)
    tr = best.tr
    moved = _moved_with(ctx, tr)
    unit = tr.m.unit
    size = round(tr.size * (100 if unit == "points" else 1), 6)
    cand = Candidate(
        verdict="confirmed" if confirmed else "rejected",
        reason="",
        severity="none",
        plateau_start=tr.plateau_start,
        plateau_end=tr.plateau_end,
        breakthrough_epoch=tr.epoch(tr.onset),
        rise_end=tr.epoch(tr.end),
        size=size,
        size_unit=unit,
        sustained_for=tr.sustained_for,
        metrics=[tr.m.key, *moved],
        primary=tr.m.key,
        confidence=max(
            confidence.of_event(ctx, j.tr, moved)
            if j in confirmed
            else confidence.of_rejection(j.fails or blocked)
            for j in group
        ),
        details={
            "rise_epochs": tr.rise_len,
            "plateau_epochs": tr.plateau_len,
            "level": tr.level,
            "peak": tr.top,
            "noise_sigma": tr.m.sigma,
            "fit_epoch": ctx.fit_epoch(tr.plateau_start, tr.plateau_end),
            "seen_in": [j.tr.m.key for j in group],
            "shape": tr.kind,
        },
    )
    if confirmed:
        cand.severity = _severity(tr, ctx.t)
        together = f"; moved with it: {', '.join(moved)}" if moved else ""
        fit = cand.details["fit_epoch"]
        after = f" (training fitted by epoch {fit:g})" if fit is not None else ""
        if tr.kind == "collapse":
            cand.reason = (
                f"{tr.m.key} near its level at the fit (epoch {fit:g}) until epoch "
                f"{tr.plateau_end:g}, then fell {size:.3g} decades by epoch {cand.rise_end:g} "
                f"(half by {cand.breakthrough_epoch:g}), sustained {_epochs(tr.sustained_for)}"
                f"{together}"
            )
        else:
            cand.reason = (
                f"{tr.plateau_len:g}-epoch plateau{after}, then {size:+.3g} {unit} over "
                f"{_epochs(tr.rise_len)}, sustained {_epochs(tr.sustained_for)}{together}"
            )
        return cand
    first = (blocked or best.fails)[0]
    cand.reason, cand.confound, cand.criterion = first.reason, first.confound, first.criterion
    if first.details:
        cand.details.update(first.details)
    if first.criterion == "plateau":
        cand.severity = _severity(tr, ctx.t)
    return cand


def _groups(ctx: RunContext, judged: list[_Judged]) -> list[list[_Judged]]:
    """Candidates of different metrics whose rises overlap are one transition."""
    groups: list[list[_Judged]] = []
    spans: list[tuple[float, float]] = []
    for j in sorted(judged, key=lambda j: j.tr.plateau_end):
        a, b = j.span(ctx)
        for g, (ga, gb) in zip(groups, spans, strict=True):
            if a <= gb and ga <= b and all(x.tr.m.key != j.tr.m.key for x in g):
                g.append(j)
                break
        else:
            groups.append([j])
            spans.append((a, b))
    return groups


def _finished_by_a_confound(j: _Judged, judged: list[_Judged], t: Thresholds) -> _Judged:
    """A rise that went only part of the way (`confounds.partial_frac`) that a later jump of
    the same metric, rejected as a scheduled change's (a warm restart), then took it, the
    change coming before the rise's new level had held as long as the plateau before it: the
    generalisation is that change's, and the partial rise its unfinished start."""
    if not j.ok:
        return j
    tr = j.tr
    done = tr.epoch(tr.end)
    for later in judged:
        first = later.fails[0] if later.fails else None
        if (
            later.tr.m.key != tr.m.key
            or first is None
            or first.criterion != "control"
            or later.tr.plateau_end < done
            or tr.size >= t.confounds.partial_frac * (later.tr.top - tr.level)
        ):
            continue
        changes = [c["epoch"] for c in (first.details or {}).get("controls", [])]
        change = min((c for c in changes if c >= done), default=None)
        if change is None or change - done >= tr.plateau_len:
            continue
        reason = (
            f"partial: rose {tr.size:.3g} of the {later.tr.top - tr.level:.3g} {tr.m.key} "
            f"went on to gain in the jump at epoch {later.tr.epoch(later.tr.onset):g}, "
            f"{change - done:g} epochs after this rise, rejected as {first.reason}"
        )
        return _Judged(tr, [Rejection("control", reason, first.confound, first.details)])
    return j


def _collapse(ctx: RunContext) -> list[_Judged]:
    """The validation loss's slow collapse after the fit, when it fell far enough to be one."""
    tr = find_collapse(ctx, ctx.metric("val_loss"))
    if tr is None:
        return []
    fails = [r for _, crit in COLLAPSE_CRITERIA if (r := crit(ctx, tr)) is not None]
    return [] if fails and fails[0].criterion == "deep" else [_Judged(tr, fails)]


def detect_grokking(
    history: pd.DataFrame,
    roles: Roles,
    present: set[str],
    controls: list[ControlChange],
    nonfinite: dict[str, list[tuple[float, float]]],
    t: Thresholds,
) -> tuple[list[Candidate], float]:
    """Every grokking candidate in ``history`` with its verdict, in epoch order, and the
    run's confidence score (`tvae.analysis.confidence`)."""
    ctx = RunContext(history, roles, frozenset(present), t, tuple(controls), nonfinite)
    judged, scores = [], [0.0]
    for role in source_roles(roles, present):
        transitions = find_transitions(ctx.metric(role), t)
        for tr in transitions:
            fails = [r for _, crit in CRITERIA if (r := crit(ctx, tr)) is not None]
            judged.append(_Judged(tr, fails))
        if not transitions:
            scores.append(confidence.late_improvement(ctx, ctx.metric(role)))
    judged = [_finished_by_a_confound(j, judged, ctx.t) for j in judged]
    if ctx.has("val_loss") and not any(j.ok for j in judged):
        judged += _collapse(ctx)
    out = sorted(
        (_candidate(ctx, g) for g in _groups(ctx, judged)), key=lambda c: c.breakthrough_epoch
    )
    return out, max(scores + [c.confidence for c in out])
