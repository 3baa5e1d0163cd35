"""The live grokking state of a run that is still training: what the live detector says
(`tvae.analysis.live_assess` decides it), as tags on the run and as one line. No MLflow here."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from tvae import contract as C


def fmt_epoch(x: float | None) -> str:
    """An epoch as the tags and lines write it (``1500``, ``12.5``)."""
    if x is None:
        return ""
    return f"{int(x)}" if float(x).is_integer() else f"{x:g}"


@dataclass(frozen=True)
class LiveState:
    """What the live detector says about a run so far."""

    state: str = "none"  # one of tvae.contract.LIVE_STATES
    first_epoch: float | None = None  # the first confirmed event's (breakthrough) epoch
    since: float | None = None  # epoch the current state began: plateau start, onset, event
    severity: str = "none"  # strongest confirmed severity
    confidence: float = 0.0  # the detector's run-level score on the history so far
    events: int = 0  # confirmed events on the history so far
    seen_at_step: int | None = None  # the history's last step when this was decided
    withdrawn: bool = False  # a breakthrough (or an event) raised before was taken back
    withdrawn_reason: str | None = None  # what was withdrawn, when, and the detector's reason
    detail: str = ""  # the state in one human line
    metric: str | None = None  # the metric the state is about
    event_epochs: tuple[float, ...] = ()  # every confirmed event's breakthrough epoch
    event_rises: tuple[tuple[float, float], ...] = ()  # and its rise: (plateau end, rise end)
    due: float | None = None  # breakthrough: the step by which it is confirmed if it holds
    waits_for: str | None = None  # breakthrough: "sustain", or "schedule" (`_schedule_hold`)

    def change_key(self) -> tuple:
        """What makes a new state worth a line and a notification: the state, the number of
        events, a withdrawal, what a breakthrough waits for. (A refined epoch or severity only
        refreshes the tags.)"""
        return (self.state, self.events, self.withdrawn_reason, self.waits_for)

    def tags(self) -> dict[str, str]:
        """The `grokking.live.*` tags for this state (absent keys: the caller deletes them)."""
        tags = {
            C.GROKKING_LIVE_STATE: self.state,
            C.GROKKING_LIVE_EVENTS: str(self.events),
            C.GROKKING_LIVE_SEVERITY: self.severity,
            C.GROKKING_LIVE_CONFIDENCE: f"{self.confidence:.3f}",
            C.GROKKING_LIVE_DETAIL: self.detail,
        }
        if self.seen_at_step is not None:
            tags[C.GROKKING_LIVE_SEEN_AT_STEP] = str(self.seen_at_step)
        if self.first_epoch is not None:
            tags[C.GROKKING_LIVE_FIRST_EPOCH] = fmt_epoch(self.first_epoch)
        if self.since is not None:
            tags[C.GROKKING_LIVE_SINCE] = fmt_epoch(self.since)
        if self.withdrawn_reason:
            tags[C.GROKKING_LIVE_WITHDRAWN] = self.withdrawn_reason
        return tags

    def tag_update(self, written: Mapping[str, str]) -> tuple[dict[str, str], list[str]] | None:
        """(tags to set, tags to delete) when the tags ``written`` before no longer say this
        state; None when they differ only in the values that move with every judgement
        (confidence, step, detail: refreshed with the others, not on their own)."""
        tags = self.tags()
        volatile = (C.GROKKING_LIVE_CONFIDENCE, C.GROKKING_LIVE_SEEN_AT_STEP)
        volatile += (C.GROKKING_LIVE_DETAIL,)
        stale = [k for k in written if k not in tags]
        if stale or any(written.get(k) != v for k, v in tags.items() if k not in volatile):
            return tags, stale
        return None

    def line(self) -> str:
        """The state as one line (no run name): what a watcher prints on a change."""
        text = f"{self.state} at step {self.seen_at_step}: {self.detail}"
        if self.withdrawn_reason and self.state not in ("breakthrough", "confirmed"):
            text += f" [withdrawn: {self.withdrawn_reason}]"
        return text
