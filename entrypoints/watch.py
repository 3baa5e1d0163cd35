"""`mlflow run . -e watch -P run_id=...` / `tvae-watch`: raise grokking while a run trains.

Thin CLI over `mlflow_plugins.watch.Watch`: parse, check every input against the store before
anything is written, then watch. Errors follow the house style (`error: ...`, exit 2 on bad
input, exit 1 when a valid request failed, 130 on Ctrl-C).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from urllib.parse import urlparse

import click

from entrypoints._cli import (
    EXIT_KILLED,
    Blank,
    CommandFailed,
    MarksRunFailed,
    exit_with_error,
    name_launcher_run,
)


class WatchInputError(ValueError):
    """Bad input to `watch`; the message is one line naming the option at fault."""


def _seconds(name: str, text: str | None, default: float | None) -> float | None:
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        raise WatchInputError(f"--{name}: '{text}' is not a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise WatchInputError(f"--{name}: '{text}' is not a positive number of seconds")
    return value


def _webhook(url: str | None) -> str | None:
    if url is None:
        return None
    parts = urlparse(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise WatchInputError(f"--webhook: '{url}' is not an http(s) URL")
    return url


def check_inputs(
    client,
    *,
    run_id: str | None,
    experiment: str | None,
    metric_map: str | None,
    config: str | None,
    interval: str | None,
    until: str | None,
    webhook: str | None,
    own_run_id: str | None,
) -> dict:
    """Everything the user gave, checked; keyword arguments for `Watch` (plus echo)."""
    from mlflow.exceptions import MlflowException

    from mlflow_plugins.analyze_inputs import mapped_keys, named_run
    from mlflow_plugins.watch import DEFAULT_INTERVAL, RUNNING
    from tvae.analysis import Roles, load_thresholds

    kwargs: dict = {
        "interval": _seconds("interval", interval, DEFAULT_INTERVAL),
        "until": _seconds("until", until, None),
    }
    _webhook(webhook)
    try:
        kwargs["roles"] = Roles.from_metric_map(metric_map) if metric_map else None
    except ValueError as err:
        raise WatchInputError(f"--metric-map: {err}") from None
    kwargs["required"] = mapped_keys(metric_map or "")
    if config:
        if not Path(config).is_file():
            raise WatchInputError(f"--config: thresholds file not found: {config}")
        try:
            kwargs["thresholds"] = load_thresholds(config)
        except ValueError as err:
            raise WatchInputError(f"--config: {err}") from None
    if bool(run_id) == bool(experiment):
        raise WatchInputError("give --run-id (one run) or --experiment (its RUNNING runs)")
    if run_id:
        run = named_run(client, run_id, own_run_id, WatchInputError)
        if run.info.status != RUNNING:
            raise WatchInputError(
                f"--run-id: run '{run_id}' is {run.info.status}, not RUNNING; "
                "`analyze` reads a finished run"
            )
        kwargs["run_id"] = run_id
    else:
        found = client.get_experiment_by_name(experiment)
        if found is None and experiment.isdigit():
            try:
                found = client.get_experiment(experiment)
            except MlflowException:
                found = None
        if found is None:
            raise WatchInputError(f"--experiment: no experiment '{experiment}'")
        if found.lifecycle_stage == "deleted":
            raise WatchInputError(f"--experiment: experiment '{experiment}' is deleted")
        kwargs["experiment_id"] = found.experiment_id
    return kwargs


@click.command(cls=MarksRunFailed, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--run-id", default="", type=Blank(), help="the RUNNING run to watch")
@click.option("--experiment", default="", type=Blank(), help="watch its RUNNING runs instead")
@click.option("--metric-map", default="", type=Blank(), help="role=key,... for other runs")
@click.option("--config", default="", type=Blank(), help="detection thresholds YAML")
@click.option("--interval", default="", type=Blank(), help="seconds between polls (default 5)")
@click.option("--until", default="", type=Blank(), help="stop after this many seconds")
@click.option("--webhook", default="", type=Blank(), help="POST each state change here (JSON)")
@click.option("--command", default="", type=Blank(), help="run this on each state change")
def main(
    run_id: str | None,
    experiment: str | None,
    metric_map: str | None,
    config: str | None,
    interval: str | None,
    until: str | None,
    webhook: str | None,
    command: str | None,
) -> None:
    """Watch a RUNNING run (or an experiment's) and raise grokking while it trains."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from mlflow_plugins.notify import Notifier
    from mlflow_plugins.watch import Watch

    own = os.environ.get("MLFLOW_RUN_ID")
    client = MlflowClient()
    try:
        kwargs = check_inputs(
            client,
            run_id=run_id,
            experiment=experiment,
            metric_map=metric_map,
            config=config,
            interval=interval,
            until=until,
            webhook=webhook,
            own_run_id=own,
        )
    except WatchInputError as err:
        raise click.ClickException(str(err)) from None
    except MlflowException as err:
        raise CommandFailed(f"tracking store: {_first_line(err.message)}") from err

    def echo(line: str) -> None:
        click.echo(line)

    watch = Watch(
        client,
        notifier=Notifier(webhook, command, echo),
        echo=echo,
        exclude=(own,) if own else (),
        **kwargs,
    )
    what = f"run {run_id}" if run_id else f"experiment '{experiment}'"
    name_launcher_run(client, f"watch-{run_id[:8]}" if run_id else f"watch-{experiment}")
    echo(
        f"watch: {what} every {watch.interval:g} s"
        + (f" for {watch.until:g} s at most" if watch.until else "")
        + f" ({client.tracking_uri}); Ctrl-C stops"
    )
    try:
        watch.run()
    except KeyboardInterrupt:
        click.echo("watch: interrupted; the live tags stay as they are")
        raise SystemExit(EXIT_KILLED) from None


def _first_line(text: object) -> str:
    return (str(text).strip().splitlines() or [""])[0]


def cli() -> None:
    """Program entry (`tvae-watch`, `python -m entrypoints.watch`)."""
    try:
        main()
    except KeyboardInterrupt:
        exit_with_error("interrupted", EXIT_KILLED)


if __name__ == "__main__":
    cli()
