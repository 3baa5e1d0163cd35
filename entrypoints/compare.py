"""`mlflow run . -e compare` / `tvae-compare`: put training runs side by side.

Thin CLI over `mlflow_plugins.compare`: parse, select, compare, print the ranking. Bad input is
one `error: ...` line and exit 2; under `mlflow run` the launcher run ends FAILED with
`failure.reason`.
"""

from __future__ import annotations

import click

from entrypoints._cli import EXIT_BAD_INPUT, EXIT_FAILED, Blank, exit_with_error, run_as_program

HELP = """Compare training runs: overlay plots, a table and a ranking, logged to a compare run.

\b
Select runs with one of:
  --runs ID,ID,...        these runs (a --filter narrows them further)
  --experiment NAME       the training runs of an experiment, e.g. Default (where `mlflow
                          run` puts runs without --experiment-name); optionally --filter
  --sweep PARENT_RUN_ID   the training runs of a sweep (nested under its parent run)
  --filter "SEARCH"       MLflow search syntax, e.g. "tags.tier = 'Good'"; alone it searches
                          every active experiment
An empty value ("") means "not given", as MLproject passes it. Runs found by a search that
log none of the compared metrics are skipped and named; given --runs must all log one.

\b
Runs not analysed yet (no `tier` tag) are analysed ON THE FLY, in memory, with the default
roles and thresholds; nothing is written to those runs, and their table row says
analysis="on the fly". Run `mlflow run . -e analyze` on them to store an analysis.

\b
Logged to the compare run under compare/: coverage.png, hierarchy_B.png, Q.png, loss.png
(one line per run by epoch, * marks each confirmed grokking event), table.csv, table.html,
ranking.txt; tags compare.runs and compare.count. When a config ran on several seeds (runs
whose params differ only in train.seed, or one sweep trial's runs), also <metric>_by_config.png
(the mean over seeds by epoch in a +- std band) and configs.csv / configs.html (per config:
mean and std over seeds of each best value, seeds that grokked, tiers).
"""


def parse_run_ids(text: str | None) -> list[str]:
    """'a, b,,c' -> ['a', 'b', 'c'] keeping order, dropping blanks and repeats."""
    parts = (part.strip() for part in (text or "").split(","))
    return list(dict.fromkeys(part for part in parts if part))


@click.command(help=HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--runs", type=Blank(), help="comma-separated run ids")
@click.option("--experiment", type=Blank(), help="experiment name")
@click.option("--filter", "filter_string", type=Blank(), help="MLflow search filter")
@click.option("--sweep", type=Blank(), help="a sweep's parent run id")
def cli(
    runs: str | None, experiment: str | None, filter_string: str | None, sweep: str | None
) -> None:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from mlflow_plugins.compare import compare_runs
    from mlflow_plugins.compare_select import CompareError, select_runs

    client = MlflowClient()
    try:
        selection = select_runs(client, parse_run_ids(runs), experiment, filter_string, sweep)
        if selection.skipped:
            click.echo(selection.skipped_line())
        result = compare_runs(client, selection.runs)
    except CompareError as err:
        exit_with_error(str(err), EXIT_BAD_INPUT)
    except MlflowException as err:  # e.g. an unreachable tracking server
        first = str(err.message).splitlines()[0] if err.message else type(err).__name__
        exit_with_error(f"tracking store: {first}", EXIT_FAILED)
    n = len(result.table)
    click.echo(f"Compared {n} run{'' if n == 1 else 's'} (best first):")
    for line in result.ranking:
        click.echo(line)
    click.echo(f"Logged to run {result.compare_run_id}: {', '.join(result.artifacts)}")


def main(argv: list[str] | None = None) -> None:
    """Console-script entry (`tvae-compare`)."""
    run_as_program(cli, "tvae-compare", argv)


if __name__ == "__main__":
    main()
