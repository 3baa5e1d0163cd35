"""Training phases by change-point detection (ruptures' PELT on an L2 cost, BIC-like penalty).

The key metrics are bin-averaged onto a fixed grid (so 100k epochs cost the same as 1k),
oriented so up = better and scaled to [0, 1]; PELT finds level changes, then neighbouring
segments of the same character are merged (a long ramp is one phase, not many).

A segment's character is the pace of its held-out metrics where they move: a generalisation
jump is fast even while the training loss hardly moves. While they stay flat or worsen as the
training loss falls fast, it is memorisation; where they are flat, the mean of every key's
move decides.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
import ruptures as rpt

from tvae.analysis.roles import DIRECTION, GENERALISATION_ROLES, LOG_ROLES, Roles
from tvae.analysis.series import as_loss
from tvae.analysis.thresholds import Thresholds

PHASE_ROLES = ("loss", "accuracy", "val_loss", "hierarchy", "quality")
FAST, SLOW, PLATEAU = "fast improvement", "slow improvement", "plateau"
REGRESSION, MEMORISATION = "regression", "memorisation"
LABELS = {  # each character's name in the grokking literature
    FAST: "structure learning",
    SLOW: "refinement",
    PLATEAU: "plateau",
    REGRESSION: "degradation",
    MEMORISATION: "memorisation",
}


@dataclass
class Phase:
    """One phase: its epoch span, character, and mean slope per key (units per epoch)."""

    start: float
    end: float
    character: str
    label: str
    mean_slope: float
    slopes: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _grid_signal(history: pd.DataFrame, keys: dict[str, str], points: int):
    """Bin means of each key on a uniform epoch grid: (grid epochs, matrix, raw matrix, keys,
    whether each key is a held-out one)."""
    epochs = history.index.to_numpy(dtype=float)
    e0, e1 = float(epochs[0]), float(epochs[-1])
    n_bins = int(min(points, len(epochs)))
    edges = np.linspace(e0, e1, n_bins + 1)
    centers = 0.5 * (edges[:-1] + edges[1:])
    cols, raws, used, held = [], [], [], []
    for role, key in keys.items():
        v = history[key].to_numpy(dtype=float)
        if role in LOG_ROLES:
            v = as_loss(v)
        ok = np.isfinite(v)
        if ok.sum() < 3:
            continue
        b = np.clip(np.searchsorted(edges, epochs[ok], side="right") - 1, 0, n_bins - 1)
        tv = np.log10(v[ok]) if role in LOG_ROLES else v[ok]
        cnt = np.bincount(b, minlength=n_bins)
        mean = np.bincount(b, weights=tv, minlength=n_bins) / np.maximum(cnt, 1)
        filled = cnt > 0
        mean = np.interp(centers, centers[filled], mean[filled])
        rawm = np.bincount(b, weights=v[ok], minlength=n_bins) / np.maximum(cnt, 1)
        rawm = np.interp(centers, centers[filled], rawm[filled])
        oriented = mean * DIRECTION.get(role, 1)
        lo, hi = oriented.min(), oriented.max()
        if hi - lo <= 1e-12:
            continue
        cols.append((oriented - lo) / (hi - lo))
        raws.append(rawm)
        used.append(key)
        held.append(role in GENERALISATION_ROLES)
    if not cols:
        return centers, None, None, [], np.zeros(0, bool)
    return centers, np.column_stack(cols), np.column_stack(raws), used, np.array(held)


def _character(delta: float, frac_time: float, t: Thresholds) -> str:
    """Classify by pace: ``rate`` 1.0 covers the run's whole range over the whole run."""
    rate = delta / max(frac_time, 1e-9)
    if abs(delta) < t.phases.min_delta or abs(rate) < t.phases.plateau_rate:
        return PLATEAU
    if rate < 0:
        return REGRESSION
    return FAST if rate >= t.phases.fast_rate else SLOW


def _segment_character(delta: np.ndarray, held: np.ndarray, frac_time: float, t: Thresholds) -> str:
    """Character of one segment from each key's move ``delta`` (``held``: held-out keys)."""
    mean = _character(float(np.mean(delta)), frac_time, t)
    if not held.any():
        return mean
    held_out = _character(float(np.mean(delta[held])), frac_time, t)
    if held_out == FAST:
        return held_out
    if held_out in (PLATEAU, REGRESSION) and (~held).any():
        if _character(float(np.mean(delta[~held])), frac_time, t) == FAST:
            return MEMORISATION
    return mean if held_out == PLATEAU else held_out


def detect_phases(history: pd.DataFrame, roles: Roles, present: set[str], t: Thresholds):
    """Phases over the run, or [] when no key metric has data."""
    keys = {r: getattr(roles, r) for r in PHASE_ROLES if getattr(roles, r) in present}
    if not keys or len(history) < 2:
        return []
    grid, sig, raw, used, held = _grid_signal(history, keys, t.phases.grid_points)
    n = len(grid)
    if sig is None or n < 6:
        if sig is None:
            return [
                Phase(float(history.index[0]), float(history.index[-1]), PLATEAU, PLATEAU, 0.0, {})
            ]
        bkps = [n]
    else:
        d = sig.shape[1]
        diffs = np.diff(sig, axis=0)
        mad = np.median(np.abs(diffs - np.median(diffs, axis=0)), axis=0) * 1.4826 / math.sqrt(2)
        var = float(np.mean(mad**2))
        var = max(var, 1e-3)  # floor: a perfectly smooth curve still has finite resolution
        pen = t.phases.penalty_scale * var * (d + 1) * math.log(n) * 2
        # the linear kernel's cost is the L2 cost; ruptures runs its PELT search in C
        bkps = rpt.KernelCPD(kernel="linear", min_size=3, jump=1).fit(sig).predict(pen=pen)
    segs = []
    start = 0
    for b in bkps:
        segs.append([start, b])
        start = b
    total = grid[-1] - grid[0] if n > 1 else 1.0

    def describe(a: int, b: int) -> str:
        # from the previous segment's end, so a level shift at the boundary counts
        last, first = b - 1, max(a - 1, 0)
        if last <= first:
            return PLATEAU
        frac = (grid[last] - grid[first]) / total if total > 0 else 1.0
        return _segment_character(sig[last] - sig[first], held, frac, t)

    merged: list[list] = []
    for a, b in segs:
        ch = describe(a, b)
        if merged and merged[-1][2] == ch:
            merged[-1][1] = b
        else:
            merged.append([a, b, ch])
    logged = history.index.to_numpy(dtype=float)

    def snap(x: float) -> float:
        """Nearest logged epoch, so boundaries are epochs the run actually has."""
        i = int(np.clip(np.searchsorted(logged, x), 1, len(logged) - 1))
        return float(logged[i] if abs(logged[i] - x) < abs(x - logged[i - 1]) else logged[i - 1])

    phases = []
    for i, (a, b, ch) in enumerate(merged):
        # boundaries sit where the next segment starts; the first/last use the run's ends
        ea = float(logged[0]) if i == 0 else snap(float(grid[a]))
        eb = float(logged[-1]) if i == len(merged) - 1 else snap(float(grid[b]))
        span = max(grid[b - 1] - grid[a], 1e-9)
        slopes = {k: float((raw[b - 1, j] - raw[a, j]) / span) for j, k in enumerate(used)}
        mean_slope = float(np.mean(sig[b - 1] - sig[a]) / span) if b - 1 > a else 0.0
        ch = describe(a, b)
        phases.append(Phase(ea, eb, ch, LABELS[ch], mean_slope, slopes))
    return phases
