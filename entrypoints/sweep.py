"""`mlflow run . -e sweep` / `tvae-sweep`: an Optuna study over dotted config keys.

Every input (space file, config keys and ranges, counts, metric) is checked before anything is
written: no parent run, no study. Each sampled config is trained on seeds 0..K-1 in training
runs nested under one parent run per study, created and trained as `train` does it and analysed
as `analyze` does it (register=false). The objective is the mean over seeds of the metric's
value at each training run's best epoch (the epoch of its logged model; its last logged value
when the best epoch has none). `trials` is the study's total: running the same command again,
here or on another machine with the same storage, adds workers, not trials.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import click

from entrypoints._cli import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_KILLED,
    Blank,
    exit_with_error,
    fail_launcher_run,
    run_as_program,
)
from mlflow_plugins.sweep_space import PRUNERS
from tvae.analysis.tiers import TIER_ORDER
from tvae.config import ConfigError

DEFAULT_CONFIG = "configs/v5_12_4_extended_grokking.yaml"
DEFAULT_METRIC = "eval/Q"


def build_spec(
    space: str,
    config_path: str,
    trials: int,
    seeds: int,
    metric: str,
    direction: str | None,
    study: str | None,
    storage: str | None,
    workers: int,
    timeout: float | None,
    pruner: str = "grokking",
    register: bool = False,
    model_name: str = "TernaryVAE",
    min_tier: str = "Good",
    heartbeat: int = 60,
):
    """The validated SweepSpec (SweepInputError / ConfigError, one line, when bad)."""
    import mlflow

    from mlflow_plugins.sweep_space import (
        SweepInputError,
        SweepSpec,
        check_configs,
        default_storage,
        direction_for,
        parse_space,
    )

    dims, fixed = parse_space(space)
    check_configs(config_path, dims, fixed)
    resolved = direction_for(metric, direction)
    name = study or Path(space).stem
    if not name.strip():
        raise SweepInputError("study name is empty")
    uri = mlflow.get_tracking_uri()
    if register:
        from mlflow_plugins.registry import model_name_problem

        problem = model_name_problem(mlflow.MlflowClient(), model_name)
        if problem:
            raise SweepInputError(f"--model-name {model_name!r}: {problem}")
    return SweepSpec(
        space_path=space,
        dims=dims,
        fixed=fixed,
        config_path=config_path,
        trials=trials,
        seeds=seeds,
        metric=metric,
        direction=resolved,
        study=name,
        storage=storage or default_storage(uri),
        workers=workers,
        timeout=timeout,
        tracking_uri=uri,
        pruner=pruner,
        register=register,
        model_name=model_name,
        min_tier=min_tier,
        heartbeat=heartbeat,
    )


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--space", required=True, help="YAML search space over dotted config keys.")
@click.option("--config", "config_path", type=Blank(), default=None, help="Base config YAML.")
@click.option("--trials", type=Blank(click.IntRange(min=1)), default=None, help="Study total.")
@click.option("--seeds", type=Blank(click.IntRange(min=1, max=1000)), default=None)
@click.option("--metric", type=Blank(), default=None, help=f"Default {DEFAULT_METRIC}.")
@click.option("--direction", type=Blank(), default=None, help="minimize or maximize.")
@click.option("--study", type=Blank(), default=None, help="Default: the space file's name.")
@click.option("--storage", type=Blank(), default=None, help="Optuna storage URL or file.")
@click.option("--workers", type=Blank(click.IntRange(min=1, max=256)), default=None)
@click.option(
    "--timeout",
    type=Blank(click.FloatRange(min=0, min_open=True)),
    default=None,
    help="Seconds after which this command's workers start no new trial.",
)
@click.option(
    "--pruner",
    type=Blank(click.Choice(PRUNERS)),
    default=None,
    help="grokking (default): the median rule, but never in a live plateau; median; none.",
)
@click.option(
    "--register",
    type=Blank(click.BOOL),
    default=None,
    help="Register the best config's best-seed model as analyze does (default false).",
)
@click.option("--model-name", type=Blank(), default=None, help="Default TernaryVAE.")
@click.option(
    "--min-tier", type=Blank(click.Choice(TIER_ORDER)), default=None, help="Default Good."
)
@click.option(
    "--heartbeat",
    type=Blank(click.IntRange(min=0)),
    default=None,
    help="Seconds between a trial's heartbeats on a database storage (default 60, 0 off): a "
    "trial silent for 3 of them, its worker dead on any machine, ends FAIL.",
)
def cli(
    space: str,
    config_path: str | None,
    trials: int | None,
    seeds: int | None,
    metric: str | None,
    direction: str | None,
    study: str | None,
    storage: str | None,
    workers: int | None,
    timeout: float | None,
    pruner: str | None,
    register: bool | None,
    model_name: str | None,
    min_tier: str | None,
    heartbeat: int | None,
) -> None:
    """Search hyperparameters with Optuna; every trial trains like `train` on K seeds."""
    from mlflow_plugins.sweep_space import SweepInputError

    try:
        import optuna  # noqa: F401
    except ImportError:
        exit_with_error(
            "optuna is not installed: pip install 'tvae-mlflow[sweep]' (or optuna)", EXIT_FAILED
        )
    if not space.strip():
        exit_with_error("--space is required (a YAML search space, e.g. configs/sweep_smoke.yaml)")
    try:
        spec = build_spec(
            space.strip(),
            config_path or DEFAULT_CONFIG,
            trials or 20,
            seeds or 1,
            metric or DEFAULT_METRIC,
            direction,
            study,
            storage,
            workers or 1,
            timeout,
            pruner or PRUNERS[0],
            bool(register),
            model_name or "TernaryVAE",
            min_tier or "Good",
            60 if heartbeat is None else heartbeat,
        )
    except (SweepInputError, ConfigError) as err:
        exit_with_error(str(err), EXIT_BAD_INPUT)
    sys.exit(sweep(spec))


def sweep(spec) -> int:
    """Open the study, pick the parent run, run the workers, write the summary."""
    import mlflow

    from mlflow_plugins.launcher import restore_after_launcher
    from mlflow_plugins.sweep import parent_run
    from mlflow_plugins.sweep_finish import finish_sweep
    from mlflow_plugins.sweep_space import SweepInputError, mask_password
    from mlflow_plugins.sweep_study import open_study

    launcher = os.environ.pop("MLFLOW_RUN_ID", None)  # fluent start_run would resume it
    client = mlflow.MlflowClient()
    try:
        study = open_study(spec)
    except SweepInputError as err:
        _fail(launcher, str(err), EXIT_BAD_INPUT)
    except Exception as err:  # noqa: BLE001 - storage unreachable or unreadable
        where = mask_password(spec.storage)
        _fail(launcher, f"optuna storage {where}: {type(err).__name__}: {err}", EXIT_FAILED)
    parent = parent_run(client, spec, study, launcher)
    click.echo(
        f"study {spec.study!r} ({spec.sampler_name}, {spec.direction} {spec.metric}, "
        f"{spec.target} trials x {spec.seeds} seeds), parent run {parent}"
    )
    from mlflow_plugins.sweep import on_sigterm, run_workers

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        codes = run_workers(spec, parent)
    except KeyboardInterrupt:
        _end_parent(client, parent, "KILLED", "interrupted")
        if parent == launcher:  # `mlflow run` would leave it FAILED (exit 130 is non-zero)
            restore_after_launcher(parent, "KILLED")
        click.echo(f"sweep interrupted; parent run {parent} KILLED", err=True)
        return EXIT_KILLED
    except Exception as err:  # noqa: BLE001
        reason = f"{type(err).__name__}: {err}"
        _end_parent(client, parent, "FAILED", reason)
        click.echo(f"error: sweep failed: {' '.join(reason.split())}", err=True)
        return EXIT_FAILED
    crashed = [c for c in codes if c != 0]
    if crashed:
        click.echo(
            f"warning: {len(crashed)} of {len(codes)} workers exited with {crashed}", err=True
        )
    local = Path("sweeps") / spec.study
    outcome = finish_sweep(client, spec, parent, local)
    click.echo(
        f"study {spec.study!r}: {outcome.finished} finished trials, {outcome.complete} complete"
        + (f", {outcome.running} still running elsewhere" if outcome.running else "")
    )
    if outcome.best_config_path is None:
        if outcome.running == 0:
            _end_parent(client, parent, "FAILED", "no trial completed")
        click.echo(f"error: no trial of study {spec.study!r} completed", err=True)
        return EXIT_FAILED
    click.echo(
        f"best trial {outcome.best_trial}: {spec.metric}={outcome.best_value:.6g} "
        f"{outcome.best_params}"
    )
    click.echo(f"best config: {outcome.best_config_path} (and artifact sweep/best_config.yaml)")
    click.echo(
        f"next:     mlflow run . -e train --env-manager local -P config={outcome.best_config_path}"
    )
    return 0


def _end_parent(client, parent: str, status: str, reason: str) -> None:
    from mlflow_plugins.runs import fail_run

    try:
        if status == "FAILED":
            fail_run(client, parent, reason)
        else:
            client.set_terminated(parent, status)
    except Exception as err:  # noqa: BLE001
        click.echo(f"error: could not end parent run {parent}: {err}", err=True)


def _fail(launcher: str | None, message: str, code: int):
    message = " ".join(message.split())
    fail_launcher_run(message, run_id=launcher)
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry (`tvae-sweep`)."""
    run_as_program(cli, "tvae-sweep", argv)


if __name__ == "__main__":
    main()
