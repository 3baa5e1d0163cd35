"""Analysis engine: grokking events, confounds, phases, tiers and checks over a metric history.

Pure functions over a pandas DataFrame (index = epoch, one column per metric key); no MLflow.
Names load on first use (PEP 562), so `tvae.analysis.tiers` alone (the trainer picks its best
checkpoint by tier) does not import pandas, scipy and ruptures (~1 s).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_WHERE = {
    "analyze": "engine",
    "Candidate": "grokking",
    "Phase": "phases",
    "AnalysisReport": "report",
    "Roles": "roles",
    "Thresholds": "thresholds",
    "load_thresholds": "thresholds",
    "TIER_ORDER": "tiers",
    "TierResult": "tiers",
    "judge_tier": "tiers",
}
__all__ = [
    "TIER_ORDER",
    "AnalysisReport",
    "Candidate",
    "Phase",
    "Roles",
    "Thresholds",
    "TierResult",
    "analyze",
    "judge_tier",
    "load_thresholds",
]

if TYPE_CHECKING:
    from tvae.analysis.engine import analyze
    from tvae.analysis.grokking import Candidate
    from tvae.analysis.phases import Phase
    from tvae.analysis.report import AnalysisReport
    from tvae.analysis.roles import Roles
    from tvae.analysis.thresholds import Thresholds, load_thresholds
    from tvae.analysis.tiers import TIER_ORDER, TierResult, judge_tier


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'tvae.analysis' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"tvae.analysis.{_WHERE[name]}"), name)
    globals()[name] = value
    return value
