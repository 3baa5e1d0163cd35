"""Following a run that is still training: `LiveDetector` keeps its `LiveState` as rows arrive.

Rows come from a watcher's polls or an in-training callback's epochs; appending costs O(new
rows), and the detector (`live_assess.assess`, O(history)) runs again only when something can have
changed. No MLflow here.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd

from tvae import contract as C
from tvae.analysis.confounds import history_frame
from tvae.analysis.live_assess import TAIL_ROWS, Assessment, assess
from tvae.analysis.live_state import LiveState
from tvae.analysis.roles import DIRECTION, GENERALISATION_ROLES, LOG_ROLES, Roles
from tvae.analysis.thresholds import Thresholds
from tvae.analysis.units import loss_values

#: Re-run the whole detector once the history has grown by this share since its last run, even
#: with nothing moving: the triggers (`LiveDetector`) catch events; this bounds how stale the
#: rest (a control change after an event, the noise level) gets, at ~6 runs per 10x growth.
PERIODIC_FRAC = 0.5
#: ... and never more often than every this many rows (the first run waits for as many): the
#: detector needs a few rows (3- and 7-point medians, `plateau.candidate_min_epochs` = 5).
PERIODIC_MIN_ROWS = 10
#: Keys with at least this share of the longest key's rows count as logged every row (the
#: density `nonfinite_stretches` reads a frame by when no reader says which NaN were logged).
DENSE_FRAC = 0.9


class _Column:
    """One key's rows in growable arrays: appending costs O(new rows), amortised."""

    __slots__ = ("steps", "values", "n", "ordered")

    def __init__(self) -> None:
        self.steps = np.empty(256, np.int64)
        self.values = np.empty(256, np.float64)
        self.n = 0
        self.ordered = True  # steps strictly increasing so far

    def extend(self, steps: np.ndarray, values: np.ndarray) -> None:
        k = len(steps)
        if not k:
            return
        need = self.n + k
        if need > len(self.steps):
            cap = max(need, 2 * len(self.steps))
            self.steps = np.resize(self.steps, cap)
            self.values = np.resize(self.values, cap)
        if self.n and steps[0] <= self.steps[self.n - 1] or np.any(np.diff(steps) <= 0):
            self.ordered = False
        self.steps[self.n : need] = steps
        self.values[self.n : need] = values
        self.n = need

    def series(self) -> pd.Series:
        steps, values = self.steps[: self.n], self.values[: self.n]
        if not self.ordered:  # a step logged again: its last value wins, as in the store's reads
            order = np.argsort(steps, kind="stable")
            steps, values = steps[order], values[order]
            last = np.append(steps[1:] != steps[:-1], True)
            steps, values = steps[last], values[last]
        return pd.Series(values, index=steps, copy=True)


def _orientation(roles: Roles) -> dict[str, str]:
    """Generalisation metric key -> its role (how its moves are read)."""
    return {k: r for r in GENERALISATION_ROLES if (k := getattr(roles, r)) is not None}


