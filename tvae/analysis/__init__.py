"""Analysis engine: grokking events, confounds, phases, tiers and checks over a metric history.

Pure functions over a pandas DataFrame (index = epoch, one column per metric key); no MLflow.
"""

from tvae.analysis.engine import analyze
from tvae.analysis.grokking import Candidate
from tvae.analysis.phases import Phase
from tvae.analysis.report import AnalysisReport
from tvae.analysis.roles import Roles
from tvae.analysis.thresholds import Thresholds, load_thresholds
from tvae.analysis.tiers import TIER_ORDER, TierResult, judge_tier

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
