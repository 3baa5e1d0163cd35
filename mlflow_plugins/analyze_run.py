"""Analyse one MLflow run in place: validate -> read the history once -> analyse -> write ->
register. The one orchestration behind `tvae-analyze` and `mlflow run -e analyze`:

    from mlflow_plugins.analyze_run import analyze_run
    outcome = analyze_run(MlflowClient(), run_id, metric_map="accuracy=val_acc,loss=train_loss")
    print(outcome.summary())

Bad input raises AnalyzeInputError before anything is written. Once writing has begun, a failure
ends the analyze run FAILED with `failure.reason`, so no analyze run is left RUNNING or looking
FINISHED with half an analysis.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME, MLFLOW_SOURCE_NAME, MLFLOW_SOURCE_TYPE

from mlflow_plugins.analysis_writer import (
    ANALYZE_SOURCE,
    ARTIFACT_DIR,
    save_figures,
    write_analysis,
    write_report,
)
from mlflow_plugins.analyze_inputs import AnalyzeInputError, AnalyzeInputs, check_inputs
from mlflow_plugins.history import load_history
from mlflow_plugins.registry import (
    DEFAULT_MODEL_NAME,
    RegistryOutcome,
    register_if_earned,
    tier_at_least,
)

if TYPE_CHECKING:
    import pandas as pd
    from mlflow.entities import Run

    from tvae.analysis import AnalysisReport

__all__ = ["AnalyzeInputError", "AnalyzeOutcome", "analyze_run"]


@dataclass
class AnalyzeOutcome:
    """What one analysis found and wrote."""

    run: Run  # the analysed training run
    analyze_run_id: str
    report: AnalysisReport
    registry: RegistryOutcome

    def summary(self) -> str:
        """What the user reads: the findings, the registry step, where the plots are."""
        info = self.run.info
        lines = [f"Training run {info.run_id} ({info.status})", self.report.summary()]
        registry = f"Registry: {self.registry.action} - {self.registry.reason}"
        if self.registry.version:
            registry += f" ({self.registry.model_name} v{self.registry.version})"
        lines.append(registry)
        for alias, why in self.registry.aliases.items():
            lines.append(f"  alias {alias} -> v{self.registry.version}: {why}")
        lines.append(
            f"Plots and report.json: Artifacts tab of run {info.run_id}, folder {ARTIFACT_DIR}/"
        )
        lines.append(f"Analysis written by run {self.analyze_run_id}")
        return "\n".join(lines)


def _analyse(
    inputs: AnalyzeInputs, history: pd.DataFrame, system: pd.DataFrame, folder: Path
) -> AnalysisReport:
    """The analysis of one history, its PNGs written into `folder` (no MLflow here)."""
    import matplotlib

    matplotlib.use("Agg")
    from tvae.analysis import analyze
    from tvae.analysis.plots import plot_report

    report = analyze(
        history, inputs.roles, inputs.thresholds, system=system, run_status=inputs.run.info.status
    )
    report.notes[:0] = history.attrs.get("notes", [])
    if inputs.guessed:
        report.notes.insert(
            0,
            "no metric_map given and none of TernaryVAE's keys logged: read by its key names as "
            f'metric_map="{inputs.guessed}"',
        )
    save_figures(plot_report(history, report, inputs.roles), folder)
    return report


def _own_run(client: MlflowClient, run: Run, analyze_run_id: str | None) -> tuple[str, bool]:
    """(analyze run id, created here): the given run (`mlflow run`'s) or a new one beside `run`.

    Created with the client rather than `mlflow.start_run` so run-context plugins (which may
    import torch) do not cost every analysis seconds of start-up.
    """
    if analyze_run_id:
        return analyze_run_id, False
    tags = {MLFLOW_SOURCE_TYPE: "LOCAL", MLFLOW_SOURCE_NAME: ANALYZE_SOURCE}
    created = client.create_run(run.info.experiment_id, run_name=analyze_run_name(run), tags=tags)
    return created.info.run_id, True


def analyze_run_name(run: Run) -> str:
    """An analyze run's name: the analysed run's, so the two sit together in the UI."""
    return f"analyze-{run.info.run_name or run.info.run_id[:8]}"


def _params(inputs: AnalyzeInputs) -> dict[str, str]:
    return {
        "run_id": inputs.run.info.run_id,
        "metric_map": inputs.metric_map,
        "config": inputs.config,
        "register": str(inputs.register).lower(),
        "model_name": inputs.model_name,
        "min_tier": inputs.min_tier,
    }


def _evaluate_in(run_id: str, model_uri: str) -> dict[str, float]:
    """Re-evaluate the model with the analyze run active, so its metrics land there."""
    import mlflow

    from mlflow_plugins.evaluator import evaluate_model_uri

    with mlflow.start_run(run_id=run_id):
        return evaluate_model_uri(model_uri)


def _register(
    client: MlflowClient, inputs: AnalyzeInputs, report: AnalysisReport, history: Any, own_id: str
) -> RegistryOutcome:
    """Register the run's model when its tier earns it (re-evaluated first); else say why not."""
    from tvae.analysis import judge_tier

    tier = report.tier.name if report.tier else "None"
    if not inputs.register:
        return RegistryOutcome("skipped", "register=false", inputs.model_name)
    if report.tier is None:  # a run without the tier's roles (another trainer's): no model
        return RegistryOutcome("skipped", "tier not judged", inputs.model_name)
    return register_if_earned(
        client,
        inputs.run.info.run_id,
        tier=tier,
        min_tier=inputs.min_tier,
        model_name=inputs.model_name,
        history=history if tier_at_least(tier, inputs.min_tier) else None,
        events=len(report.confirmed),
        judge=lambda c, h, q: judge_tier(c, h, q, inputs.thresholds).name,
        evaluate=lambda uri: _evaluate_in(own_id, uri),
    )


def _write(
    client: MlflowClient,
    inputs: AnalyzeInputs,
    report: AnalysisReport,
    history: pd.DataFrame,
    own_id: str,
    folder: Path,
) -> RegistryOutcome:
    """Params, registry step, report.json and tags onto both runs; returns the registry step."""
    own = client.get_run(own_id).data  # `mlflow run` logged the -P values already
    params = [Param(k, v) for k, v in _params(inputs).items() if k not in own.params]
    name = analyze_run_name(inputs.run)  # `mlflow run`'s own run has a random name
    rename = [RunTag(MLFLOW_RUN_NAME, name)] if own.tags.get(MLFLOW_RUN_NAME) != name else []
    client.log_batch(own_id, params=params, tags=rename)
    outcome = _register(client, inputs, report, history, own_id)
    report_dict = report.to_dict()
    report_dict["registry"] = outcome.to_dict()
    report_dict["source_run"] = {"run_id": inputs.run.info.run_id, "status": inputs.run.info.status}
    write_report(report_dict, folder)
    write_analysis(client, inputs.run.info.run_id, own_id, folder, report.tags())
    return outcome


def analyze_run(
    client: MlflowClient,
    run_id: str,
    *,
    metric_map: str = "",
    config: str = "",
    register: bool = True,
    model_name: str = DEFAULT_MODEL_NAME,
    min_tier: str = "Good",
    analyze_run_id: str | None = None,
) -> AnalyzeOutcome:
    """Analyse `run_id` and write the analysis onto it and onto an analyze run.

    `analyze_run_id` is a RUNNING run to write the copy into (what `mlflow run` made); without
    it one is created in the training run's experiment and ended FINISHED. Raises
    AnalyzeInputError (nothing written) on bad input.
    """
    started = time.perf_counter()
    inputs = check_inputs(
        client,
        run_id,
        metric_map=metric_map,
        config=config,
        register=register,
        model_name=model_name,
        min_tier=min_tier,
        analyze_run_id=analyze_run_id,
    )
    history, system = load_history(client, inputs.run.info.run_id)
    if inputs.guessed:  # read by key names: now that the rows are in, a key logged once loses
        from tvae.analysis.guess_roles import roles_for

        found = roles_for(history.columns, history.count().to_dict())
        if found is not None:
            inputs = replace(inputs, roles=found[0], guessed=found[1])
    with tempfile.TemporaryDirectory(prefix="tvae-analyze-") as tmp:
        folder = Path(tmp) / ARTIFACT_DIR
        report = _analyse(inputs, history, system, folder)
        own_id, created = _own_run(client, inputs.run, analyze_run_id)
        try:
            outcome = _write(client, inputs, report, history, own_id, folder)
            seconds = time.perf_counter() - started
            now = int(time.time() * 1000)
            client.log_batch(own_id, metrics=[Metric("analysis/seconds", seconds, now, 0)])
        except BaseException as err:
            from mlflow_plugins.runs import fail_run  # imports the training config: only here

            try:
                fail_run(client, own_id, f"{type(err).__name__}: {err}", only_running=False)
            except Exception:  # noqa: BLE001 - the store may be what failed; report the cause
                pass
            raise
    if created:
        client.set_terminated(own_id, "FINISHED")
    return AnalyzeOutcome(inputs.run, own_id, report, outcome)
