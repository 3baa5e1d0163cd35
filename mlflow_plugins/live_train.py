"""Grokking live while our own trainer trains: a `TrainLogger` callback over the epochs it
already has (no polling), with the detector and tags of `watch` (`tvae.analysis.live`).

Each epoch's metrics go into a `LiveDetector` (on a resume, after the run's logged history);
a state that the tags no longer say is written as `grokking.live.*` tags and one printed line.
With `train.stop_after_grokking` = K, the trainer is asked to stop K epochs after the epoch at
which an event was first confirmed live; it ends FINISHED with the reason in `train.stop_reason`.
At the end of training the whole history is judged once more (what `analyze` will say).
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import pandas as pd

from tvae import contract as C
from tvae.analysis.confounds import logged_rows
from tvae.analysis.live import LiveDetector
from tvae.analysis.live_state import LiveState, fmt_epoch
from tvae.analysis.roles import Roles
from tvae.callbacks import TrainLogger

#: Writes tags onto the run (set, delete), in order with the run's metrics.
TagWriter = Callable[[dict[str, str], list[str]], None]


class LiveTrainFollower(TrainLogger):
    """The live detector as a training callback; see the module docstring."""

    def __init__(
        self,
        write: TagWriter,
        stop: Callable[[str], None] | None = None,
        stop_after: int | None = None,
        history: pd.DataFrame | None = None,
        echo: Callable[[str], None] | None = None,
        roles: Roles | None = None,
    ) -> None:
        self.detector = LiveDetector(roles)  # default: TernaryVAE's own roles
        self.write, self.stop, self.stop_after = write, stop, stop_after
        self.echo = echo or (lambda line: print(line, file=sys.stderr, flush=True))
        self.written: dict[str, str] = {}
        self.reported: LiveState | None = None
        self.confirmed_at: int | None = None  # the epoch an event was first confirmed live
        self.stop_reason: str | None = None
        #: called after each epoch's judgement with (epoch, metrics, state), e.g. a sweep's
        #: pruning reporter
        self.listeners: list[Callable[[int, dict[str, float], LiveState], None]] = []
        for key in history.columns if history is not None else ():
            rows = logged_rows(history, key)
            self.detector.add(key, rows.index.to_numpy(), rows.to_numpy())

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        self.detector.add_epoch(epoch, metrics)
        state = self.detector.update()
        for listen in self.listeners:
            listen(epoch, metrics, state)
        if state.seen_at_step is None:
            return  # too few epochs to judge yet
        self._publish(state)
        if not state.events:
            self.confirmed_at = None  # withdrawn (or never confirmed)
        elif self.confirmed_at is None:
            self.confirmed_at = epoch
        k = self.stop_after
        if k is None or self.confirmed_at is None or self.stop_reason or self.stop is None:
            return
        if epoch >= self.confirmed_at + k:
            self.stop_reason = (
                f"grokking confirmed live at epoch {self.confirmed_at} (event at epoch "
                f"{fmt_epoch(state.first_epoch)}); stopped {k} epochs later "
                "(train.stop_after_grokking)"
            )
            self.write({C.STOP_REASON: self.stop_reason}, [])
            self.stop(self.stop_reason)

    def on_train_end(self, status: str, summary: dict) -> None:
        """The last judgement on the whole history, written while the run is still RUNNING."""
        if self.detector.rows:
            self._publish(self.detector.update(ended=True))

    def _publish(self, state: LiveState) -> None:
        update = state.tag_update(self.written)
        if update is not None:
            self.write(*update)
            self.written = dict(update[0])
        if self.reported is None or self.reported.change_key() != state.change_key():
            self.reported = state
            self.echo(f"grokking live: {state.line()}")
