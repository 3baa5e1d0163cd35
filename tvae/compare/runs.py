"""The runs of a comparison: what each one is, its grokking events, its history by epoch.

A run's analysis is either the one `analyze` stored on it (tags + report.json, read here in the
shape `AnalysisReport.to_dict` writes) or one made in memory with the default roles and
thresholds, for runs nobody analysed yet.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from tvae import contract as C


@dataclass
class Event:
    """One confirmed grokking event of a run."""

    epoch: int
    severity: str


@dataclass
class RunAnalysis:
    """What the table needs from an analysis, stored on the run or made on the fly."""

    tier: str
    events: list[Event]
    severity: str
    source: str  # "stored" or "on the fly"


@dataclass
class ComparedRun:
    """One run in a comparison: identity, history (index = epoch) and its analysis."""

    run_id: str
    name: str
    status: str
    wall_s: float
    history: pd.DataFrame
    analysis: RunAnalysis
    label: str = ""
    config: str = ""  # readable name of the config it shares with other seeds' runs


Analyzer = Callable[[pd.DataFrame, pd.DataFrame, str], Any]


def analyze_in_memory(history: pd.DataFrame, system: pd.DataFrame, status: str) -> Any:
    """Default-role, default-threshold analysis of a history; writes nothing anywhere."""
    from tvae.analysis import Roles, analyze

    return analyze(history, Roles(), None, system=system, run_status=status)


def analysis_from_report(report: Any) -> RunAnalysis:
    """RunAnalysis of an in-memory `tvae.analysis` report (an analysis made on the fly)."""
    tags = report.tags()
    events = [
        Event(int(c.breakthrough_epoch), str(getattr(c.severity, "value", c.severity)))
        for c in report.confirmed
    ]
    return RunAnalysis(
        tier=str(tags.get(C.TIER, getattr(report.tier, "name", report.tier))),
        events=events,
        severity=str(tags.get(C.GROKKING_SEVERITY, "none")),
        source="on the fly",
    )


def events_from_report_dict(data: Any) -> list[Event] | None:
    """Confirmed events of a stored report.json (`AnalysisReport.to_dict`), None if not one."""
    candidates = data.get("candidates") if isinstance(data, dict) else None
    if not isinstance(candidates, list):
        return None
    return [
        Event(int(c["breakthrough_epoch"]), str(c["severity"]))
        for c in candidates
        if c.get("verdict") == "confirmed"
    ]


def analysis_from_tags(tags: Mapping[str, str], report: Any = None) -> RunAnalysis:
    """RunAnalysis from the tags `analyze` wrote, with every event's epoch from its report
    (a dict, when readable); without one the tags tell only the first event."""
    severity = tags.get(C.GROKKING_SEVERITY, "none")
    events = events_from_report_dict(report)
    if events is None:
        first = tags.get(C.GROKKING_FIRST_EPOCH)
        events = [Event(int(float(first)), severity)] if first not in (None, "") else []
    return RunAnalysis(tier=tags[C.TIER], events=events, severity=severity, source="stored")


def assign_labels(compared: Sequence[ComparedRun]) -> None:
    """Run names, made unique with a short id where two runs share a name."""
    names = [c.name or c.run_id[:8] for c in compared]
    for item, name in zip(compared, names, strict=True):
        item.label = name if names.count(name) == 1 else f"{name} ({item.run_id[:6]})"


def align_by_epoch(compared: Sequence[ComparedRun], key: str) -> pd.DataFrame:
    """One column per run (its label), indexed by the union of epochs; NaN where not logged."""
    columns = {c.label: c.history[key] for c in compared if key in c.history.columns}
    if not columns:
        return pd.DataFrame(index=pd.Index([], dtype=np.int64, name="epoch"))
    frame = pd.concat(columns, axis=1).sort_index()
    frame.index.name = "epoch"
    return frame
