"""Compare training runs: select them, line their histories up by epoch, plot, tabulate, rank.

Everything a user needs to answer "which runs grokked, when, and how far did they get" in one
place: an overlay plot per key metric (each run's confirmed grokking events marked), a table
(CSV + a standalone HTML page the MLflow artifact viewer renders) and a short ranking, all
logged to a compare run of its own. The compared runs are only read, never written.

Runs that carry no analysis yet (no `tier` tag) are analysed on the fly, in memory, with the
default roles and thresholds; their table row says so (`analysis` = "on the fly").
"""

from __future__ import annotations

import html
import json
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow.entities import Run, RunTag, ViewType
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mlflow_plugins.analysis_writer import ARTIFACT_DIR as ANALYSIS_DIR
from mlflow_plugins.analysis_writer import COMPARE_RUN_TAG, REPORT_FILE, tool_run
from mlflow_plugins.history import load_history
from tvae import contract as C
from tvae.analysis.tiers import TIER_ORDER

# (metric key, short name, higher is better) for the overlay plots and best/final columns.
KEY_METRICS: tuple[tuple[str, str, bool], ...] = (
    (C.COVERAGE, "coverage", True),
    (C.HIERARCHY_B, "hierarchy_B", False),
    (C.QUALITY, "Q", True),
    (C.TRAIN_LOSS, "loss", False),
)
SAMPLES_KEY = C.SAMPLES_PER_SEC
ARTIFACT_DIR = "compare"
TAG_COUNT = "compare.count"
REPORT_PATH = f"{ANALYSIS_DIR}/{REPORT_FILE}"
# MLflow error codes that blame the input (unknown id, bad filter), not a failing store.
_BAD_INPUT = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "BAD_REQUEST", "NOT_FOUND")


class CompareError(ValueError):
    """Bad selection or input; the message is one line saying what is wrong."""


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
    """One run in a comparison: identity, aligned history and its analysis."""

    run: Run
    history: pd.DataFrame
    analysis: RunAnalysis
    label: str = ""

    @property
    def run_id(self) -> str:
        return self.run.info.run_id


@dataclass
class CompareResult:
    """What a comparison produced: the table, the ranking text and where it was logged."""

    table: pd.DataFrame
    ranking: list[str]
    compare_run_id: str | None = None
    artifacts: list[str] = field(default_factory=list)


# -- selection ---------------------------------------------------------------------------------


def parse_run_ids(text: str | None) -> list[str]:
    """'a, b,,c' -> ['a', 'b', 'c'] keeping order, dropping blanks and repeats."""
    seen: dict[str, None] = {}
    for part in (text or "").split(","):
        if part.strip():
            seen.setdefault(part.strip(), None)
    return list(seen)


def _is_training_run(run: Run) -> bool:
    return bool(run.data.metrics) and tool_run(run.data.tags) is None


def _get_runs(client: MlflowClient, run_ids: Sequence[str]) -> list[Run]:
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
    empty = [r.info.run_id for r in runs if not r.data.metrics]
    if empty:
        raise CompareError(f"--runs: run(s) without metrics cannot be compared: {', '.join(empty)}")
    return runs


def _search(client: MlflowClient, experiment_ids: list[str], filter_string: str) -> list[Run]:
    try:
        return list(
            client.search_runs(
                experiment_ids,
                filter_string=filter_string,
                run_view_type=ViewType.ACTIVE_ONLY,
                max_results=50_000,
                order_by=["attributes.start_time ASC"],
            )
        )
    except MlflowException as err:
        if err.error_code not in _BAD_INPUT:
            raise  # the store failed, the filter may be fine
        first = str(err.message).splitlines()[0] if err.message else "invalid"
        raise CompareError(f"--filter: {first}") from None


