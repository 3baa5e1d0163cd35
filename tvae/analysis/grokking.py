"""Grokking candidates: a sustained, sudden rise after a plateau; each judged with a reason.

Candidates are the upward swings (zigzag, noise-adaptive threshold) of a primary metric
(accuracy, else val_loss in log10, else quality, else -hierarchy) that follow a stagnant
stretch. "Sudden" is judged both the seed's way (rise within a few epochs) and scale-aware
(rise short next to the plateau, in epochs or on a log-epoch axis), so 50-epoch runs and
10,000-epoch runs are handled by the same rule.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from tvae.analysis.confounds import ControlChange, nonfinite_in, quantised_jump
from tvae.analysis.roles import DIRECTION, LOG_ROLES, Roles
from tvae.analysis.series import (
    finite_series,
    first_at_least,
    noise_sigma,
    quantum,
    rolling_median3,
    split_at_flats,
    zigzag_up_swings,
)
from tvae.analysis.thresholds import Thresholds

SEVERITIES = ["none", "micro", "standard", "major"]
PRIMARY_ORDER = ("accuracy", "val_loss", "quality", "hierarchy")
CONFIRMING = ("accuracy", "val_loss", "loss", "quality", "hierarchy")


@dataclass
class Candidate:
    """One candidate transition and the numbers its verdict was judged on."""

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
    confound: str | None = None
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def transformed(history: pd.DataFrame, role: str, key: str) -> tuple[np.ndarray, np.ndarray]:
    """Finite (epochs, values) of ``key`` oriented so that higher is better (logs in log10)."""
    e, v = finite_series(history, key)
    if role in LOG_ROLES:
        ok = v > 0
        e, v = e[ok], np.log10(v[ok])
    return e, v * DIRECTION.get(role, 1)


def primary_role(roles: Roles, present: set[str]) -> str | None:
    """The role whose breakthroughs define candidates."""
    for role in PRIMARY_ORDER:
        key = getattr(roles, role)
        if key and key in present:
            return role
    return None


def _severity(plateau: float, size: float, role: str, t: Thresholds) -> str:
    by_plateau = (
        3
        if plateau >= t.severity_major_plateau
        else 2
        if plateau >= t.severity_standard_plateau
        else 1
    )
    if role in LOG_ROLES:
        lo, hi = t.severity_standard_log10, t.severity_major_log10
    else:
        lo, hi = t.severity_standard_points, t.severity_major_points
    by_size = 3 if size > hi else 2 if size > lo else 1
    return SEVERITIES[min(by_plateau, by_size)]


def _median_between(e: np.ndarray, v: np.ndarray, a: float, b: float) -> float:
    sel = (e >= a) & (e <= b)
    return float(np.median(v[sel])) if sel.any() else math.nan


def _confirmers(
    history: pd.DataFrame, roles: Roles, present: set[str], primary: str, win: dict
) -> tuple[list[str], list[str]]:
    """Other roles available, and those whose level moved the right way across the event."""
    available, visible = [], []
    for role in CONFIRMING:
        key = getattr(roles, role)
        if role == primary or not key or key not in present:
            continue
        e, v = transformed(history, role, key)
        if len(v) < 3:
            continue
        available.append(key)
        pre = _median_between(e, v, win["pre_a"], win["pre_b"])
        post = _median_between(e, v, win["post_a"], win["post_b"])
        if not (math.isfinite(pre) and math.isfinite(post)):
            continue
        spread = float(np.percentile(v, 99) - np.percentile(v, 1))
        need = max(3 * noise_sigma(v), 0.1 * spread, 1e-12)
        if post - pre > need:
            visible.append(key)
    return available, visible


def _loss_plateau(history: pd.DataFrame, key: str | None, a: float, b: float, t: Thresholds):
    """Whether the training loss was flat (absolute or log terms) or already low on [a, b]."""
    if not key or key not in history:
        return None, "no loss role"
    e, v = finite_series(history, key)
    if len(v) < 2:
        return None, "loss has too few values"
    sel = (e >= a) & (e <= b)
    if sel.sum() < 2:
        return None, "loss not logged during the plateau"
    ev, vv = e[sel], v[sel]
    span = max(ev[-1] - ev[0], 1.0)
    abs_rate = abs(vv[-1] - vv[0]) / span
    if abs_rate < t.plateau_loss_change:
        return True, f"loss flat ({abs_rate:.2g}/epoch)"
    if vv[0] > 0 and vv[-1] > 0:
        log_rate = abs(math.log(vv[-1] / vv[0])) / span
        if log_rate < t.plateau_loss_log_change:
            return True, f"loss flat in log terms ({log_rate:.2g}/epoch)"
        if v[0] > 0 and np.median(vv) <= 0.1 * np.max(v[: max(3, len(v) // 20)]):
            return True, f"loss already low ({np.median(vv):.3g})"
    return False, f"loss still changing ({vv[0]:.4g} -> {vv[-1]:.4g})"


def detect_candidates(
    history: pd.DataFrame,
    roles: Roles,
    present: set[str],
    controls: list[ControlChange],
    nonfinite: dict[str, list[tuple[float, float]]],
    t: Thresholds,
) -> list[Candidate]:
    """Every grokking candidate in ``history`` with its verdict, in epoch order."""
    role = primary_role(roles, present)
    if role is None:
        return []
    key = getattr(roles, role)
    e, s = transformed(history, role, key)
    if len(s) < 4:
        return []
    raw = finite_series(history, key)[1]
    if role in LOG_ROLES:
        min_size, unit = t.val_loss_drop_log10, "log10"
    elif role == "accuracy":
        min_size, unit = t.breakthrough_points, "points"
    else:
        spread = float(np.percentile(s, 99) - np.percentile(s, 1))
        min_size, unit = max(t.breakthrough_points, 0.1 * spread), "units"
    sigma = noise_sigma(s)
    delta = max(min_size, t.noise_sigmas * sigma)
    med = rolling_median3(s)
    q = quantum(raw, t.quantised_max_distinct_frac)
    hi_frac = 0.75 if role in LOG_ROLES else 0.9
    out: list[Candidate] = []
    pairs = []
    for lo0, hi0 in zigzag_up_swings(s, delta):
        flat_tol = max(3 * sigma, 0.5 * delta)
        # a flat stretch must be long next to the swing, or a slow steady rise would split
        min_flat = max(t.candidate_min_plateau_epochs, 0.1 * (e[hi0] - e[lo0]))
        parts = split_at_flats(e, med, lo0, hi0, flat_tol, min_flat)
        pairs += [(a, b) for a, b in parts if s[b] - s[a] >= delta]
    ctx = _Swings(
        history, roles, present, role, key, e, s, med, sigma, hi_frac, unit, q, controls,
        nonfinite, t,
    )  # fmt: skip
    for lo, hi in pairs:
        cand = _judge_swing(ctx, lo, hi)
        if cand is not None:
            out.append(cand)
    return out


def _plateau_bounds(med: np.ndarray, lo: int, hi: int, level: float, tol: float) -> tuple[int, int]:
    """Indices of the stagnant stretch around the swing's low: within ``tol`` of ``level``."""
    ps = lo
    while ps > 0 and abs(med[ps - 1] - level) <= tol:
        ps -= 1
    pe = lo
    while pe + 1 < hi and abs(med[pe + 1] - level) <= tol:
        pe += 1
    return ps, pe


