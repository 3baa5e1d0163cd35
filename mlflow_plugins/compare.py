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
from mlflow_plugins.analysis_writer import COMPARE_RUN_TAG, REPORT_FILE, tool_run
from mlflow_plugins.history import load_history
from tvae import contract as C
from tvae.compare import (
    KEY_METRICS,
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

ARTIFACT_DIR = "compare"
TAG_COUNT = "compare.count"
REPORT_PATH = f"{ANALYSIS_DIR}/{REPORT_FILE}"
COMPARED_KEYS = tuple(key for key, _, _ in KEY_METRICS)
# MLflow error codes that blame the input (unknown id, bad filter), not a failing store.
_BAD_INPUT = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "BAD_REQUEST", "NOT_FOUND")


class CompareError(ValueError):
    """Bad selection or input; the message is one line saying what is wrong."""


@dataclass
class Selection:
    """The runs to compare, and the runs a search found that log none of the compared
    metrics (left out, and named to the user)."""

    runs: list[Run]
    skipped: list[Run] = field(default_factory=list)

    def skipped_line(self) -> str:
        """One line naming the skipped runs (the first ten)."""
        names = [f"{r.info.run_name or '?'} ({r.info.run_id})" for r in self.skipped[:10]]
        more = f" and {len(self.skipped) - 10} more" if len(self.skipped) > 10 else ""
        keys = ", ".join(COMPARED_KEYS)
        return (
            f"skipped {len(self.skipped)} run(s) that log none of {keys}: {', '.join(names)}{more}"
        )


@dataclass
class CompareResult:
    """What a comparison produced: the table, the ranking text and where it was logged."""

    table: pd.DataFrame
    ranking: list[str]
    compare_run_id: str | None = None
    artifacts: list[str] = field(default_factory=list)


def _comparable(run: Run) -> bool:
    return any(key in run.data.metrics for key in COMPARED_KEYS)


def _get_runs(client: MlflowClient, run_ids: Sequence[str]) -> list[Run]:
    """The named runs; each must exist and log a compared metric (the user asked for it)."""
    runs, unknown = [], []
    for run_id in run_ids:
        try:
            run = client.get_run(run_id)
        except MlflowException as err:
            if err.error_code not in _BAD_INPUT:
                raise  # the store itself failed (e.g. server unreachable): not the id's fault
            unknown.append(run_id)
            continue
        if run.info.lifecycle_stage == "deleted":
            unknown.append(f"{run_id} (deleted)")
            continue
        runs.append(run)
    if unknown:
        raise CompareError(f"--runs: unknown run id(s): {', '.join(unknown)}")
    lacking = [f"{r.info.run_id} (experiment {r.info.experiment_id})" for r in runs
               if not _comparable(r)]  # fmt: skip
    if lacking:
        keys = ", ".join(COMPARED_KEYS)
        raise CompareError(f"--runs: run(s) log none of {keys}: {', '.join(lacking)}")
    return runs


def _search(client: MlflowClient, experiment_ids: list[str], filter_string: str) -> list[Run]:
    order = ["attributes.start_time ASC"]
    try:
        runs = client.search_runs(experiment_ids, filter_string, max_results=50_000, order_by=order)
        return list(runs)  # ACTIVE_ONLY (the default): deleted runs are not compared
    except MlflowException as err:
        if err.error_code not in _BAD_INPUT:
            raise  # the store failed, the filter may be fine
        first = str(err.message).splitlines()[0] if err.message else "invalid"
        raise CompareError(f"--filter: {first}") from None


def _experiment_id(client: MlflowClient, name: str) -> str:
    """The active experiment called `name` ("Default" too: `mlflow run` puts runs there)."""
    exp = client.get_experiment_by_name(name)
    if exp is None or exp.lifecycle_stage == "deleted":
        raise CompareError(f"--experiment: no experiment named '{name}'")
    return exp.experiment_id


def select_runs(
    client: MlflowClient,
    run_ids: Sequence[str] | None = None,
    experiment: str | None = None,
    filter_string: str | None = None,
) -> Selection:
    """The runs to compare: given ids, or an experiment's training runs, narrowed by a filter.

    With ids and a filter, the filter narrows the ids. With only a filter, every active
    experiment is searched. A search leaves out this tool's own runs (analyze, compare,
    promote) and skips the runs that log none of the compared metrics.
    """
    filter_string = (filter_string or "").strip()
    if run_ids and experiment:
        raise CompareError("give --runs or --experiment, not both")
    if run_ids:
        runs = _get_runs(client, run_ids)
        if filter_string:
            experiments = sorted({r.info.experiment_id for r in runs})
            keep = {r.info.run_id for r in _search(client, experiments, filter_string)}
            runs = [r for r in runs if r.info.run_id in keep]
        found = Selection(runs)
    elif experiment or filter_string:
        if experiment:
            ids = [_experiment_id(client, experiment)]
        else:
            ids = [e.experiment_id for e in client.search_experiments()]
        candidates = [r for r in _search(client, ids, filter_string) if not tool_run(r.data.tags)]
        found = Selection(
            [r for r in candidates if _comparable(r)],
            [r for r in candidates if not _comparable(r)],
        )
    else:
        raise CompareError("nothing to compare: give --runs, --experiment or --filter")
    if not found.runs:
        where = f" in experiment '{experiment}'" if experiment else ""
        how = f' matching filter "{filter_string}"' if filter_string else ""
        why = f"; {found.skipped_line()}" if found.skipped else ""
        raise CompareError(f"no training runs{where}{how}{why}")
    return found


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
        compared.append(
            ComparedRun(i.run_id, i.run_name, i.status, _wall_s(run), history, analysis)
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
