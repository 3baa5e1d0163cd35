"""Rows whose steps do not say when they were logged. MLflow stores a row logged without a step
at step 0, so a script that calls `mlflow.log_metric(key, value)` once an epoch would read as a
one-epoch run (its last row) and be judged without having been looked at; a script that logs
its training loss by optimizer step and its validation accuracy by epoch puts the second's
whole history inside the first epochs. Such keys are placed by when they were logged."""

from __future__ import annotations

import numpy as np

#: one key's rows as read: (steps, values, timestamps in ms)
Rows = tuple[np.ndarray, np.ndarray, np.ndarray]
#: rows at its one step that a key needs, beside keys that do log steps, to be read as logged
#: without one; fewer are a value logged again for that step (a resumed run): the latest wins
MIN_ROWS_BESIDE_STEPS = 5
#: the same where no key logs steps (two are a first epoch logged again)
MIN_ROWS_NO_STEPS = 3
#: a key whose steps advance this many times as far as another key's over the time both were
#: logged (each with at least CLOCK_ROWS steps there, over half the run's time or more) counts
#: another kind of step, optimizer steps beside epochs, and is placed on the other's steps
SCALE_FACTOR = 2
CLOCK_ROWS = 10


def _flat(steps: np.ndarray) -> bool:
    return len(steps) > 0 and steps.min() == steps.max()


def _stepless(seen: dict[str, tuple[int, int, int]]) -> tuple[list[str], bool]:
    """(the keys logged without a step, whether any key logs steps) from each key's (rows,
    least step, top step): all its rows at one step, MIN_ROWS_BESIDE_STEPS of them beside keys
    that log steps, else MIN_ROWS_NO_STEPS."""
    stepped = any(lo != hi for _, lo, hi in seen.values())
    least = MIN_ROWS_BESIDE_STEPS if stepped else MIN_ROWS_NO_STEPS
    return sorted(k for k, (n, lo, hi) in seen.items() if n >= least and lo == hi), stepped


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


def _by_time(r: Rows) -> tuple[np.ndarray, np.ndarray] | None:
    """(times, steps) in time order for a key whose steps only go up with time, else None (a
    resumed run's steps that start again are one kind of step, not two)."""
    order = np.argsort(r[2], kind="stable")
    steps = r[0][order]
    return (r[2][order], steps) if len(steps) and np.all(np.diff(steps) >= 0) else None


def _other_scale(rows: dict[str, Rows]) -> tuple[list[str], list[str]]:
    """The keys logged against optimizer steps beside keys logged against epochs (a script's
    `log_metric("loss", l, step=global_step)` and `log_metric("val_acc", a, step=epoch)`):
    over the time two keys were both logged, one's steps advance SCALE_FACTOR times the
    other's. Compared over the same time, an uneven pace (a slow first epoch, a pause, a key
    that stops early) moves both alike. (Those keys, the keys the rest are placed on.)"""
    timed = {k: x for k, r in rows.items() if len(r[0]) >= CLOCK_ROWS and (x := _by_time(r))}
    if len(timed) < 2:
        return [], []
    t0 = min(t[0] for t, _ in timed.values())
    span = max(t[-1] for t, _ in timed.values()) - t0
    moved = set()
    for a, (ta, sa) in timed.items():
        for b, (tb, sb) in timed.items():
            lo, hi = max(ta[0], tb[0]), min(ta[-1], tb[-1])
            if a == b or hi - lo < 0.5 * span or span <= 0:
                continue
            steps_a = sa[np.searchsorted(ta, lo) : np.searchsorted(ta, hi, side="right")]
            steps_b = sb[np.searchsorted(tb, lo) : np.searchsorted(tb, hi, side="right")]
            if len(np.unique(steps_b)) < CLOCK_ROWS:
                continue
            if np.ptp(steps_a) >= SCALE_FACTOR * np.ptp(steps_b):
                moved.add(a)
    return sorted(moved), sorted(k for k in timed if k not in moved and not _flat(rows[k][0]))