@dataclass(frozen=True)
class _Swings:
    """What every swing of one primary metric is judged against (built once per run)."""

    history: pd.DataFrame
    roles: Roles
    present: set[str]
    role: str
    key: str
    e: np.ndarray  # epochs
    s: np.ndarray  # the (transformed) primary series
    med: np.ndarray  # its 3-point rolling median
    sigma: float
    hi_frac: float
    unit: str
    q: float | None
    controls: list[ControlChange]
    nonfinite: dict[str, list[tuple[float, float]]]
    t: Thresholds


def _judge_swing(ctx: _Swings, lo: int, hi: int) -> Candidate | None:
    history, roles, present, role, key = ctx.history, ctx.roles, ctx.present, ctx.role, ctx.key
    e, s, med, sigma, hi_frac, unit = ctx.e, ctx.s, ctx.med, ctx.sigma, ctx.hi_frac, ctx.unit
    q, controls, nonfinite, t = ctx.q, ctx.controls, ctx.nonfinite, ctx.t
    size0 = s[hi] - s[lo]
    tol = max(t.plateau_band_frac * size0, 3 * sigma)
    ps, pe = _plateau_bounds(med, lo, hi, float(med[lo]), tol)
    level = float(np.median(s[ps : pe + 1]))
    ps, pe = _plateau_bounds(med, lo, hi, level, tol)  # re-centred on the plateau's level
    level = float(np.median(s[ps : pe + 1]))
    top = float(s[hi])
    size = top - level
    if size <= 0:
        return None
    i50 = first_at_least(s, pe, level + 0.5 * size)
    i90 = first_at_least(s, pe, level + hi_frac * size)
    pe_idx = pe
    plateau_start, plateau_end = float(e[ps]), float(e[pe_idx])
    plateau_len = plateau_end - plateau_start
    if plateau_len < t.candidate_min_plateau_epochs:
        return None  # a rise straight out of learning, not a candidate
    rise_len = float(e[i90] - e[pe_idx])
    # sustained: the spike-proof level stays above mid-rise after the breakthrough
    mid = level + 0.5 * size
    j = i90
    while j + 1 < len(med) and med[j + 1] >= mid:
        j += 1
    sustained_for = float(e[j] - e[i90]) if med[i90] >= mid or j > i90 else 0.0
    raw_above = int(np.argmax(s[i90:] < mid)) if np.any(s[i90:] < mid) else len(s) - i90
    scale = 100.0 if unit == "points" else 1.0
    size_out = round(size * scale, 6) if unit == "points" else round(size, 6)
    cand = Candidate(
        verdict="rejected",
        reason="",
        severity="none",
        plateau_start=plateau_start,
        plateau_end=plateau_end,
        breakthrough_epoch=float(e[i50]),
        rise_end=float(e[i90]),
        size=size_out,
        size_unit=unit,
        sustained_for=sustained_for,
        metrics=[key],
        primary=key,
        details={
            "rise_epochs": rise_len,
            "plateau_epochs": plateau_len,
            "level": level,
            "peak": top,
            "noise_sigma": sigma,
        },
    )
    win_w = max(t.confound_window_epochs, t.confound_window_frac * rise_len)
    # 1. collapse + recovery after generalising (slingshot) is not a new event
    before = s[:ps]
    if len(before) and before.max() >= level + t.recovery_frac * size:
        k = int(np.argmax(before >= level + t.recovery_frac * size))
        cand.reason = (
            f"recovery to a level already reached at epoch {e[k]:g} "
            "(collapse and recovery after generalising, not a new event)"
        )
        cand.confound = "recovery"
        return cand
    # 2. single-epoch spikes / not sustained
    if raw_above <= 1 and sustained_for == 0:
        cand.reason = f"single-epoch spike at epoch {e[i90]:g}: gone the next epoch"
        cand.confound = "spike"
        return cand
    if sustained_for < t.sustain_epochs:
        cand.reason = f"not sustained: {sustained_for:g} epochs < {t.sustain_epochs:g}"
        cand.confound = "not sustained"
        return cand
    # 3. logging precision
    if quantised_jump(q, size, role, t):
        cand.reason = (
            f"apparent plateau from logging precision: {key} is quantised in steps of {q:.3g} "
            f"and the jump is {size / q:.1f} steps"
        )
        cand.confound = "precision"
        return cand
    # 4. NaN/Inf stretches
    for k in (key, roles.loss):
        bad = nonfinite_in(nonfinite.get(k or "", []), plateau_end - win_w, float(e[i90]))
        if bad:
            cand.reason = f"NaN/Inf stretch in {k} at epochs {bad[0]:g}-{bad[1]:g}"
            cand.confound = "nan"
            return cand
    # 5. scheduled controls changing just before the jump
    a, b = plateau_end - win_w, float(e[i50])
    hits = [c for c in controls if a <= c.epoch <= b]
    if hits:
        c = hits[0]
        cand.reason = (
            f"confound: {c.key} changed at epoch {c.epoch:g} ({c.before:g} -> {c.after:g}), "
            f"within the window {a:g}-{b:g} before the jump"
        )
        cand.confound = c.key
        cand.details["controls"] = [asdict(h) for h in hits]
        return cand
    # 6. plateau length and suddenness
    if plateau_len < t.plateau_min_epochs:
        cand.reason = f"plateau too short: {plateau_len:g} epochs < {t.plateau_min_epochs:g}"
        cand.severity = _severity(plateau_len, size * (1 if unit != "points" else 1), role, t)
        return cand
    log_rise = math.log((e[i90] + 1) / (plateau_end + 1))
    log_plateau = math.log((plateau_end + 1) / (plateau_start + 1))
    seed_sudden = rise_len <= t.breakthrough_epochs
    ratio_sudden = rise_len <= t.sudden_ratio * plateau_len
    log_sudden = plateau_len >= 100 * t.breakthrough_epochs / 3 and log_rise <= (
        t.sudden_ratio * log_plateau
    )
    cand.details.update(log_rise=log_rise, log_plateau=log_plateau)
    if not (seed_sudden or ratio_sudden or log_sudden):
        cand.reason = (
            f"not sudden: rise took {rise_len:g} epochs after a {plateau_len:g}-epoch plateau "
            f"(log-epoch {log_rise:.2f} vs {log_plateau:.2f})"
        )
        return cand
    # 7. loss plateau (absolute, log terms, or already low)
    flat, loss_note = _loss_plateau(
        history, roles.loss if role != "loss" else None, plateau_start, plateau_end, t
    )
    cand.details["loss"] = loss_note
    if flat is False:
        cand.reason = f"no training-loss plateau: {loss_note}"
        return cand
    # 8. multi-metric confirmation
    win = {
        "pre_a": plateau_start + 0.5 * plateau_len,
        "pre_b": plateau_end,
        "post_a": float(e[i90]),
        "post_b": float(e[i90]) + max(t.sustain_epochs, rise_len),
    }
    available, visible = _confirmers(history, roles, present, role, win)
    cand.metrics = [key, *visible]
    need = min(t.min_metrics, 1 + len(available))
    if len(cand.metrics) < need:
        cand.reason = (
            f"visible only in {', '.join(cand.metrics)}; needs {need} metrics "
            f"(checked {', '.join(available) or 'none'})"
        )
        return cand
    how = (
        "within the seed's window"
        if seed_sudden
        else ("short next to the plateau" if ratio_sudden else "short on a log-epoch axis")
    )
    together = f"; moved together: {', '.join(cand.metrics)}" if len(cand.metrics) > 1 else ""
    few = (
        ""
        if len(available) + 1 >= t.min_metrics
        else f" (only {1 + len(available)} metric available)"
    )
    cand.verdict = "confirmed"
    cand.severity = _severity(plateau_len, size, role, t)
    cand.reason = (
        f"{plateau_len:g}-epoch plateau, then +{size_out:g} {unit} over {rise_len:g} epochs "
        f"({how}), sustained {sustained_for:g} epochs; {loss_note or 'no loss role'}"
        f"{together}{few}"
    )
    return cand
