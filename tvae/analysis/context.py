"""What every candidate of one run is judged against, built once per run."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd

from tvae.analysis.confounds import ControlChange
from tvae.analysis.roles import Roles
from tvae.analysis.series import as_loss, denoised_loss
from tvae.analysis.thresholds import Thresholds
from tvae.analysis.transitions import Metric


@dataclass(frozen=True)
class RunContext:
    """One run's history, roles, thresholds, scheduled changes and NaN/Inf stretches."""

    history: pd.DataFrame
    roles: Roles
    present: frozenset[str]
    t: Thresholds
    controls: tuple[ControlChange, ...]
    nonfinite: dict[str, list[tuple[float, float]]]
    _metrics: dict[str, Metric] = field(default_factory=dict, compare=False, repr=False)
    _fits: dict[tuple[float, float], float | None] = field(
        default_factory=dict, compare=False, repr=False
    )
    _losses: dict[float, np.ndarray] = field(default_factory=dict, compare=False, repr=False)

    def has(self, role: str) -> bool:
        key = getattr(self.roles, role)
        return bool(key) and key in self.present

    def metric(self, role: str) -> Metric:
        """The role's metric, oriented higher-is-better (loaded once per run)."""
        if role not in self._metrics:
            self._metrics[role] = Metric.load(self.history, role, getattr(self.roles, role))
        return self._metrics[role]

    @cached_property
    def train_loss(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The training loss (epochs, values), or None when the run logs none."""
        if not self.has("loss"):
            return None
        m = self.metric("loss")
        return (m.e, m.raw) if len(m.raw) >= 2 else None

    def loss_to(self, b: float) -> np.ndarray:
        """The training loss's values up to epoch ``b``, read through `denoised_loss` over
        those rows only: a run followed live reads them as the finished run does."""
        if b not in self._losses:
            e, v = self.train_loss
            self._losses[b] = denoised_loss(v[e <= b])
        return self._losses[b]

    @cached_property
    def first_epoch(self) -> float:
        return float(self.history.index[0])

    @cached_property
    def log_interval(self) -> float:
        """Typical epochs between logged rows (1 for per-epoch logging)."""
        e = self.history.index.to_numpy(dtype=float)
        return float(np.median(np.diff(e))) if len(e) > 1 else 1.0

    def elapsed(self, epoch: float) -> float:
        """Epochs trained by the end of ``epoch``, counted from the first logged row."""
        return epoch - self.first_epoch + self.log_interval

    def loss_drop(self, a: float, b: float) -> tuple[float, float | None]:
        """(training loss at the start, its median over the second half of [a, b])."""
        e, raw = self.train_loss
        v = self.loss_to(b)
        start = float(np.max(v[: max(3, len(raw) // 50)]))
        sel = e[: len(v)] >= a + 0.5 * (b - a)
        return start, (float(np.median(v[sel])) if sel.any() else None)

    @cached_property
    def gap_fit(self) -> float | None:
        """First epoch the training loss is `delay.fit_gap`-fold below the validation loss:
        the training set is memorised beyond what generalises (None without both losses); the
        training loss read through `denoised_loss`, so one low row of a scattered one is not it.
        Read on the rows that hold both; when most validation rows hold no training loss (a
        run that logs its evaluation at steps of its own), against the validation loss last
        logged, carried no further than the usual interval between evaluations."""
        if self.train_loss is None or not self.has("val_loss"):
            return None
        e, train = self.train_loss
        both = np.column_stack(
            [
                pd.Series(denoised_loss(train), index=e).reindex(self.history.index).to_numpy(),
                as_loss(self.history[self.roles.val_loss]),
            ]
        )
        evals = np.flatnonzero(np.isfinite(both[:, 1]))
        if len(evals) and np.isfinite(both[evals, 0]).mean() < 0.5:
            every = int(np.median(np.diff(evals))) if len(evals) > 1 else 1
            val = pd.Series(np.where(np.isfinite(both[:, 1]), both[:, 1], np.nan))
            both[:, 1] = val.ffill(limit=every).to_numpy()
        ok = np.all(np.isfinite(both), axis=1)
        epochs = self.history.index.to_numpy(dtype=float)[ok]
        hit = np.nonzero(both[ok, 0] * self.t.delay.fit_gap <= both[ok, 1])[0]
        return float(epochs[hit[0]]) if len(hit) else None

    def fit_epoch(self, a: float, b: float) -> float | None:
        """The epoch the training set was fitted, for a plateau [a, b]: where the training
        loss falls `delay.fit_gap`-fold below the validation loss when both are logged, else
        where it came within `delay.fit_frac` of its drop from the start to its level on the
        plateau. None without a training loss, or when it did not fall `delay.min_drop`-fold;
        with both losses logged and no such gap, also when it fell `delay.min_drop`-fold more
        over the plateau's second half (it had not settled on a floor, such as label
        smoothing's: the two fell together, as in a run stopped early once it generalised).
        Only rows up to the plateau's end count (read through `loss_to`), so a run followed
        live is judged alike.
        Each criterion and the score ask for it; it is worked out once per plateau."""
        if (a, b) not in self._fits:
            self._fits[a, b] = self._fit_epoch(a, b)
        return self._fits[a, b]

    def _fit_epoch(self, a: float, b: float) -> float | None:
        if self.gap_fit is not None:
            return self.gap_fit
        if self.train_loss is None:
            return None
        start, level = self.loss_drop(a, b)
        if level is None or not start >= self.t.delay.min_drop * level:
            return None
        e, raw = self.train_loss
        v = self.loss_to(b)
        both_logged = self.has("val_loss") and len(self.metric("val_loss").raw) >= 2
        late = v[e[: len(v)] >= a + 0.5 * (b - a)]  # the rows `level` is the median of
        k = max(1, min(5, len(late) // 4))  # each end's rows, a median against one noisy row
        if both_logged and np.median(late[:k]) >= self.t.delay.min_drop * np.median(late[-k:]):
            return None  # no gap, and no floor either: still falling over the plateau
        v = np.concatenate([v, raw[len(v) :]])  # after the plateau, as logged
        reached = np.nonzero(v <= level + self.t.delay.fit_frac * (start - level))[0]
        return float(e[reached[0]]) if len(reached) else None
