"""The live grokking state of a run, decided by `analyze`'s own detector.

One source of truth: a live `confirmed` is `tvae.analysis.analyze` confirming an event on the
history so far, so an analysis of the same prefix says the same. The other states read the same
detector, with no criteria of their own:

- ``plateau``: the training set is fitted (`RunContext.fit_epoch`, what the `fitted` criterion
  asks) and the generalisation metric has stayed within the detector's flat tolerance
  (``max(3 sigma, half the smallest rise that counts)``, the tolerance `find_transitions` splits
  rises at) for at least ``plateau.min_epochs``, with room left above it for a rise that counts
  (an accuracy at its ceiling has none; a validation loss needs the fit's gap still open);
- ``breakthrough``: a candidate that the detector rejects only because its new level has not
  held for the sustain period yet: with the sustain criterion waived it passes every other
  criterion, and it still holds at the last row. It may be withdrawn later (the level falls
  back, or the full detector rejects it for another reason); the state says so. An event
  `analyze` confirms stays one too while a scheduled change still to come could make analyze
  reject it as a partial rise (`_schedule_hold`);
- ``confirmed``: `analyze` confirms an event; it can only be raised after its sustain period.

`assess` is that judgement for one history (the state itself: `tvae.analysis.live_state`);
`tvae.analysis.live.LiveDetector` follows a growing one. No MLflow here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from tvae.analysis.confounds import LOGGED_NAN, control_changes, nonfinite_stretches
from tvae.analysis.context import RunContext
from tvae.analysis.engine import _clean
from tvae.analysis.grokking import SEVERITIES, Candidate, detect_grokking, source_roles
from tvae.analysis.live_state import LiveState, fmt_epoch
from tvae.analysis.report import AnalysisReport
from tvae.analysis.roles import GENERALISATION_ROLES, Roles
from tvae.analysis.steps import in_steps, on_axis, run_epochs
from tvae.analysis.thresholds import Thresholds
from tvae.analysis.units import as_fraction, perplexity_as_loss, read_as

#: Points of a generalisation metric whose median is compared with its level at the last run
#: (the width of the detector's wide rolling median, so a dip of 3 rows is no movement).
TAIL_ROWS = 7


@dataclass
class Assessment:
    """One run of the detector over a history: the live state and what the follower needs."""

    state: LiveState
    report: AnalysisReport
    bands: dict[str, float] = field(default_factory=dict)  # key -> flat tolerance, as watched


def _detect(hist: pd.DataFrame, roles: Roles, t: Thresholds) -> AnalysisReport:
    """The grokking part of `analyze` on a history `_clean` has cleaned: the same calls in the
    same order (`detect_grokking` on the same controls and NaN stretches), without the
    phases, tier, checks and answers, which cost more than the events on long or scheduled runs
    and say nothing about them. `tests/test_live.py` holds it equal to `analyze` on the corpus."""
    present = {c for c in hist.columns if np.isfinite(hist[c].to_numpy(dtype=float)).any()}
    report = AnalysisReport(n_epochs=int(len(hist)))
    if len(hist):
        nonfinite = nonfinite_stretches(hist, hist.attrs.get(LOGGED_NAN))
        controls = control_changes(hist, roles.control_columns(present), roles.lr, t)
        report.candidates, report.confidence = detect_grokking(
            hist, roles, present, controls, nonfinite, t
        )
    return report


def _role_of(roles: Roles, key: str) -> str | None:
    return next((r for r in GENERALISATION_ROLES if getattr(roles, r) == key), None)


def _covers(c: Candidate, epoch: float, pad: float) -> bool:
    """Whether ``epoch`` lies in candidate ``c``'s transition, from the start of its plateau to
    the end of its rise (a prefix places the onset of a slow rise earlier than the whole run
    does; different transitions of one metric do not overlap so)."""
    return c.plateau_start <= epoch <= c.rise_end + pad


def same_transition(
    c: Candidate, epoch: float, rise: tuple[float, float] | None, pad: float
) -> bool:
    """Whether an event seen before (its breakthrough ``epoch`` and ``rise``) is candidate
    ``c``'s transition: the epoch lies in it, or the two rises overlap. A slow rise judged on a
    longer history moves its onset and end, often past each other's windows; two transitions
    of one metric never share rise epochs."""
    if _covers(c, epoch, pad):
        return True
    return rise is not None and rise[0] < c.rise_end and c.plateau_end < rise[1]


def _seen(state: LiveState) -> list[tuple[float, tuple[float, float]]]:
    """The events of ``state``: (breakthrough epoch, rise)."""
    return list(zip(state.event_epochs, state.event_rises, strict=True))


def _holding(
    hist: pd.DataFrame, roles: Roles, t: Thresholds, report: AnalysisReport, ctx: RunContext
) -> list[tuple[Candidate, float]]:
    """Candidates held back only by the sustain criterion that still hold at the last row, each
    with the step its sustain period ends.

    The detector names only a candidate's first failed criterion, and `sustained` comes before
    most; so the history is judged again with the sustain criterion waived (the user's
    thresholds otherwise): a candidate confirmed then passes every other criterion.
    """
    waived = t.sustain.model_copy(update={"epochs": 0.0, "rise_frac": 0.0})
    relaxed = _detect(hist, roles, t.model_copy(update={"sustain": waived}))
    out = []
    for c in relaxed.confirmed:
        role = _role_of(roles, c.primary)
        if role is None or not ctx.has(role):
            continue
        if c.rise_end + c.sustained_for < float(ctx.metric(role).e[-1]):
            continue  # fell back below mid-rise: not holding
        need = max(t.sustain.epochs, t.sustain.rise_frac * float(c.details["rise_epochs"]))
        out.append((c, c.rise_end + need))
    return out


def _schedule_hold(c: Candidate, ctx: RunContext, t: Thresholds) -> tuple[float, str] | None:
    """(the step until which confirmed event ``c`` stays a breakthrough, why) while a scheduled
    change still to come could make it a partial rise that analyze rejects as that change's
    (`grokking._finished_by_a_confound`): the run is on a schedule (a control signal such as the
    LR has moved), ``c`` is an accuracy's rise that went less than `confounds.partial_frac` of
    its way to 1, and its new level has held for less than its plateau's length. A loss has no
    such bound, so its events are not held."""
    if c.primary != ctx.roles.accuracy or not ctx.has("accuracy"):
        return None
    due = c.rise_end + (c.plateau_end - c.plateau_start)
    m = ctx.metric("accuracy")
    if m.raw.max() > 1.0 or float(m.e[-1]) >= due:
        return None
    size, level = c.details["peak"] - c.details["level"], c.details["level"]
    if size >= t.confounds.partial_frac * (1.0 - level) or not _scheduled(ctx):
        return None
    why = (
        f"it went {size / (1.0 - level):.0%} of the way to 1 on a schedule: a scheduled change "
        f"before step {fmt_epoch(due)} could still make it the start of that change's jump; "
    )
    return due, why


def _scheduled(ctx: RunContext) -> bool:
    """Whether a control signal has changed value (an LR by more than
    `confounds.lr_change_rel` of its smallest value: a schedule, not float noise)."""
    hist = ctx.history
    for key in ctx.roles.control_columns(set(ctx.present)):
        v = hist[key].to_numpy(dtype=float)
        v = v[np.isfinite(v)]
        if not len(v):
            continue
        lo, hi = float(v.min()), float(v.max())
        rel = ctx.t.confounds.lr_change_rel if key == ctx.roles.lr else 0.0
        if hi - lo > rel * abs(lo):
            return True
    return False


@dataclass(frozen=True)
class _Plateau:
    key: str
    shown: str  # the key as read (`log(val_ppl)`), to name its level
    start: float
    end: float
    level: float  # as read: a percent as its fraction, a perplexity as its log
    fit: float


def _plateau(ctx: RunContext, roles: Roles, t: Thresholds) -> tuple[_Plateau | None, str]:
    """The generalisation metric's trailing flat stretch after the fit, or why there is none."""
    sources = source_roles(roles, set(ctx.present))
    if not sources:
        return None, "waiting for a generalisation metric (accuracy, val_loss, quality)"
    why = ""
    for role in sources:
        m = ctx.metric(role)
        if len(m.s) < 4:
            why = f"{m.key}: too few rows yet"
            continue
        tol = max(3 * m.sigma, 0.5 * m.min_size(t))
        level = float(m.wide_med[-1])
        for _ in range(2):  # placed on the last level, then re-centred on the stretch's median
            out = np.nonzero(np.abs(m.wide_med - level) > tol)[0]
            ps = min(int(out[-1]) + 1 if len(out) else 0, len(m.s) - 1)
            level = m.level(ps, len(m.s) - 1)
        start, end = float(m.e[ps]), float(m.e[-1])
        if end - start < t.plateau.min_epochs:
            why = f"{m.key} still moving (flat {end - start:g} epochs < {t.plateau.min_epochs:g})"
            continue
        fit = ctx.fit_epoch(start, end)
        if fit is None or fit > end:
            why = f"training not fitted yet ({ctx.roles.loss or 'no training loss'})"
            continue
        raw = float(np.median(m.raw[ps:]))
        if m.unit == "points" and m.raw.max() <= 1.0 and 1.0 - level < m.min_size(t):
            why = f"{m.key} at its ceiling ({raw:.4g})"
            continue
        if m.unit == "log10" and not _gap_open(ctx, t):
            why = f"{m.key} within {t.delay.fit_gap:g}x of the training loss: no gap left"
            continue
        return _Plateau(m.key, read_as(m.role, m.key), start, end, raw, fit), ""
    return None, why


