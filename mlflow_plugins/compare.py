"""Compare training runs stored in MLflow: select them, load them, log the comparison.

`tvae.compare` makes the table, ranking, HTML and plots (no MLflow); this module picks the runs,
loads each one's history and analysis (stored, else made in memory), and logs the result to a
compare run of its own. The compared runs are only read, never written.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.entities import Run, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mlflow_plugins.analysis_writer import ARTIFACT_DIR as ANALYSIS_DIR
from mlflow_plugins.analysis_writer import COMPARE_RUN_TAG, REPORT_FILE
from mlflow_plugins.history import load_history
from tvae import contract as C
from tvae.compare import (
    Analyzer,
    ComparedRun,
    RunAnalysis,
    analysis_from_report,
    analysis_from_tags,
    analyze_in_memory,
    assign_labels,
    build_table,
    ranking_lines,
)
from tvae.compare.groups import config_key

ARTIFACT_DIR = "compare"
TAG_COUNT = "compare.count"
REPORT_PATH = f"{ANALYSIS_DIR}/{REPORT_FILE}"


@dataclass
class CompareResult:
    """What a comparison produced: the table, the ranking text and where it was logged."""

    table: pd.DataFrame
    ranking: list[str]
    compare_run_id: str | None = None
    artifacts: list[str] = field(default_factory=list)


def stored_analysis(client: MlflowClient, run: Run) -> RunAnalysis:
    """The analysis `analyze` stored on the run: its tags, and report.json for every event."""
    report: Any = None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = client.download_artifacts(run.info.run_id, REPORT_PATH, tmp)
            report = json.loads(Path(path).read_text())
    except (MlflowException, OSError, ValueError):
        report = None  # no readable report: the tags alone
    return analysis_from_tags(run.data.tags, report)


def _wall_s(run: Run) -> float:
    start, end = run.info.start_time, run.info.end_time
    return (end - start) / 1000.0 if start and end else float("nan")


def load_compared_runs(
    client: MlflowClient, runs: Sequence[Run], analyzer: Analyzer = analyze_in_memory
) -> list[ComparedRun]:
    """Pull every run's history and its analysis (stored, else made in memory)."""
    compared = []
    for run in runs:
        history, system = load_history(client, run.info.run_id)
        if C.TIER in run.data.tags:
            analysis = stored_analysis(client, run)
        else:
            analysis = analysis_from_report(analyzer(history, system, run.info.status))
        i = run.info
        config = config_key(i.run_name, run.data.params, run.data.tags)[1]
        compared.append(
            ComparedRun(i.run_id, i.run_name, i.status, _wall_s(run), history, analysis, "", config)
        )
    assign_labels(compared)
    return compared


def _target(runs: Sequence[Run]) -> dict[str, Any]:
    """start_run arguments: the runs' experiment when they share one, unless the environment
    (`mlflow run`, MLFLOW_EXPERIMENT_*) already says where the compare run goes."""
    kwargs: dict[str, Any] = {"run_name": f"compare-{len(runs)}-runs"}
    env = ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID")
    experiments = {r.info.experiment_id for r in runs}
    if not any(os.environ.get(k) for k in env) and len(experiments) == 1:
        kwargs["experiment_id"] = experiments.pop()
    return kwargs


def compare_runs(
    client: MlflowClient,
    runs: Sequence[Run],
    *,
    analyzer: Analyzer = analyze_in_memory,
    log: bool = True,
) -> CompareResult:
    """Compare `runs`; with log=True store everything on a new (or `mlflow run`'s) compare run.

    The compare run is logged through the fluent API, i.e. to the current tracking URI, which
    the CLI makes the same as `client`'s.
    """
    compared = load_compared_runs(client, runs, analyzer)
    table = build_table(compared)
    result = CompareResult(table=table, ranking=ranking_lines(table))
    if not log:
        return result
    import mlflow

    from tvae.compare.plots import write_comparison

    with tempfile.TemporaryDirectory() as tmp:
        names = write_comparison(compared, table, Path(tmp) / ARTIFACT_DIR)
        with mlflow.start_run(**_target(runs)) as own:
            ids = ",".join(c.run_id for c in compared)
            client.log_batch(
                own.info.run_id,
                tags=[RunTag(COMPARE_RUN_TAG, ids[:5000]), RunTag(TAG_COUNT, str(len(compared)))],
            )
            client.log_artifacts(own.info.run_id, str(Path(tmp) / ARTIFACT_DIR), ARTIFACT_DIR)
            result.compare_run_id = own.info.run_id
            result.artifacts = [f"{ARTIFACT_DIR}/{name}" for name in names]
    return result
