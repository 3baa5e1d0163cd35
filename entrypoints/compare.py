"""`mlflow run . -e compare` / `tvae-compare`: put training runs side by side.

Thin CLI over `mlflow_plugins.compare`: parse, validate the selection, compare, print ranking.
"""

from __future__ import annotations

import click

HELP = """Compare training runs: overlay plots, a table and a ranking, logged to a compare run.

\b
Select runs with one of:
  --runs ID,ID,...        these runs (a --filter narrows them further)
  --experiment NAME       the training runs of an experiment (optionally --filter)
  --filter "SEARCH"       MLflow search syntax, e.g. "tags.tier = 'Good'"; alone it searches
                          every active experiment
An empty value ("") means "not given", as MLproject passes it.

\b
Runs not analysed yet (no `tier` tag) are analysed ON THE FLY, in memory, with the default
roles and thresholds; nothing is written to those runs, and their table row says
analysis="on the fly". Run `mlflow run . -e analyze` on them to store an analysis.

\b
Logged to the compare run under compare/: coverage.png, hierarchy_B.png, Q.png, loss.png
(one line per run by epoch, * marks each confirmed grokking event), table.csv, table.html,
ranking.txt; tags compare.runs and compare.count.
"""


def _optional(value: str | None) -> str | None:
    return value.strip() if value and value.strip() else None


@click.command(help=HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--runs", default="", help="comma-separated run ids")
@click.option("--experiment", default="", help="experiment name")
@click.option("--filter", "filter_string", default="", help="MLflow search filter")
def main(runs: str, experiment: str, filter_string: str) -> None:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from mlflow_plugins.compare import CompareError, compare_runs, parse_run_ids, select_runs

    client = MlflowClient()
    try:
        selected = select_runs(
            client,
            parse_run_ids(runs),
            _optional(experiment),
            _optional(filter_string),
        )
        result = compare_runs(client, selected)
    except CompareError as err:
        raise click.ClickException(str(err)) from None
    except MlflowException as err:  # e.g. an unreachable tracking server
        first = str(err.message).splitlines()[0] if err.message else type(err).__name__
        raise click.ClickException(f"tracking store: {first}") from None
    click.echo(f"Compared {len(result.table)} runs (best first):")
    for line in result.ranking:
        click.echo(line)
    click.echo(f"Logged to run {result.compare_run_id}: {', '.join(result.artifacts)}")


if __name__ == "__main__":
    main()
