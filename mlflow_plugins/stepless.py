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
#: the same where no key logs steps (two are a first epoch logged again)
MIN_ROWS_NO_STEPS = 3
#: a key whose steps reach this many times those of the keys logged over the same time (at
#: least CLOCK_ROWS rows each) counts another kind of step, optimizer steps beside epochs, and
#: is placed on theirs
SCALE_FACTOR = 2
CLOCK_ROWS = 10


def _flat(steps: np.ndarray) -> bool:
    return len(steps) > 0 and steps.min() == steps.max()


def _clock_key(rows: dict[str, Rows]) -> str:
    """The key that marks one step per row. Of the keys logged about as often (row counts at
    most one apart: a round read half-logged), the group with the most keys, the fewer rows on
    a tie (a per-batch key does not set the pace beside as many per-epoch keys); in it, the key
    logged last in the first round, so that the keys logged before it in a round land on its
    step."""
    counts = {k: len(r[0]) for k, r in rows.items() if len(r[0]) > 1}
    groups: list[list[int]] = []
    for c in sorted(set(counts.values())):
        if groups and c - groups[-1][-1] <= 1:
            groups[-1].append(c)
        else:
            groups.append([c])
    members = [[k for k, c in counts.items() if c in g] for g in groups]
    best = max(range(len(groups)), key=lambda i: (len(members[i]), -groups[i][0]))
    return max(members[best], key=lambda k: (rows[k][2].min(), k))


Plan = tuple[list[str], np.ndarray, np.ndarray, str]  # moved keys, clock times, steps, note


def _clock(stepped: list[Rows]) -> tuple[np.ndarray, np.ndarray]:
    steps = np.concatenate([r[0] for r in stepped])
    stamps = np.concatenate([r[2] for r in stepped])
    order = np.lexsort((steps, stamps))
    return stamps[order], steps[order]


#: one key's rows in brief: (rows, least step, top step, first time, last time)
Summary = tuple[int, int, int, float, float]


def _summary(r: Rows) -> Summary:
    return len(r[0]), int(r[0].min()), int(r[0].max()), float(r[2].min()), float(r[2].max())


def _other_scale(seen: dict[str, Summary]) -> tuple[list[str], int] | None:
    """Keys logged against optimizer steps beside keys logged against epochs (a script's
    `log_metric("loss", l, step=global_step)` and `log_metric("val_acc", a, step=epoch)`):
    (the keys whose steps reach SCALE_FACTOR times the top step of the keys logged over the
    same time, that top step), or None."""
    stepped = {k: x for k, x in seen.items() if x[1] != x[2]}
    clocks = [x for x in stepped.values() if x[0] >= CLOCK_ROWS]
    if len(clocks) < 2:
        return None
    span = max(x[4] for x in clocks) - min(x[3] for x in clocks)
    low = min((x[2] for x in clocks if x[4] - x[3] >= 0.5 * span > 0), default=0)
    moved = sorted(
        k for k, x in stepped.items() if low >= CLOCK_ROWS and x[2] >= SCALE_FACTOR * low
    )
    return (moved, low) if moved else None


def _rescaled(rows: dict[str, Rows]) -> Plan | None:
    """`_other_scale`'s keys placed on the steps of the rest, each row on the step logged next."""
    found = _other_scale({k: _summary(r) for k, r in rows.items() if len(r[0])})
    if found is None:
        return None
    moved, low = found
    clock = [r for k, r in rows.items() if len(r[0]) and not _flat(r[0]) and k not in moved]
    shown = ", ".join(moved[:6]) + (f" and {len(moved) - 6} more" if len(moved) > 6 else "")
    top = max(int(rows[k][0].max()) for k in moved)
    note = (
        f"{shown} logged on steps up to {top} beside keys logged over the same time on steps "
        f"up to {low}: placed on theirs, each row on the step logged next"
    )
    return moved, *_clock(clock), note


def _placement(rows: dict[str, Rows]) -> Plan | None:
    """(the keys to move, the clock's times and steps, a note) or None when none is to move.

    Beside keys that log steps, the clock is their rows and a key moves when it has
    MIN_ROWS_BESIDE_STEPS rows at its one step. Where no key logs steps, and one has
    MIN_ROWS_NO_STEPS rows, every key moves, by one key's rows counted 0, 1, 2, ... Where
    every key logs steps, see `_other_scale`."""
    stepped = [r for r in rows.values() if len(r[0]) and not _flat(r[0])]
    least = MIN_ROWS_BESIDE_STEPS if stepped else MIN_ROWS_NO_STEPS
    moved = sorted(k for k, r in rows.items() if len(r[0]) >= least and _flat(r[0]))
    if not moved:
        return _rescaled(rows)
    if stepped:
        return moved, *_clock(stepped), _note(rows, moved, "each on the step logged next")
    key = _clock_key(rows)
    clock_t = np.sort(rows[key][2])
    moved = sorted(k for k, r in rows.items() if len(r[0]))
    steps = np.arange(len(clock_t), dtype=np.int64)
    return moved, clock_t, steps, _note(rows, moved, f"one step per {key} row")