class LiveDetector:
    """Follows one run's growing history and keeps its `LiveState`.

    Feed rows with `add` (or `add_epoch`), then call `update` (once per poll or epoch); it runs
    the detector only when something can have changed, and returns the current state:

    - a generalisation metric moved: the median of its last `TAIL_ROWS` finite values left the
      flat tolerance around its level at the last run (checked on the new rows only). An
      unproductive move (no change of state, no breakthrough) doubles how many rows the next
      one waits for, so a noisy metric cannot make every poll pay for a run; except a move
      the generalising way out of a plateau: a slow climb's end can come at any row, and its
      confirmation is due a sustain period later, so the wait does not grow;
    - a breakthrough's sustain period is over (its `due` step was reached): the confirmation is
      decided at the first update after the data that confirms it;
    - in state ``none``, the metric has been still for ``plateau.min_epochs`` x 1, 2, 4, ...
      epochs (a plateau may have formed, or the training fitted meanwhile);
    - the history grew by `PERIODIC_FRAC` (at least `PERIODIC_MIN_ROWS` rows) since the last run;
    - the run ended (``update(ended=True)``): one last run on everything.

    ``analyses`` and ``cpu_seconds`` (thread CPU time spent in the detector) say what it cost.
    """

    def __init__(self, roles: Roles | None = None, thresholds: Thresholds | None = None) -> None:
        self.roles = roles or Roles()
        self.t = thresholds or Thresholds()
        self.state = LiveState()
        self.assessment: Assessment | None = None
        self.analyses = 0
        self.cpu_seconds = 0.0
        self.reasons: list[str] = []  # why each run of the detector happened
        self._cols: dict[str, _Column] = {}
        self._frame: pd.DataFrame | None = None
        self._rows = 0  # rows of the longest column (epochs logged, for per-epoch logging)
        self._last_step: int | None = None
        self._analysed_rows = 0
        self._tails: dict[str, deque] = {}
        self._refs: dict[str, tuple[float, float]] = {}  # key -> (level at last run, band)
        self._moved = False
        self._rose = False  # a move since the last run went the generalising way
        self._move_wait = 1  # rows a move waits for since the last run (doubles when idle)
        self._quiet_since: int | None = None
        self._quiet_mark = float(self.t.plateau.min_epochs)
        self._orient = _orientation(self.roles)

    # -- feeding rows ---------------------------------------------------------------------
    @property
    def rows(self) -> int:
        return self._rows

    @property
    def last_step(self) -> int | None:
        return self._last_step

    def add(self, key: str, steps: Iterable[int], values: Iterable[float]) -> None:
        """New rows of one metric key (steps ascending; a step again: its last value wins)."""
        if str(key).startswith(C.SYSTEM_PREFIX):
            return
        steps = np.asarray(steps, dtype=np.int64)
        values = np.asarray(values, dtype=np.float64)
        if not len(steps):
            return
        col = self._cols.setdefault(key, _Column())
        col.extend(steps, values)
        self._frame = None
        self._rows = max(self._rows, col.n)
        top = int(steps.max())
        self._last_step = top if self._last_step is None else max(self._last_step, top)
        if self._quiet_since is None:
            self._quiet_since = int(steps.min())
        if key in self._orient:
            self._watch(key, values, top)

    @property
    def keys(self) -> list[str]:
        """The metric keys logged so far."""
        return [k for k, c in self._cols.items() if c.n]

    def remap(self, roles: Roles) -> None:
        """Read the rows so far, and those to come, with ``roles`` (a watcher that learns a
        run's roles from its key names once they are logged); the next update with new rows
        runs the detector."""
        self.roles = roles
        self._orient = _orientation(roles)
        self._tails.clear()
        self._refs.clear()
        for key in self._orient:
            col = self._cols.get(key)
            if col is not None and col.n:
                self._watch(key, col.values[: col.n], int(col.steps[col.n - 1]))
        self._moved, self._move_wait = True, 1

    def add_epoch(self, step: int, metrics: Mapping[str, float]) -> None:
        """One epoch's metrics (an in-training callback's row)."""
        for key, value in metrics.items():
            self.add(key, [step], [value])

    def _watch(self, key: str, values: np.ndarray, step: int) -> None:
        """Keep the tail of a generalisation metric; flag a move away from its last level."""
        role = self._orient[key]
        v = values[np.isfinite(values)]
        if role in LOG_ROLES:
            v = loss_values(key, v)
            v = v[v > 0]
            v = -np.log10(v)
        else:
            v = v * DIRECTION.get(role, 1)
        tail = self._tails.setdefault(key, deque(maxlen=TAIL_ROWS))
        tail.extend(v[-TAIL_ROWS:].tolist())
        ref = self._refs.get(key)
        if ref is None or not tail:
            return
        shift = float(np.median(tail)) - ref[0]
        if abs(shift) >= ref[1]:
            self._moved = True
            self._rose = self._rose or shift > 0
            self._quiet_since = step
            self._quiet_mark = float(self.t.plateau.min_epochs)

    def history(self) -> pd.DataFrame:
        """The rows so far as `analyze` takes them (index = step, one column per key)."""
        if self._frame is None:
            self._frame = history_frame({k: c.series() for k, c in self._cols.items() if c.n})
        return self._frame

    def _ready_step(self) -> int:
        """The last step every densely logged key has reached. A read between two keys'
        writes (or a callback mid-epoch) leaves a last row with some keys missing; such rows
        wait for the next update, so a row is judged once, whole, as the final analysis does."""
        dense = [c for c in self._cols.values() if c.n >= DENSE_FRAC * self._rows]
        return min(int(c.steps[: c.n].max()) for c in dense)

    # -- deciding -------------------------------------------------------------------------
    def _why(self, ended: bool) -> str | None:
        if ended:
            return "end"
        if not self._rows:
            return None
        if not self.analyses:
            return "first" if self._rows >= PERIODIC_MIN_ROWS else None
        grown = self._rows - self._analysed_rows
        if grown >= max(PERIODIC_MIN_ROWS, PERIODIC_FRAC * self._analysed_rows):
            return "periodic"
        due = self.state.due
        if due is not None and self._last_step is not None and self._last_step >= due:
            if grown > 0 or self.state.seen_at_step != self._last_step:
                return "due"
        if self._moved and grown >= self._move_wait:
            return "moved"
        if (
            self.state.state == "none"
            and self._refs
            and self._quiet_since is not None
            and self._last_step - self._quiet_since >= self._quiet_mark
        ):
            return "quiet"
        return None

    def update(self, *, ended: bool = False) -> LiveState:
        """Run the detector if something can have changed; the current state either way."""
        why = self._why(ended)
        if why is None:
            return self.state
        started = time.thread_time()
        before = self.state
        history = self.history()
        if not ended:
            history = history.loc[: self._ready_step()]
        a = assess(history, self.roles, self.t, ended=ended, previous=before)
        self.assessment, self.state = a, a.state
        self._analysed_rows = self._rows
        self._refs = {
            k: (float(np.median(self._tails[k])), band)
            for k, band in a.bands.items()
            if self._tails.get(k)
        }
        if why == "moved":
            productive = a.state.change_key() != before.change_key() or a.state.due is not None
            climbing = self._rose and a.state.state == "plateau"
            cap = max(PERIODIC_MIN_ROWS, int(PERIODIC_FRAC * self._rows))
            if productive:
                self._move_wait = 1
            elif not climbing:
                self._move_wait = min(2 * self._move_wait, cap)
        elif why == "quiet":
            self._quiet_mark *= 2
        self._moved = self._rose = False
        self.analyses += 1
        self.reasons.append(why)
        self.cpu_seconds += time.thread_time() - started
        return self.state