def _gap_open(ctx: RunContext, t: Thresholds) -> bool:
    """The validation loss still `delay.fit_gap`-fold above the training loss at the end."""
    if ctx.train_loss is None or not ctx.has("val_loss"):
        return False
    val = ctx.metric("val_loss").raw[-TAIL_ROWS:]
    train = ctx.train_loss[1][-TAIL_ROWS:]
    return float(np.median(val)) >= t.delay.fit_gap * float(np.median(train))


def assess(
    history: pd.DataFrame,
    roles: Roles | None = None,
    thresholds: Thresholds | None = None,
    *,
    ended: bool = False,
    previous: LiveState | None = None,
) -> Assessment:
    """The live state of ``history`` (index = step, one column per metric key, as `analyze`
    takes it).

    ``previous``: the state before. An event it confirmed stays confirmed while the detector
    holds it back only for its sustain period (a slow rise that keeps rising moves its end,
    and with it the hold it needs); any other rejection withdraws it, and so does one of a
    breakthrough. ``ended``: the run is over, so the state is ``confirmed`` exactly when
    `analyze` confirms an event on this history, else ``none``.
    """
    roles = roles or Roles()
    t = thresholds or Thresholds()
    prev = previous or LiveState()
    hist, _ = _clean(history)
    hist, percent = as_fraction(hist, roles)
    hist, _ = perplexity_as_loss(hist, roles)
    scale = 0.01 if percent else 1.0
    t, by_step = on_axis(hist, roles, t)
    report = _detect(hist, roles, t)
    present = frozenset(c for c in hist.columns if np.isfinite(hist[c].to_numpy(float)).any())
    ctx = RunContext(hist, roles, present, t, (), {})
    bands = {}
    for role in source_roles(roles, set(present)):
        m = ctx.metric(role)
        if len(m.s):  # as the follower watches: a percent as logged, a loss in -log10
            band = max(3 * m.sigma, 0.5 * m.min_size(t))
            bands[m.key] = band / scale if role == "accuracy" else band
    last = int(hist.index[-1]) if len(hist) else None
    pad = t.sustain.epochs
    events = list(report.confirmed)
    pending: list[tuple[Candidate, float, str]] = []  # (candidate, due step, why it waits)
    if not ended:
        for c in events:
            hold = _schedule_hold(c, ctx, t)
            if hold and not any(same_transition(c, e, r, pad) for e, r in _seen(prev)):
                pending.append((c, *hold))
        events = [c for c in events if all(c is not h for h, *_ in pending)]
    unsure = [
        (e, r) for e, r in _seen(prev) if not any(same_transition(c, e, r, pad) for c in events)
    ]
    held_back = any(c.criterion == "sustained" for c in report.rejected)
    if len(hist) and not ended and (unsure or held_back):
        waiting = [c for c, *_ in pending]
        for c, due in _holding(hist, roles, t, report, ctx):
            if any(_covers(f, c.breakthrough_epoch, 0.0) for f in events + waiting):
                continue
            if any(same_transition(c, e, r, pad) for e, r in unsure):
                events.append(c)  # confirmed before, still rising or holding: stays confirmed
            else:
                pending.append((c, due, ""))
        events.sort(key=lambda c: c.breakthrough_epoch)
    after = max((c.rise_end for c in events), default=-math.inf)
    pending = [p for p in pending if p[0].breakthrough_epoch > after]
    pending.sort(key=lambda p: p[0].breakthrough_epoch)
    severities = [SEVERITIES.index(c.severity) for c in events]
    common = {
        "seen_at_step": last,
        "confidence": report.confidence,
        "events": len(events),
        "severity": SEVERITIES[max(severities)] if severities else "none",
        "first_epoch": events[0].breakthrough_epoch if events else None,
        "event_epochs": tuple(c.breakthrough_epoch for c in events),
        "event_rises": tuple((c.plateau_end, c.rise_end) for c in events),
    }
    if pending:
        c, due, why = pending[-1]
        state = LiveState(
            "breakthrough",
            since=c.breakthrough_epoch,
            metric=c.primary,
            due=due,
            waits_for="schedule" if why else "sustain",
            detail=(
                f"{c.primary} rose {c.size:+.3g} {c.size_unit} after a "
                f"{c.plateau_end - c.plateau_start:g}-epoch plateau (onset epoch "
                f"{fmt_epoch(c.breakthrough_epoch)}), held {c.sustained_for:g} epochs so far: "
                f"{why}confirmed at step {fmt_epoch(due)} if it holds, withdrawn if not"
            ),
            **common,
        )
    elif events:
        c = events[-1]
        state = LiveState(
            "confirmed",
            since=c.breakthrough_epoch,
            metric=c.primary,
            detail=(
                f"grokking at epoch {fmt_epoch(c.breakthrough_epoch)} ({c.severity}): {c.reason}"
            ),
            **common,
        )
    else:
        plateau, why = (None, "") if ended or not len(hist) else _plateau(ctx, roles, t)
        if plateau is not None:
            state = LiveState(
                "plateau",
                since=plateau.start,
                metric=plateau.key,
                detail=(
                    f"in a plateau since epoch {fmt_epoch(plateau.start)}: {plateau.shown} flat at "
                    f"{plateau.level:.3g}, training fitted by epoch {fmt_epoch(plateau.fit)}"
                ),
                **common,
            )
        else:
            detail = "run ended with no confirmed event" if ended else f"no plateau: {why}"
            state = LiveState("none", detail=detail, **common)
    live = events + [c for c, *_ in pending]
    if by_step:  # as analyze says it: in steps, the first event at the run's own epoch
        first = run_epochs(hist, roles.epoch, [c.breakthrough_epoch for c in events[:1]])
        state = replace(state, first_epoch=(first or [None])[0], detail=in_steps(state.detail))
    return Assessment(_withdrawals(prev, state, live, report, t), report, bands)