def _moved_to(stamps: np.ndarray, clock_t: np.ndarray, clock_s: np.ndarray) -> np.ndarray:
    """The step of the first clock row logged at or after each stamp (after the last: one on)."""
    at = np.searchsorted(clock_t, stamps, side="left")
    return np.append(clock_s, clock_s[-1] + 1)[at].astype(np.int64)


def _note(rows: dict[str, Rows], moved: list[str], how: str) -> str:
    shown = ", ".join(moved[:6]) + (f" and {len(moved) - 6} more" if len(moved) > 6 else "")
    steps = {int(rows[k][0][0]) for k in moved}
    at = f"every row at step {steps.pop()}" if len(steps) == 1 else "each key's rows at one step"
    return f"{shown} logged without a step ({at}): read in the order logged, {how}"


def place_stepless(rows: dict[str, Rows]) -> tuple[dict[str, Rows], str | None]:
    """`rows` with the keys logged without a step (see `_placement`) each moved to the step of
    the first row of the run's clock logged at or after it, and a note saying so (None when no
    key was moved)."""
    plan = _placement(rows)
    if plan is None:
        return rows, None
    moved, clock_t, clock_s, note = plan
    out = dict(rows)
    for k in moved:
        steps, values, stamps = rows[k]
        out[k] = (_moved_to(stamps, clock_t, clock_s), values, stamps)
    return out, note


def _last_per_step(steps: np.ndarray, values: np.ndarray, stamps: np.ndarray) -> Rows:
    last = np.append(steps[1:] != steps[:-1], True) if len(steps) else steps.astype(bool)
    return steps[last], values[last], stamps[last]


class LivePlacer:
    """`place_stepless` for a run read a poll at a time (the watcher). Rows pass through as
    read until a key shows rows logged without a step; from then on every row so far is kept
    and placed again each poll. A moved row is fed once the clock row it lands on is in (the
    rest of a round waits for it), one row per step; if a later row moved one already fed
    (the clock changed), `place` says so and the caller feeds everything afresh."""

    def __init__(self) -> None:
        self.kept: dict[str, Rows] | None = None  # every row so far, once a key is stepless
        self.note: str | None = None
        self._fed: dict[str, np.ndarray] = {}  # key -> where its rows fed so far were placed
        self._seen: dict[str, Summary] = {}  # every key's rows so far, in brief

    def needs_all(self, new: dict[str, Rows]) -> bool:
        """Whether `new` shows a key logged without a step, or on another kind of step, for
        the first time: the caller then reads every row from the start and passes them to
        `place(..., start=True)`."""
        if self.kept is not None:
            return False
        for key, rows in new.items():
            if len(rows[0]):
                x = _summary(rows)
                n, lo, hi, t0, t1 = self._seen.get(key, x)
                n = n + x[0] if key in self._seen else x[0]
                self._seen[key] = (n, min(lo, x[1]), max(hi, x[2]), min(t0, x[3]), max(t1, x[4]))
        stepped = any(x[1] != x[2] for x in self._seen.values())
        least = MIN_ROWS_BESIDE_STEPS if stepped else MIN_ROWS_NO_STEPS
        flat = any(x[0] >= least and x[1] == x[2] for x in self._seen.values())
        return flat or _other_scale(self._seen) is not None

    def place(self, new: dict[str, Rows], *, start: bool = False) -> tuple[dict[str, Rows], bool]:
        """(the rows to feed, whether they replace every row fed before)."""
        if start:
            self.kept, self._fed = {}, {}
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
        plan = _placement(self.kept)
        if plan is None:  # it logs steps after all (a first epoch logged again)
            kept, self.kept, self.note = self.kept, None, None
            return kept, True
        moved, clock_t, clock_s, self.note = plan
        placed, fed, again = {}, {}, start
        for key, (steps, values, stamps) in self.kept.items():
            if key in moved:
                n = int(np.searchsorted(stamps, clock_t[-1], side="right"))
                steps, values, stamps = (
                    _moved_to(stamps[:n], clock_t, clock_s),
                    values[:n],
                    stamps[:n],
                )
            before = self._fed.get(key, steps[:0])
            again = again or not np.array_equal(steps[: len(before)], before)
            placed[key], fed[key] = (steps, values, stamps), before
        self._fed = {key: rows[0] for key, rows in placed.items()}
        if again:
            return {key: _last_per_step(*rows) for key, rows in placed.items()}, True
        return {
            key: _last_per_step(*(a[len(fed[key]) :] for a in rows)) for key, rows in placed.items()
        }, False
