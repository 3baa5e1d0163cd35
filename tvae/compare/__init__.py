"""Put training runs side by side: events per run, a ranked table, HTML and overlay plots.

Pure functions over each run's metric history (a DataFrame, index = epoch) and its analysis;
no MLflow here. `mlflow_plugins.compare` selects and loads the runs and logs the result.
Plots live in `tvae.compare.plots` (imports matplotlib only when asked for).
"""

from tvae.compare.runs import (
    Analyzer,
    ComparedRun,
    Event,
    RunAnalysis,
    align_by_epoch,
    analysis_from_report,
    analysis_from_tags,
    analyze_in_memory,
    assign_labels,
)
from tvae.compare.table import KEY_METRICS, build_table, ranking_lines, table_html

__all__ = [
    "KEY_METRICS",
    "Analyzer",
    "ComparedRun",
    "Event",
    "RunAnalysis",
    "align_by_epoch",
    "analysis_from_report",
    "analysis_from_tags",
    "analyze_in_memory",
    "assign_labels",
    "build_table",
    "ranking_lines",
    "table_html",
]