def select_runs(
    client: MlflowClient,
    run_ids: Sequence[str] | None = None,
    experiment: str | None = None,
    filter_string: str | None = None,
) -> list[Run]:
    """The runs to compare: given ids, or an experiment's training runs, narrowed by a filter.

    With ids and a filter, the filter narrows the ids. With only a filter, every active
    experiment is searched. Analyze and compare runs found by a search are left out.
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
    elif experiment:
        exp = client.get_experiment_by_name(experiment)
        if exp is None or exp.lifecycle_stage == "deleted":
            raise CompareError(f"--experiment: no experiment named '{experiment}'")
        runs = [
            r for r in _search(client, [exp.experiment_id], filter_string) if _is_training_run(r)
        ]
    elif filter_string:
        experiments = [e.experiment_id for e in client.search_experiments()]
        runs = [r for r in _search(client, experiments, filter_string) if _is_training_run(r)]
    else:
        raise CompareError("nothing to compare: give --runs, --experiment or --filter")
    if not runs:
        where = f" in experiment '{experiment}'" if experiment else ""
        how = f' matching filter "{filter_string}"' if filter_string else ""
        raise CompareError(f"no training runs{where}{how}")
    _check_shared_metrics(runs)
    return runs


def _check_shared_metrics(runs: Sequence[Run]) -> None:
    """Every run must log at least one key metric, or there is nothing to put side by side."""
    keys = {k for k, _, _ in KEY_METRICS}
    lacking = [r for r in runs if not keys & set(r.data.metrics)]
    if lacking:
        names = ", ".join(f"{r.info.run_id} (experiment {r.info.experiment_id})" for r in lacking)
        raise CompareError(
            f"run(s) log none of the compared metrics ({', '.join(sorted(keys))}): {names}"
        )


# -- analysis (stored or on the fly) -----------------------------------------------------------

Analyzer = Callable[[pd.DataFrame, pd.DataFrame, str], Any]


def analyze_in_memory(history: pd.DataFrame, system: pd.DataFrame, status: str) -> Any:
    """Default-role, default-threshold analysis of a history; writes nothing anywhere."""
    from tvae.analysis import Roles, analyze

    return analyze(history, Roles(), None, system=system, run_status=status)


def _events_from_report(report: Any) -> list[Event]:
    return [
        Event(int(c.breakthrough_epoch), str(getattr(c.severity, "value", c.severity)))
        for c in report.confirmed
    ]


def analysis_on_the_fly(report: Any) -> RunAnalysis:
    """RunAnalysis of an in-memory tvae.analysis report."""
    tags = report.tags()
    events = _events_from_report(report)
    return RunAnalysis(
        tier=str(tags.get(C.TIER, getattr(report.tier, "name", report.tier))),
        events=events,
        severity=str(tags.get(C.GROKKING_SEVERITY, "none")),
        source="on the fly",
    )


def _events_from_report_json(data: Any) -> list[Event] | None:
    """Confirmed events of a stored report.json (`AnalysisReport.to_dict`), or None when it is
    not one."""
    candidates = data.get("candidates") if isinstance(data, dict) else None
    if not isinstance(candidates, list):
        return None
    return [
        Event(int(c["breakthrough_epoch"]), str(c["severity"]))
        for c in candidates
        if c.get("verdict") == "confirmed"
    ]


def stored_analysis(client: MlflowClient, run: Run) -> RunAnalysis:
    """RunAnalysis from the tags (and report.json for every event's epoch) the analyzer wrote."""
    tags = run.data.tags
    events: list[Event] | None = None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = client.download_artifacts(run.info.run_id, REPORT_PATH, tmp)
            events = _events_from_report_json(json.loads(Path(path).read_text()))
    except (MlflowException, OSError, ValueError):
        events = None
    severity = tags.get(C.GROKKING_SEVERITY, "none")
    if events is None:  # no readable report: the first event is all the tags tell
        first = tags.get(C.GROKKING_FIRST_EPOCH)
        events = [Event(int(float(first)), severity)] if first not in (None, "") else []
    return RunAnalysis(tier=tags[C.TIER], events=events, severity=severity, source="stored")


# -- history and alignment ---------------------------------------------------------------------


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
            analysis = analysis_on_the_fly(analyzer(history, system, run.info.status))
        compared.append(ComparedRun(run, history, analysis))
    _assign_labels(compared)
    return compared


def _assign_labels(compared: Sequence[ComparedRun]) -> None:
    """Run names, made unique with a short id where two runs share a name."""
    names = [c.run.info.run_name or c.run_id[:8] for c in compared]
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


# -- table and ranking -------------------------------------------------------------------------


def _wall_seconds(run: Run) -> float:
    start, end = run.info.start_time, run.info.end_time
    if not start or not end:
        return math.nan
    return (end - start) / 1000.0


def _row(item: ComparedRun) -> dict[str, Any]:
    history, analysis = item.history, item.analysis
    row: dict[str, Any] = {
        "run": item.label,
        "run_id": item.run_id,
        "status": item.run.info.status,
        "tier": analysis.tier,
        "events": len(analysis.events),
        "event_epochs": ",".join(str(e.epoch) for e in analysis.events),
        "severity": analysis.severity,
        "analysis": analysis.source,
    }
    for key, name, higher in KEY_METRICS:
        series = history[key].dropna() if key in history.columns else pd.Series(dtype=float)
        finite = series[np.isfinite(series.to_numpy(dtype=float))]
        row[f"best_{name}"] = (finite.max() if higher else finite.min()) if len(finite) else np.nan
        row[f"final_{name}"] = series.iloc[-1] if len(series) else np.nan
    row["epochs"] = int(history.index.nunique())
    row["wall_s"] = _wall_seconds(item.run)
    sps = history[SAMPLES_KEY].dropna() if SAMPLES_KEY in history.columns else pd.Series([])
    row["samples_per_s"] = float(sps.mean()) if len(sps) else np.nan
    return row


def _tier_rank(tier: str) -> int:
    return TIER_ORDER.index(tier) if tier in TIER_ORDER else -1


def build_table(compared: Sequence[ComparedRun]) -> pd.DataFrame:
    """One row per run, best first: tier, then best Q, then best hierarchy_B, then events."""
    table = pd.DataFrame([_row(c) for c in compared])
    table["_tier"] = table["tier"].map(_tier_rank)
    table = table.sort_values(
        ["_tier", "best_Q", "best_hierarchy_B", "events"],
        ascending=[False, False, True, False],
        na_position="last",
        kind="stable",
    ).drop(columns="_tier")
    table.insert(0, "rank", range(1, len(table) + 1))
    return table.reset_index(drop=True)


def _fmt(value: Any, digits: int = 4) -> str:
    if isinstance(value, float | np.floating):
        return "-" if math.isnan(value) else f"{value:.{digits}g}"
    return str(value)


def ranking_lines(table: pd.DataFrame) -> list[str]:
    """The short printed ranking: one line per run."""
    lines = []
    for row in table.itertuples(index=False):
        grok = (
            f"{row.events} event(s) at {row.event_epochs} ({row.severity})"
            if row.events
            else "no grokking"
        )
        lines.append(
            f"{row.rank:>2}. {row.run} [{row.tier}] Q={_fmt(row.best_Q)} "
            f"hierarchy_B={_fmt(row.best_hierarchy_B)} coverage={_fmt(row.best_coverage)} "
            f"{grok}; {row.epochs} epochs"
        )
    return lines


_HTML_STYLE = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:16px;color:#1f2328}
table{border-collapse:collapse;font-size:12px}
th,td{border:1px solid #d0d7de;padding:3px 6px;text-align:left;white-space:nowrap}
th{background:#f6f8fa;position:sticky;top:0}
tr:nth-child(even) td{background:#fbfcfd}
.Exceptional{color:#6f42c1;font-weight:600}.Excellent{color:#1a7f37;font-weight:600}
.Good{color:#1a7f37}.Minimal{color:#9a6700}.None{color:#6e7781}
"""


def _html_view(table: pd.DataFrame) -> pd.DataFrame:
    """The table as shown on the page: best and final of a metric share one "best / final" cell."""
    view = table.drop(columns=["run_id"]).copy()
    for _, name, _ in KEY_METRICS:
        best, final = view.pop(f"best_{name}"), view.pop(f"final_{name}")
        view[f"{name} best / final"] = [
            f"{_fmt(b)} / {_fmt(f)}" for b, f in zip(best, final, strict=True)
        ]
    for col in ("epochs", "wall_s", "samples_per_s"):
        view[col] = view.pop(col)
    return view


def table_html(table: pd.DataFrame, title: str) -> str:
    """A standalone HTML page of the table (the MLflow artifact viewer shows it as is)."""
    shown = _html_view(table)
    header = "".join(f"<th>{html.escape(str(c))}</th>" for c in shown.columns)
    body = []
    for _, row in shown.iterrows():
        cells = []
        for col, value in row.items():
            text = html.escape(_fmt(value))
            css = f' class="{html.escape(str(value))}"' if col == "tier" else ""
            cells.append(f"<td{css}>{text}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    ids = "".join(
        f"<li>{html.escape(r)}: <code>{html.escape(i)}</code></li>"
        for r, i in zip(table["run"], table["run_id"], strict=True)
    )
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_HTML_STYLE}</style></head><body>"
        f"<h2>{html.escape(title)}</h2><table><thead><tr>{header}</tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table><h3>Run ids</h3><ul>{ids}</ul></body></html>"
    )


# -- plots -------------------------------------------------------------------------------------


def overlay_figure(compared: Sequence[ComparedRun], key: str, name: str) -> Any:
    """One line per run over epochs; each confirmed grokking event marked on its run's line."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    aligned = align_by_epoch(compared, key)
    fig, ax = plt.subplots(figsize=(10, 5.5), dpi=100)
    cmap = plt.get_cmap("tab20" if len(compared) > 10 else "tab10")
    marked = False
    for i, item in enumerate(compared):
        if item.label not in aligned.columns:
            continue
        series = aligned[item.label].dropna()  # irregular steps still draw one connected line
        if series.empty:
            continue
        color = cmap(i % cmap.N)
        ax.plot(
            series.index,
            series.to_numpy(),
            color=color,
            lw=1.4,
            label=f"{item.label} [{item.analysis.tier}]",
        )
        for event in item.analysis.events:
            at = series.index[series.index <= event.epoch]
            y = series.loc[at[-1]] if len(at) else series.iloc[0]
            ax.axvline(event.epoch, color=color, ls=":", lw=1, alpha=0.6)
            ax.scatter(
                [event.epoch], [y], marker="*", s=140, color=color, edgecolor="black", zorder=5
            )
            marked = True
    ax.set_xlabel("epoch")
    ax.set_ylabel(key)
    ax.set_title(f"{name} by epoch ({len(compared)} runs; * = confirmed grokking event)")
    ax.grid(alpha=0.3)
    if marked:
        ax.scatter(
            [],
            [],
            marker="*",
            s=140,
            color="white",
            edgecolor="black",
            label="confirmed grokking event",
        )
    if aligned.shape[1]:
        ax.legend(fontsize=7, loc="best", ncol=2 if len(compared) > 8 else 1)
    else:
        ax.text(0.5, 0.5, f"no run logs {key}", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    return fig


# -- the whole comparison ----------------------------------------------------------------------


def write_artifacts(compared: Sequence[ComparedRun], table: pd.DataFrame, folder: Path) -> None:
    """Render plots, table.csv, table.html and ranking.txt into folder."""
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    for key, name, _ in KEY_METRICS:
        fig = overlay_figure(compared, key, name)
        fig.savefig(folder / f"{name}.png")
        plt.close(fig)
    table.to_csv(folder / "table.csv", index=False)
    title = f"TernaryVAE run comparison ({len(table)} runs)"
    (folder / "table.html").write_text(table_html(table, title), encoding="utf-8")
    (folder / "ranking.txt").write_text("\n".join(ranking_lines(table)) + "\n")


def _own_experiment(runs: Sequence[Run]) -> str | None:
    experiments = {r.info.experiment_id for r in runs}
    return experiments.pop() if len(experiments) == 1 else None


def compare_runs(
    client: MlflowClient,
    runs: Sequence[Run],
    *,
    analyzer: Analyzer = analyze_in_memory,
    log: bool = True,
) -> CompareResult:
    """Compare `runs`; with log=True store everything on a new (or `mlflow run`'s) compare run.

    The compare run goes into the runs' experiment when they share one (MLFLOW_EXPERIMENT_*
    and `mlflow run` take precedence, as for any MLflow run). It is logged through the fluent
    API, i.e. to the current tracking URI, which the CLI makes the same as `client`'s.
    """
    compared = load_compared_runs(client, runs, analyzer)
    table = build_table(compared)
    result = CompareResult(table=table, ranking=ranking_lines(table))
    if not log:
        return result
    import mlflow

    kwargs: dict[str, Any] = {"run_name": f"compare-{len(runs)}-runs"}
    env_has_target = any(
        os.environ.get(k)
        for k in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID")
    )
    if not env_has_target and _own_experiment(runs) is not None:
        kwargs["experiment_id"] = _own_experiment(runs)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / ARTIFACT_DIR
        write_artifacts(compared, table, folder)
        with mlflow.start_run(**kwargs) as own:
            ids = ",".join(c.run_id for c in compared)
            client.log_batch(
                own.info.run_id,
                tags=[RunTag(COMPARE_RUN_TAG, ids[:5000]), RunTag(TAG_COUNT, str(len(compared)))],
            )
            client.log_artifacts(own.info.run_id, str(folder), ARTIFACT_DIR)
            result.compare_run_id = own.info.run_id
            result.artifacts = sorted(f"{ARTIFACT_DIR}/{p.name}" for p in folder.iterdir())
    return result
