"""Confound evidence: scheduled control changes, NaN/Inf stretches, logging precision."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from tvae.analysis.roles import LOG_ROLES
from tvae.analysis.thresholds import Thresholds


@dataclass(frozen=True)
class ControlChange:
    """A scheduled control signal (LR, LR phase, freeze, geodesic switch) changing value."""

    key: str
    epoch: float
    before: float
    after: float
    until: float | None = None  # an LR increase: the epoch it is back to `before` (its cycle)


def control_changes(
    history: pd.DataFrame, keys: list[str], lr_key: str | None, t: Thresholds
) -> list[ControlChange]:
    """Step changes of every control column; for the LR only steps that break its schedule's
    trend (see `_lr_steps`), so smooth cosine or linear decays do not mark every epoch."""
    out: list[ControlChange] = []
    epochs = history.index.to_numpy(dtype=float)
    for key in keys:
        col = history[key].to_numpy(dtype=float)
        ok = np.isfinite(col)
        e, v = epochs[ok], col[ok]
        if len(v) < 2:
            continue
        prev, cur = v[:-1], v[1:]
        changed = _lr_steps(prev, cur, t.confounds.lr_change_rel) if key == lr_key else cur != prev
        for i in np.nonzero(changed)[0]:
            until = None
            if key == lr_key and cur[i] > prev[i]:
                back = np.nonzero(v[i + 1 :] <= prev[i])[0]
                until = float(e[i + 1 + back[0]]) if len(back) else float(e[-1])
            out.append(ControlChange(key, float(e[i + 1]), float(prev[i]), float(cur[i]), until))
    out.sort(key=lambda c: c.epoch)
    return out


def _lr_steps(prev: np.ndarray, cur: np.ndarray, rel: float) -> np.ndarray:
    """Which LR changes are steps, not the smooth course of a schedule.

    A change counts when it is larger than `rel` of the LR and breaks the trend of the change
    before it: after a flat stretch (step schedules, the start of a decay), reversing direction
    (warm restarts), or over 3x the previous change. The epochs inside a cosine or linear decay
    change by a large fraction near its end, yet follow their trend, so they do not count.
    """
    delta = cur - prev
    big = np.abs(delta) > rel * np.maximum(np.abs(prev), 1e-30)
    before = np.concatenate([[0.0], delta[:-1]])
    breaks = (
        (np.abs(before) <= 0.1 * np.abs(delta))
        | (np.sign(before) != np.sign(delta))
        | (np.abs(delta) > 3.0 * np.abs(before))
    )
    return big & breaks


#: ``history.attrs`` key a reader of each key's own rows sets: {key: ((first, last), ...)},
#: the step ranges over which every row the key logged is NaN. In the frame a NaN cell is
#: ambiguous (a step the key was not logged at reads as NaN too). Ranges, not every step:
#: pandas copies and compares (``==``) attrs in its operations.
LOGGED_NAN = "logged_nan"

Ranges = tuple[tuple[int, int], ...]


def history_frame(columns: Mapping[str, pd.Series]) -> pd.DataFrame:
    """Each key's logged rows (a Series by step) as one frame (index = step, named epoch), with
    the ranges each key logged NaN over in ``attrs[LOGGED_NAN]``."""
    if not columns:
        frame = pd.DataFrame(index=pd.Index([], dtype=np.int64))
    else:
        frame = pd.concat(columns, axis=1).sort_index()
    frame.index = frame.index.astype(np.int64)
    frame.index.name = "epoch"
    frame.attrs[LOGGED_NAN] = {
        key: _runs(s.index.to_numpy(dtype=np.int64), np.isnan(v))
        for key, s in columns.items()
        if np.isnan(v := s.to_numpy(dtype=float)).any()
    }
    return frame


def _runs(at: np.ndarray, flag: np.ndarray) -> tuple:
    """(first, last) of ``at`` (sorted, unique) over each run of consecutive True in ``flag``."""
    edges = np.diff(np.concatenate([[0], flag.astype(np.int8), [0]]))
    starts, ends = np.nonzero(edges == 1)[0], np.nonzero(edges == -1)[0] - 1
    return tuple((at[a].item(), at[b].item()) for a, b in zip(starts, ends, strict=True))


def _within(x: np.ndarray, ranges: Ranges) -> np.ndarray:
    """Which of ``x`` lie in one of the sorted, disjoint ``ranges``."""
    if not ranges:
        return np.zeros(len(x), dtype=bool)
    first, last = np.array(ranges, dtype=float).T
    i = np.searchsorted(first, x, side="right") - 1
    return (i >= 0) & (x <= last[np.maximum(i, 0)])


def logged_rows(history: pd.DataFrame, key: str) -> pd.Series:
    """``key``'s rows for a frame rebuilt from them to have the same NaN stretches: its
    non-NaN cells and the first and last step of each stretch ``history.attrs`` says it logged
    NaN over (not the steps between, which the ranges do not keep). Without attrs: no NaN."""
    col = history[key]
    ends = [s for r in history.attrs.get(LOGGED_NAN, {}).get(key, ()) for s in r]
    return col[col.notna().to_numpy() | history.index.isin(ends)]


def nonfinite_stretches(
    history: pd.DataFrame, logged_nan: Mapping[str, Ranges] | None = None
) -> dict[str, list[tuple[float, float]]]:
    """Per column, epoch ranges holding logged NaN/Inf.

    Inf is always a logged value. NaN is ambiguous (an un-logged epoch reads as NaN): with
    ``logged_nan`` (a reader's ``attrs[LOGGED_NAN]``) it counts within the ranges listed there;
    without, only in densely logged columns (finite at >= 90% of rows within its span).
    """
    out: dict[str, list[tuple[float, float]]] = {}
    epochs = history.index.to_numpy(dtype=float)
    for key in history.columns:
        col = history[key].to_numpy(dtype=float)
        fin = np.isfinite(col)
        bad = np.isinf(col)
        if logged_nan is not None:
            bad |= np.isnan(col) & _within(epochs, logged_nan.get(key, ()))
        elif fin.any():
            first, last = np.argmax(fin), len(fin) - 1 - np.argmax(fin[::-1])
            if fin[first : last + 1].mean() >= 0.9:
                bad |= np.isnan(col)
                bad[:first] = False
        if not bad.any():
            continue
        rows = ~np.isnan(col) | bad  # the key's own: a step it was not at splits no stretch
        out[key] = [(float(a), float(b)) for a, b in _runs(epochs[rows], bad[rows])]
    return out


def nonfinite_in(stretches: list[tuple[float, float]], a: float, b: float):
    """The first stretch overlapping [a, b], or None."""
    for s0, s1 in stretches:
        if s1 >= a and s0 <= b:
            return (s0, s1)
    return None


def quantised_jump(q: float | None, size: float, role: str, t: Thresholds) -> bool:
    """True when the jump is only a few logging steps of a quantised metric."""
    if q is None or role in LOG_ROLES:
        return False
    return size <= t.confounds.quantised_max_steps * q + 1e-12
