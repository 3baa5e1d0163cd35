"""`mlflow run . -e analyze -P run_id=...` / `tvae-analyze`: analyse a training run in place.

Everything the user typed is validated (run exists and is not deleted, has metrics, the metric
map names keys the run has, the thresholds YAML is valid) before anything is written. Then:
history -> tvae.analysis -> (registry, when earned) -> tags + report + plots on the training run
and on this analyze run. Any failure is one line and a non-zero exit; when `mlflow run` created
an analyze run for us, that run is marked FAILED with the reason in tag `analysis.error`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from entrypoints._analysis_worker import AnalysisWorker, InputError, parse_inputs
from entrypoints._cli import BOOL, Blank, MarksRunFailed, exit_fast, fail_own_run
from mlflow_plugins.analysis_writer import ARTIFACT_DIR, tool_run
from tvae.analysis.tiers import TIER_ORDER

PARAM_NAMES = ("run_id", "metric_map", "config", "register", "model_name", "min_tier")


@dataclass
class Inputs:
    """Everything validated, ready to run."""

    run: Any
    metric_map: str
    config: str
    register: bool
    model_name: str
    min_tier: str


def mapped_keys(text: str) -> dict[str, str]:
    """Single-key roles the user mapped explicitly: {role: key} (unset roles and controls out).

    Syntax is checked by `Roles.from_metric_map`; this only lists what must exist in the run.
    """
    pairs: dict[str, str] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        role, _, key = (s.strip() for s in item.partition("="))
        if role != "controls" and key:
            pairs[role] = key
    return pairs


def validate(
    client: Any,
    worker: AnalysisWorker,
    run_id: str,
    metric_map: str,
    config: str,
    register: bool,
    model_name: str,
    min_tier: str,
) -> Inputs:
    """Check every input against the tracking store; raise ClickException (one line) if bad."""
    from mlflow.exceptions import MlflowException

    if run_id == os.environ.get("MLFLOW_RUN_ID"):
        raise click.ClickException("--run-id names this analyze run itself")
    try:
        run = client.get_run(run_id)
    except MlflowException:
        where = client.tracking_uri
        raise click.ClickException(f"--run-id: no run '{run_id}' in {where}") from None
    if run.info.lifecycle_stage == "deleted":
        raise click.ClickException(f"--run-id: run '{run_id}' is deleted")
    kind = tool_run(run.data.tags)
    if kind:
        raise click.ClickException(
            f"--run-id: run '{run_id}' is {kind}, not a training run; pass the run to analyse"
        )
    if not run.data.metrics:
        raise click.ClickException(f"--run-id: run '{run_id}' has no metrics to analyse")
    try:
        worker.check_inputs()
    except InputError as err:
        raise click.ClickException(str(err)) from None
    explicit = mapped_keys(metric_map or "")
    absent = sorted(f"{r}={k}" for r, k in explicit.items() if k not in run.data.metrics)
    if absent:
        raise click.ClickException(
            f"--metric-map: run '{run_id}' has no metric for {', '.join(absent)}"
        )
    if not model_name.strip():
        raise click.ClickException("--model-name must not be blank")
    return Inputs(run, metric_map or "", config or "", register, model_name.strip(), min_tier)


def _registry_step(
    client: Any, inputs: Inputs, result: dict[str, Any], history: Any, own_id: str
) -> Any:
    from mlflow_plugins.registry import RegistryOutcome, register_if_earned

    if not inputs.register:
        return RegistryOutcome("skipped", "register=false", inputs.model_name)
    return register_if_earned(
        client,
        inputs.run.info.run_id,
        tier=result["tier"],
        min_tier=inputs.min_tier,
        model_name=inputs.model_name,
        history=history,
        events=result["confirmed"],
        judge=lambda c, h, q: _judge(c, h, q, inputs.config),
        evaluate=lambda uri: _evaluate_in(own_id, uri),
    )


def _judge(coverage: float, hierarchy: float, quality: float, config: str) -> str:
    """Tier name of re-evaluated values (imports the analysis stack only when registering)."""
    from tvae.analysis import judge_tier

    thresholds = parse_inputs("", config)[1]
    return judge_tier(coverage, hierarchy, quality, thresholds).name


def _evaluate_in(run_id: str, model_uri: str) -> dict[str, float]:
    """Re-evaluate the model with the analyze run active, so its metrics land there."""
    import mlflow

    from mlflow_plugins.evaluator import evaluate_model_uri

    with mlflow.start_run(run_id=run_id):
        return evaluate_model_uri(model_uri)


def _own_run(client: Any, run: Any) -> tuple[str, bool]:
    """(analyze run id, created here): the `mlflow run` one (MLFLOW_RUN_ID) or a new one.

    Created with the client rather than `mlflow.start_run` so run-context plugins (which may
    import torch) do not cost every analysis seconds of start-up.
    """
    own_id = os.environ.get("MLFLOW_RUN_ID")
    if own_id:
        return own_id, False
    name = f"analyze-{run.info.run_name or run.info.run_id[:8]}"
    tags = {"mlflow.source.type": "LOCAL", "mlflow.source.name": "tvae-analyze"}
    created = client.create_run(run.info.experiment_id, run_name=name, tags=tags)
    return created.info.run_id, True


def run_analysis(
    client: Any, inputs: Inputs, raw_params: dict[str, str], worker: AnalysisWorker, folder: Path
) -> str:
    """Analyse, maybe register, write everything; returns the printed summary."""
    from mlflow.entities import Metric, Param

    from mlflow_plugins.analysis_writer import write_analysis, write_report
    from mlflow_plugins.history import load_history
    from mlflow_plugins.registry import tier_at_least

    run = inputs.run
    source_id = run.info.run_id
    started = time.perf_counter()
    loaded: list[Any] = []

    def history() -> tuple[Any, Any]:
        if not loaded:
            loaded.extend(load_history(client, source_id))
        return loaded[0], loaded[1]

    result = worker.analyse(history, run.info.status, str(folder))
    own_id, created = _own_run(client, run)
    try:
        have = client.get_run(own_id).data.params
        params = [Param(k, v) for k, v in raw_params.items() if k not in have]
        client.log_batch(own_id, params=params)
        earned = inputs.register and tier_at_least(result["tier"], inputs.min_tier)
        outcome = _registry_step(client, inputs, result, history()[0] if earned else None, own_id)
        report_dict = dict(result["report"])
        report_dict["registry"] = outcome.to_dict()
        report_dict["source_run"] = {"run_id": source_id, "status": run.info.status}
        write_report(report_dict, folder)
        write_analysis(client, source_id, own_id, folder, result["tags"])
        seconds = time.perf_counter() - started
        client.log_batch(own_id, metrics=[Metric("analysis/seconds", seconds, _now_ms(), 0)])
    except Exception as err:
        fail_own_run(f"{type(err).__name__}: {err}", own_id)
        raise
    if created:
        client.set_terminated(own_id, "FINISHED")
    return _summary(run, result["summary"], outcome, own_id)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _summary(run: Any, report_summary: str, outcome: Any, analyze_run_id: str) -> str:
    lines = [f"Training run {run.info.run_id} ({run.info.status})", report_summary]
    registry = f"Registry: {outcome.action} - {outcome.reason}"
    if outcome.version:
        registry += f" ({outcome.model_name} v{outcome.version})"
    lines.append(registry)
    for alias, why in outcome.aliases.items():
        lines.append(f"  alias {alias} -> v{outcome.version}: {why}")
    lines.append(f"Analysis written by run {analyze_run_id}")
    return "\n".join(lines)


@click.command(cls=MarksRunFailed, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--run-id", required=True, type=Blank(), help="training run to analyse")
@click.option("--metric-map", default="", type=Blank(), help="role=key,... for other runs")
@click.option("--config", default="", type=Blank(), help="detection thresholds YAML")
@click.option("--register", default="", type=BOOL, help="register the model if earned")
@click.option("--model-name", default="", type=Blank(), help="registered model name")
@click.option(
    "--min-tier", default="", type=Blank(click.Choice(TIER_ORDER)), help="tier needed to register"
)
def main(
    run_id: str,
    metric_map: str,
    config: str,
    register: bool | None,
    model_name: str,
    min_tier: str,
) -> None:
    """Analyse a training run: grokking events, phases, tier, plots; register if earned."""
    raw = dict(zip(PARAM_NAMES, (run_id, metric_map, config), strict=False))
    raw.update(
        register="true" if register in (None, True) else "false",
        model_name=model_name or "TernaryVAE",
        min_tier=min_tier or "Good",
    )
    if not run_id:
        fail_own_run("--run-id is required")
        raise click.ClickException("--run-id is required")
    tmp = tempfile.mkdtemp(prefix="tvae-analyze-")
    folder = Path(tmp) / ARTIFACT_DIR
    # started before MLflow is imported, so the two start-ups overlap (see _analysis_worker)
    worker = AnalysisWorker(metric_map or "", config or "", run_id=run_id, folder=str(folder))
    try:
        from mlflow.tracking import MlflowClient

        client = MlflowClient()
        inputs = validate(
            client,
            worker,
            run_id,
            metric_map,
            config,
            register is not False,
            model_name or "TernaryVAE",
            min_tier or "Good",
        )
        summary = run_analysis(client, inputs, raw, worker, folder)
    except click.ClickException as err:
        fail_own_run(err.format_message())
        raise
    except Exception as err:  # noqa: BLE001 - one line for the user, FAILED for the run
        first = (str(err).splitlines() or [""])[0]
        message = f"analysis failed: {type(err).__name__}: {first}"
        fail_own_run(message)
        raise click.ClickException(message) from err
    finally:
        worker.close()
        shutil.rmtree(tmp, ignore_errors=True)
    click.echo(summary)


def cli() -> None:
    """Program entry (`tvae-analyze`, `python -m entrypoints.analyze`): exits without teardown."""
    exit_fast(main)


if __name__ == "__main__":
    cli()
