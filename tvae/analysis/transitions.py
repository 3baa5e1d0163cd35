"""The search: candidate transitions (a stagnant stretch, then a rise) in one metric.

A metric is oriented so that higher is better (losses as -log10). Candidates are the upward
swings of its rolling median larger than the noise (zigzag), split at internal flat stretches
so that learn-plateau-jump yields the jump on its own. Each becomes a `Transition` that locates
the plateau, the onset and the end of the rise and how long the new level held; the criteria
(`tvae.analysis.criteria`) then judge it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd

from tvae.analysis.roles import DIRECTION, LOG_ROLES
from tvae.analysis.series import (
    as_loss,
    finite_series,
    first_at_least,
    noise_sigma,
    quantum,
    rolling_median,
    spans,
    split_at_flats,
    weighted_median,
    zigzag_up_swings,
)
from tvae.analysis.thresholds import Thresholds


@dataclass(frozen=True)
class Metric:
    """One metric's finite history, oriented so that higher is better."""

    role: str
    key: str
    e: np.ndarray  # epochs
    s: np.ndarray  # oriented values (log10 for loss roles)
    raw: np.ndarray  # values as logged
    unit: str  # "points" (accuracy), "log10" (losses) or "units"

    @classmethod
    def load(cls, history: pd.DataFrame, role: str, key: str) -> Metric:
        e, raw = finite_series(history, key)
        if role in LOG_ROLES:
            raw = as_loss(raw)
            ok = np.isfinite(raw)
            e, raw = e[ok], raw[ok]
            s = -np.log10(raw)
        else:
            s = raw * DIRECTION.get(role, 1)
        unit = "log10" if role in LOG_ROLES else "points" if role == "accuracy" else "units"
        return cls(role, key, e, s, raw, unit)

    @cached_property
    def med(self) -> np.ndarray:
        """3-point rolling median: single-epoch spikes removed, steps kept."""
        return rolling_median(self.s, 3)

    @cached_property
    def wide_med(self) -> np.ndarray:
        """7-point rolling median: where plateaus are placed, so a dip of up to three logged
        epochs (a slingshot) does not cut a plateau in two."""
        return rolling_median(self.s, 7)

    @cached_property
    def spans(self) -> np.ndarray:
        """Epochs each row stands for: a plateau's level is its median over epochs, so rows
        logged densely early (log-spaced logging) do not outweigh the rest of it."""
        return spans(self.e)

    def level(self, a: int, b: int) -> float:
        """The median over epochs of rows ``a``..``b``."""
        return weighted_median(self.s[a : b + 1], self.spans[a : b + 1])

    @cached_property
    def sigma(self) -> float:
        return noise_sigma(self.s)

    @cached_property
    def spread(self) -> float:
        """Range of the bulk of the values (1st to 99th percentile)."""
        return float(np.percentile(self.s, 99) - np.percentile(self.s, 1))

    def quantum(self, t: Thresholds) -> float | None:
        return quantum(self.raw, t.confounds.quantised_max_distinct_frac)

    def min_size(self, t: Thresholds) -> float:
        """Smallest rise that counts: the seed's 2 points, a loss drop in decades, or 10% of
        the spread of another metric; never below the noise."""
        if self.unit == "log10":
            base = t.breakthrough.val_loss_log10
        elif self.unit == "points":
            base = t.breakthrough.points
        else:
            base = max(t.breakthrough.points, 0.1 * self.spread)
        return max(base, t.breakthrough.noise_sigmas * self.sigma)

    def scale(self, size: float, t: Thresholds) -> float:
        """The part of a rise that places plateau band, onset and end: a loss keeps falling
        for decades after the transition, so only its first `loss_span_log10` decades count."""
        return min(size, t.breakthrough.loss_span_log10) if self.unit == "log10" else size


@dataclass(frozen=True)
class Transition:
    """One candidate: plateau [ps, pe], onset, end of rise and hold, as indices into `m`."""

    m: Metric
    ps: int
    pe: int
    start: int  # the rise leaves the plateau: last point within a tenth of its height
    onset: int  # the rise crosses half of its (scaled) height
    end: int  # the rise reaches 90% of its (scaled) height
    level: float  # plateau level
    top: float  # highest point of the swing
    held: int  # last index the rolling median stays above mid-rise (from `end`)
    raw_above: int  # points from `end` before the raw series first falls below mid-rise
    kind: str = "jump"  # or "collapse": a slow fall of a loss long after the fit

    def epoch(self, i: int) -> float:
        return float(self.m.e[i])

    @property
    def size(self) -> float:
        return self.top - self.level

    @property
    def plateau_start(self) -> float:
        return self.epoch(self.ps)

    @property
    def plateau_end(self) -> float:
        return self.epoch(self.pe)

    @property
    def plateau_len(self) -> float:
        return self.plateau_end - self.plateau_start

    @property
    def rise_len(self) -> float:
        return self.epoch(self.end) - self.plateau_end

    @property
    def sustained_for(self) -> float:
        return self.epoch(self.held) - self.epoch(self.end) if self.held >= self.end else 0.0