def _withdrawals(
    prev: LiveState, state: LiveState, live: list[Candidate], report: AnalysisReport, t: Thresholds
) -> LiveState:
    """Mark ``state`` withdrawn when a breakthrough or event of ``prev`` is in none of the
    candidates it rests on now (``live``: its events and breakthroughs)."""
    pad = t.sustain.epochs

    def kept(epoch: float, rise: tuple[float, float] | None = None) -> bool:
        return any(same_transition(c, epoch, rise, pad) for c in live)

    gone = None
    if prev.state == "breakthrough" and prev.since is not None and not kept(prev.since):
        gone = ("breakthrough", prev.since)
    lost = [e for e, r in _seen(prev) if not kept(e, r)]
    if gone is None and lost:
        gone = ("confirmed event", lost[0])
    if gone is not None:
        what, epoch = gone
        near = [c for c in report.candidates if _covers(c, epoch, pad) and c.verdict != "confirmed"]
        why = near[0].reason if near else "no longer a candidate"
        reason = f"{what} at epoch {fmt_epoch(epoch)} withdrawn at step {state.seen_at_step}: {why}"
        return replace(state, withdrawn=True, withdrawn_reason=reason)
    if prev.withdrawn and state.state not in ("breakthrough", "confirmed"):
        return replace(state, withdrawn=True, withdrawn_reason=prev.withdrawn_reason)
    return state
