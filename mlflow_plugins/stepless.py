"""Rows logged without a step. MLflow stores them all at step 0, so a script that calls
`mlflow.log_metric(key, value)` once an epoch would read as a one-epoch run (its last row) and
be judged without having been looked at. Such keys are placed by when they were logged."""

from __future__ import annotations

import numpy as np

#: one key's rows as read: (steps, values, timestamps in ms)
Rows = tuple[np.ndarray, np.ndarray, np.ndarray]
#: rows at its one step that a key needs, beside keys that do log steps, to be read as logged
#: without one; fewer are a value logged again for that step (a resumed run): the latest wins
MIN_ROWS_BESIDE_STEPS = 5


def _flat(steps: np.ndarray) -> bool:
    return len(steps) > 0 and steps.min() == steps.max()


def _clock_key(rows: dict[str, Rows]) -> str:
    """The key that marks one step per row: the row count most keys share (the fewer rows on a
    tie, so a per-batch key does not set the pace), logged last within each cycle, so that the
    keys logged just before it in the same cycle land on its step."""
    counts = {k: len(r[0]) for k, r in rows.items() if len(r[0]) > 1}
    values, freq = np.unique(list(counts.values()), return_counts=True)
    n = int(values[freq == freq.max()].min())
    return max((k for k, c in counts.items() if c == n), key=lambda k: (rows[k][2][-1], k))


def place_stepless(rows: dict[str, Rows]) -> tuple[dict[str, Rows], str | None]:
    """`rows` with each key logged at one step only, more than once, moved to the step of the
    first row of the run's clock logged at or after it; and a note saying so (None when no key
    was moved). The clock is the keys that do log steps (beside which a key needs
    MIN_ROWS_BESIDE_STEPS rows), or, when none does, one key's rows counted 0, 1, 2, ... in the
    order they were logged."""
    stepped = [r for r in rows.values() if len(r[0]) and not _flat(r[0])]
    least = MIN_ROWS_BESIDE_STEPS if stepped else 2
    moved = sorted(k for k, r in rows.items() if len(r[0]) >= least and _flat(r[0]))
    if not moved:
        return rows, None
    if stepped:
        steps = np.concatenate([r[0] for r in stepped])
        stamps = np.concatenate([r[2] for r in stepped])
        order = np.lexsort((steps, stamps))
        clock_t, clock_s = stamps[order], steps[order]
        how = "each at the step logged next"
    else:
        key = _clock_key(rows)
        clock_t = np.sort(rows[key][2], kind="stable")
        clock_s = np.arange(len(clock_t), dtype=np.int64)
        moved = sorted(k for k, r in rows.items() if len(r[0]))
        how = f"one step per {key} row"
    after_last = np.append(clock_s, clock_s[-1] + 1)
    out = dict(rows)
    for k in moved:
        steps, values, stamps = rows[k]
        at = np.searchsorted(clock_t, stamps, side="left")
        out[k] = (after_last[at].astype(np.int64), values, stamps)
    shown = ", ".join(moved[:6]) + (f" and {len(moved) - 6} more" if len(moved) > 6 else "")
    step = int(rows[moved[0]][0][0])
    return out, (
        f"{shown} logged without a step (every row at step {step}): read in the order logged, {how}"
    )


class LivePlacer:
    """`place_stepless` for a run read a poll at a time (the watcher). Rows pass through as
    read until a key shows rows logged without a step; from then on every row so far is kept
    and placed again each poll, since a later row can move the clock an earlier one was placed
    by (early in a run, or on the steps of keys logged after it)."""

    def __init__(self) -> None:
        self.kept: dict[str, Rows] | None = None  # every row so far, once a key is stepless
        self.placed: dict[str, Rows] = {}  # where they were placed at the last poll
        self.note: str | None = None
        self._seen: dict[str, tuple[int, int, int]] = {}  # key -> (rows, least, top step)

    def needs_all(self, new: dict[str, Rows]) -> bool:
        """Whether `new` shows a key logged without a step for the first time: the caller then
        reads every row from the start and passes them to `place(..., start=True)`."""
        if self.kept is not None:
            return False
        for key, (steps, _, _) in new.items():
            if len(steps):
                n, lo, hi = self._seen.get(key, (0, int(steps[0]), int(steps[0])))
                self._seen[key] = (
                    n + len(steps),
                    min(lo, int(steps.min())),
                    max(hi, int(steps.max())),
                )
        stepped = any(lo != hi for _, lo, hi in self._seen.values())
        least = MIN_ROWS_BESIDE_STEPS if stepped else 2
        return any(n >= least and lo == hi for n, lo, hi in self._seen.values())

    def place(self, new: dict[str, Rows], *, start: bool = False) -> tuple[dict[str, Rows], bool]:
        """(the rows to feed, whether they replace every row fed before)."""
        if start:
            self.kept, self.placed = {}, {}
        if self.kept is None:
            return new, False
        for key, rows in new.items():
            old = self.kept.get(key)
            self.kept[key] = (
                rows
                if old is None
                else tuple(  # type: ignore[assignment]
                    np.concatenate([a, b]) for a, b in zip(old, rows, strict=True)
                )
            )
        before = self.placed
        self.placed, self.note = place_stepless(self.kept)
        kept = all(
            np.array_equal(self.placed[key][0][: len(steps)], steps)
            for key, (steps, _, _) in before.items()
        )
        if start or not kept:
            return self.placed, True
        return {
            key: tuple(a[len(before[key][0]) if key in before else 0 :] for a in self.placed[key])
            for key in new
        }, False