def _rescaled(rows: dict[str, Rows]) -> Plan | None:
    """`_other_scale`'s keys placed on the steps of the keys it compared them with, each row on
    the step logged next."""
    moved, kept = _other_scale(rows)
    if not moved:
        return None
    clocks = [rows[k] for k in kept]
    top = max(int(rows[k][0].max()) for k in moved)
    low = max(int(r[0].max()) for r in clocks)
    note = (
        f"{_names(moved)} logged on steps up to {top} beside keys logged over the same time on "
        f"steps up to {low}: placed on theirs, each row on the step logged next"
    )
    return moved, *_clock(clocks), note


def _names(keys: list[str]) -> str:
    return ", ".join(keys[:6]) + (f" and {len(keys) - 6} more" if len(keys) > 6 else "")


def _placement(rows: dict[str, Rows], rescale: bool = True) -> Plan | None:
    """(the keys to move, the clock's times and steps, a note) or None when none is to move.

    Beside keys that log steps, the clock is their rows and a key moves when it has
    MIN_ROWS_BESIDE_STEPS rows at its one step. Where no key logs steps, and one has
    MIN_ROWS_NO_STEPS rows, every key moves, by one key's rows counted 0, 1, 2, ... Where
    every key logs steps, and `rescale`, see `_other_scale`."""
    seen = {k: (len(s), int(s.min()), int(s.max())) for k, (s, _, _) in rows.items() if len(s)}
    moved, stepped = _stepless(seen)
    if not moved:
        return _rescaled(rows) if rescale else None
    if stepped:
        clocks = [r for r in rows.values() if len(r[0]) and not _flat(r[0])]
        return moved, *_clock(clocks), _note(rows, moved, "each on the step logged next")
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
    steps = {int(rows[k][0][0]) for k in moved}
    at = f"every row at step {steps.pop()}" if len(steps) == 1 else "each key's rows at one step"
    return f"{_names(moved)} logged without a step ({at}): read in the order logged, {how}"


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
        self._seen: dict[str, tuple[int, int, int]] = {}  # key -> (rows, least, top step)

    def needs_all(self, new: dict[str, Rows]) -> bool:
        """Whether `new` shows a key logged without a step for the first time: the caller then
        reads every row from the start and passes them to `place(..., start=True)`. (Keys on
        another kind of step are placed by `load_history` only: the watcher reads them as
        logged.)"""
        if self.kept is not None:
            return False
        for key, (steps, _, _) in new.items():
            if len(steps):
                n, lo, hi = self._seen.get(key, (0, int(steps[0]), int(steps[0])))
                lo, hi = min(lo, int(steps.min())), max(hi, int(steps.max()))
                self._seen[key] = (n + len(steps), lo, hi)
        return bool(_stepless(self._seen)[0])

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
        plan = _placement(self.kept, rescale=False)
        if plan is None:  # it logs steps after all (a first epoch logged again)
            kept, self.kept, self.note = self.kept, None, None
            return kept, True
        moved, clock_t, clock_s, self.note = plan
        before, placed, again = self._fed, {}, start
        for key, (steps, values, stamps) in self.kept.items():
            if key in moved:
                n = int(np.searchsorted(stamps, clock_t[-1], side="right"))
                steps, values, stamps = (
                    _moved_to(stamps[:n], clock_t, clock_s),
                    values[:n],
                    stamps[:n],
                )
            fed = before.get(key, steps[:0])
            again = again or not np.array_equal(steps[: len(fed)], fed)
            placed[key] = (steps, values, stamps)
        self._fed = {key: rows[0] for key, rows in placed.items()}
        if again:
            return {key: _last_per_step(*rows) for key, rows in placed.items()}, True
        return {
            key: _last_per_step(*(a[len(before.get(key, ())) :] for a in rows))
            for key, rows in placed.items()
        }, False