def _plateau_bounds(med: np.ndarray, lo: int, hi: int, level: float, tol: float) -> tuple[int, int]:
    """Indices of the stagnant stretch around the swing's low: within ``tol`` of ``level``."""
    out_before = np.nonzero(np.abs(med[:lo] - level) > tol)[0]
    ps = int(out_before[-1]) + 1 if len(out_before) else 0
    out_after = np.nonzero(np.abs(med[lo + 1 : hi] - level) > tol)[0]
    pe = lo + int(out_after[0]) if len(out_after) else max(lo, hi - 1)
    return ps, pe


def _transition(m: Metric, lo: int, hi: int, top: float, t: Thresholds) -> Transition | None:
    s, med, wide = m.s, m.med, m.wide_med
    tol = max(t.plateau.band_frac * m.scale(top - s[lo], t), 3 * m.sigma)
    ps, pe = _plateau_bounds(wide, lo, hi, float(wide[lo]), tol)
    level = m.level(ps, pe)
    ps, pe = _plateau_bounds(wide, lo, hi, level, tol)  # re-centred on the plateau's level
    level = m.level(ps, pe)
    if top <= level:
        return None
    height = m.scale(top - level, t)
    mid = level + 0.5 * height
    # on the rolling median, so one noisy epoch does not place the onset; a rise that the
    # median never sees (a single-epoch spike) is placed on the raw values
    curve = med if med[pe:].max() >= mid else s
    onset = first_at_least(curve, pe, mid)
    end = first_at_least(curve, onset, level + 0.9 * height)
    near = np.nonzero(curve[: onset + 1] <= level + max(0.1 * height, 3 * m.sigma))[0]
    start = int(near[-1]) if len(near) else onset
    fell = np.nonzero(med[end:] < mid)[0]
    held = end + int(fell[0]) - 1 if len(fell) else len(med) - 1
    below = np.nonzero(s[end:] < mid)[0]
    raw_above = int(below[0]) if len(below) else len(s) - end
    return Transition(m, ps, pe, start, onset, end, level, top, held, raw_above)


def find_transitions(m: Metric, t: Thresholds) -> list[Transition]:
    """Every candidate transition of ``m`` with a plateau of at least the candidate minimum.

    Rises are the swings of the 7-point median, so dips of a few epochs (slingshots) neither
    end a rise nor start a new one; the swings of the raw values that the median does not
    show (brief spikes) are candidates too, for the criteria to reject with their reason,
    except a peak where the median is itself midway up a rise (noise on its flank).
    """
    if len(m.s) < 4:
        return []
    delta = m.min_size(t)
    flat_tol = max(3 * m.sigma, 0.5 * delta)
    spans = []
    swings = zigzag_up_swings(m.wide_med, delta)
    for lo0, hi0 in swings:
        # a flat stretch must be long next to the swing, or a slow steady rise would split
        min_flat = max(t.plateau.candidate_min_epochs, 0.1 * (m.e[hi0] - m.e[lo0]))
        parts = [
            (lo, hi, float(m.wide_med[hi]))
            for lo, hi in split_at_flats(m.e, m.med, lo0, hi0, flat_tol, min_flat)
            if m.wide_med[hi] - m.wide_med[lo] >= delta
        ]
        # a slow, steady rise cut into pieces that are each too small stays one rise
        spans += parts or [(lo0, hi0, float(m.wide_med[hi0]))]
    w = m.wide_med
    for lo, hi in zigzag_up_swings(m.s, delta):
        # up for a few epochs only; a peak where the median is still rising is part of the rise
        rising = any(a <= hi < b and w[a] + flat_tol < w[hi] < w[b] - flat_tol for a, b in swings)
        if m.s[hi] - w[hi] >= delta and not rising:
            spans.append((lo, hi, float(m.s[hi])))
    out = []
    for lo, hi, top in spans:
        tr = _transition(m, lo, hi, top, t)
        if tr is not None and tr.plateau_len >= t.plateau.candidate_min_epochs:
            out.append(tr)
    return out
