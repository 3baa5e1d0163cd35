"""`mlflow run . -e analyze -P run_id=...` / `tvae-analyze`: analyse a training run in place.

Thin CLI over `mlflow_plugins.analyze_run.analyze_run`: parse, call, map errors to the house
style (`error: ...`, exit 2 on bad input, exit 1 when a valid request failed). The analysis
itself validates everything before it writes anything.
"""

from __future__ import annotations

import os

import click

from entrypoints._cli import BOOL, Blank, CommandFailed, MarksRunFailed, permission_denied
from tvae.analysis.tiers import TIER_ORDER


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
    run_id: str | None,
    metric_map: str | None,
    config: str | None,
    register: bool | None,
    model_name: str | None,
    min_tier: str | None,
) -> None:
    """Analyse a training run: grokking events, phases, tier, plots; register if earned."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from mlflow_plugins.analyze_run import AnalyzeInputError, analyze_run
    from mlflow_plugins.registry import DEFAULT_MODEL_NAME

    try:
        outcome = analyze_run(
            MlflowClient(),
            run_id or "",
            metric_map=metric_map or "",
            config=config or "",
            register=register is not False,
            model_name=model_name or DEFAULT_MODEL_NAME,
            min_tier=min_tier or "Good",
            analyze_run_id=os.environ.get("MLFLOW_RUN_ID"),
        )
    except AnalyzeInputError as err:
        raise click.ClickException(str(err)) from None
    except MlflowException as err:
        refused = permission_denied(err)
        if refused:
            raise CommandFailed(refused) from None
        raise CommandFailed(f"tracking store: {_first_line(err.message)}") from err
    except Exception as err:  # noqa: BLE001 - one line for the user; the run says FAILED
        raise CommandFailed(f"analysis failed: {type(err).__name__}: {_first_line(err)}") from err
    click.echo(outcome.summary())


def _first_line(text: object) -> str:
    return (str(text).strip().splitlines() or [""])[0]


def cli() -> None:
    """Program entry (`tvae-analyze`, `python -m entrypoints.analyze`)."""
    main()


if __name__ == "__main__":
    cli()
