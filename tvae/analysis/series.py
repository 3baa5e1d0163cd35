"""Small numeric helpers over one metric's (epochs, values) series; all O(n)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd


def finite_series(history: pd.DataFrame, key: str) -> tuple[np.ndarray, np.ndarray]:
    """Epochs and values where ``key`` has a finite value (NaN/Inf dropped)."""
    col = history[key].to_numpy(dtype=float)
    ok = np.isfinite(col)
    return history.index.to_numpy(dtype=float)[ok], col[ok]


#: A float32 loss reaches exactly 0 only from values below this: cross-entropy underflows an
#: example at about 6e-8, and a batch's mean is 0 only once every example has.
UNDERFLOW_MAX = 1e-6


def as_loss(values: np.ndarray) -> np.ndarray:
    """Loss values as a log scale reads them: a logged 0 after a value below `UNDERFLOW_MAX`
    is an underflow and reads as the smallest positive value the key logged; any other 0 (a
    placeholder on a step without an evaluation; also a half-precision loss's, or one logged
    so sparsely that it fell from above 1e-6 to 0 between rows) and a negative value are NaN,
    not a loss."""
    values = np.asarray(values, dtype=float)
    out = np.where(values > 0, values, np.nan)
    if np.isfinite(out).any():
        before = pd.Series(out).ffill().to_numpy()  # the last positive value up to each row
        out[(values == 0) & (before < UNDERFLOW_MAX)] = np.nanmin(out)
    return out


def noise_sigma(values: np.ndarray) -> float:
    """Robust epoch-to-epoch noise level: scaled MAD of first differences / sqrt(2)."""
    if len(values) < 3:
        return 0.0
    d = np.diff(values)
    mad = np.median(np.abs(d - np.median(d)))
    return float(1.4826 * mad / np.sqrt(2.0))


#: A training loss is read through a running median of as many rows as bring its row-to-row
#: noise down to this (log10); rows that are smooth already (an epoch's mean) are read as they are.
LOSS_NOISE_LOG10 = 0.05


def denoised_loss(values: np.ndarray) -> np.ndarray:
    """A positive loss's ``values`` through a centred running median (in log) over as many rows
    as its noise needs, at most a tenth of them: a script that logs its last batch's loss
    each epoch scatters it by tens of percent or more, and one low row is not where it got to."""
    logv = np.log10(np.asarray(values, dtype=float))
    rows = math.ceil((noise_sigma(logv) / LOSS_NOISE_LOG10) ** 2)
    rows = min(rows, len(logv) // 10) | 1  # odd: centred on its row
    if rows <= 1:
        return np.asarray(values, dtype=float)
    out = pd.Series(logv).rolling(rows, center=True, min_periods=1).median().to_numpy(copy=True)
    n, half = len(logv), rows // 2
    for i in range(min(half, n)):  # near an end, a window as wide on both sides: a steep
        out[i] = np.median(logv[: 2 * i + 1])  # first fall is not pulled down to its middle
        out[n - 1 - i] = np.median(logv[n - 1 - 2 * i :])
    return 10**out


def weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    """The median of ``values`` each counted ``weights`` times (equal weights: `np.median`)."""
    if np.allclose(weights, weights[0], rtol=1e-9, atol=0.0):
        return float(np.median(values))
    order = np.argsort(values, kind="stable")
    v, c = values[order], np.cumsum(weights[order])
    half = c[-1] / 2
    i = min(int(np.searchsorted(c, half * (1 - 1e-12))), len(v) - 1)
    if i + 1 < len(v) and math.isclose(c[i], half, rel_tol=1e-12):
        return float((v[i] + v[i + 1]) / 2)
    return float(v[i])


def spans(epochs: np.ndarray) -> np.ndarray:
    """Epochs each logged row stands for: since the row before (the first: the typical gap)."""
    if len(epochs) < 2:
        return np.ones(len(epochs))
    gaps = np.diff(epochs)
    return np.concatenate([[np.median(gaps)], gaps])


def rolling_median(values: np.ndarray, width: int) -> np.ndarray:
    """Centred ``width``-point median (odd width; edges repeated): removes excursions of up to
    width // 2 points, keeps steps."""
    half = width // 2
    if len(values) < width:
        return values.copy()
    padded = np.concatenate([np.repeat(values[:1], half), values, np.repeat(values[-1:], half)])
    windows = np.lib.stride_tricks.sliding_window_view(padded, width)
    return np.median(windows, axis=1)


def quantum(values: np.ndarray, max_distinct_frac: float) -> float | None:
    """The logging step when values are quantised (few distinct values on a grid), else None."""
    n = len(values)
    if n < 10:
        return None
    distinct = np.unique(values)
    if len(distinct) < 3 or len(distinct) > max(3, max_distinct_frac * n):
        return None
    steps = np.diff(distinct)
    q = float(steps.min()) if len(steps) else 0.0
    if q <= 0:
        return None
    ratios = steps / q
    if np.all(np.abs(ratios - np.round(ratios)) < 1e-3):
        return q
    return None


def zigzag_up_swings(values: np.ndarray, threshold: float) -> list[tuple[int, int]]:
    """(low index, high index) of every upward swing larger than ``threshold``.

    A swing ends only when the series retraces more than ``threshold`` from its extreme, so
    one sustained rise with small wiggles is one swing, whatever its length.
    """
    n = len(values)
    swings: list[tuple[int, int]] = []
    if n < 2 or not threshold > 0:
        return swings
    lo = hi = 0
    direction = 0  # +1 rising from lo, -1 falling from hi, 0 undecided
    for i in range(1, n):
        v = values[i]
        if direction >= 0:
            if v > values[hi]:
                hi = i
            if direction == 0:
                if v <= values[lo]:
                    lo = i
                if values[hi] - values[lo] >= threshold and hi > lo:
                    direction = 1
                elif values[hi] - v >= threshold and hi < i:
                    direction, lo = -1, i
                continue
            if values[hi] - v >= threshold:
                swings.append((lo, hi))
                direction, lo = -1, i
        else:
            if v <= values[lo]:
                lo = i
            if v - values[lo] >= threshold:
                direction, hi = 1, i
    if direction == 1 and values[hi] - values[lo] >= threshold:
        swings.append((lo, hi))
    return swings


def first_at_least(values: np.ndarray, start: int, level: float) -> int:
    """First index >= start where values >= level (len(values) - 1 when never)."""
    idx = np.nonzero(values[start:] >= level)[0]
    return start + int(idx[0]) if len(idx) else len(values) - 1


def split_at_flats(
    epochs: np.ndarray, med: np.ndarray, lo: int, hi: int, tol: float, min_len: float
) -> list[tuple[int, int]]:
    """Split one rise (lo, hi) at internal flat stretches (>= min_len epochs within tol), so a
    learn-plateau-jump curve yields the jump as its own (low, high) pair."""
    parts: list[tuple[int, int]] = []
    cur = lo
    j = lo
    for i in range(lo + 1, hi + 1):
        if abs(med[i] - med[j]) <= tol:
            continue
        if epochs[i - 1] - epochs[j] >= min_len and j > cur:
            parts.append((cur, cur + int(np.argmax(med[cur : j + 1]))))
            cur = i - 1
        j = i
    parts.append((cur, hi))
    return parts
