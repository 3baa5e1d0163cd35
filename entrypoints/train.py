"""`mlflow run . -e train` / `tvae-train`: validate, pick the run, train inside it, end it.

Everything the user typed is checked (click types, then the pydantic config) before anything is
written to MLflow. Under `mlflow run` the run already exists (MLFLOW_RUN_ID); on bad input that
run is ended FAILED with a `failure.reason` tag, so no RUNNING run is ever left behind.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

import click

from entrypoints._cli import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_KILLED,
    Blank,
    exit_with_error,
    run_as_program,
)
from tvae import contract as C
from tvae.config import ConfigError, TVAEConfig, config_from_dict, load_config

DEFAULT_CONFIG = "configs/v5_12_4_extended_grokking.yaml"


def _overrides(**values: Any) -> dict[str, Any]:
    return {f"train.{k}": v for k, v in values.items() if v is not None}


def _resume_config(
    run_id: str, workdir: Path, overrides: dict[str, Any]
) -> tuple[TVAEConfig, Path]:
    """Fetch the run's checkpoints and rebuild its config (plus overrides) from last.pt."""
    import torch
    from mlflow import MlflowClient

    from mlflow_plugins.runs import download_checkpoints, get_resumable_run
    from tvae.checkpoint import check_resumable

    client = MlflowClient()
    get_resumable_run(client, run_id)
    paths = download_checkpoints(client, run_id, workdir)
    state = torch.load(paths["last"], map_location="cpu", weights_only=True)
    check_resumable(state, f"--resume-from: run {run_id} last.pt")
    config = config_from_dict(state["config"], overrides, source=f"run {run_id} last.pt config")
    try:  # keep appending to the run's console log
        client.download_artifacts(run_id, "training.log", str(workdir))
    except Exception:
        pass
    return config, paths["last"]


def _check_runtime(config: TVAEConfig) -> None:
    """Device and AMP mode must exist on this machine (ValueError with one line otherwise):
    a tensor is placed on the device, so one this torch build or machine lacks fails here,
    before anything is logged."""
    import torch

    from tvae.device import resolve_amp, resolve_device

    device = resolve_device(config.train.device)
    try:
        torch.empty(1, device=device)
    except (RuntimeError, AssertionError):
        have = ["cpu"]
        if torch.cuda.is_available():
            have.append(f"cuda:0-{torch.cuda.device_count() - 1}")
        if torch.backends.mps.is_available():
            have.append("mps")
        raise ValueError(
            f"device {config.train.device!r} is not available here (this machine has: "
            f"{', '.join(have)})"
        ) from None
    resolve_amp(config.train.amp, device)


def _start_run(config: TVAEConfig, resume_from: str | None) -> Any:
    """Resume run, the `mlflow run` run, or a new run in the config's experiment."""
    import mlflow

    from mlflow_plugins.runs import (
        ensure_experiment,
        experiment_name,
        mark_model_training,
        run_name,
    )

    launcher = os.environ.get("MLFLOW_RUN_ID")
    client = mlflow.MlflowClient()
    existing = resume_from or launcher
    if existing:  # fluent start_run refuses a run outside the active experiment
        mlflow.set_experiment(experiment_id=client.get_run(existing).info.experiment_id)
    if resume_from:
        if launcher and launcher != resume_from:
            client.set_tag(launcher, "resume.continued_in", resume_from)
            client.set_tag(launcher, "mlflow.note.content", f"Training continued in {resume_from}")
            client.set_terminated(launcher, "FINISHED")
        return mlflow.start_run(run_id=resume_from, log_system_metrics=True)
    if launcher:
        run = mlflow.start_run(run_id=launcher, log_system_metrics=True)
        mark_model_training(client, run.info.experiment_id)
        mlflow.set_tag("mlflow.runName", run_name(config))
        return run
    if os.environ.get("MLFLOW_EXPERIMENT_NAME") or not os.environ.get("MLFLOW_EXPERIMENT_ID"):
        mlflow.set_experiment(experiment_id=ensure_experiment(client, experiment_name(config)))
    return mlflow.start_run(run_name=run_name(config), log_system_metrics=True)


def train(
    config: TVAEConfig, resume_from: str | None, resume_ckpt: Path | None, workdir: Path
) -> int:
    """Train inside the chosen run and end it with the trainer's status; returns exit code."""
    import mlflow

    from mlflow_plugins.launcher import restore_after_launcher
    from mlflow_plugins.tracking import train_in_run

    holder: dict[str, Any] = {}

    def on_sigterm(signum: int, frame: Any) -> None:
        holder["signalled"] = True
        trainer = holder.get("trainer")
        if trainer is None:
            raise KeyboardInterrupt
        trainer.request_stop()

    signal.signal(signal.SIGTERM, on_sigterm)
    launched = os.environ.get("MLFLOW_RUN_ID")  # end_run clears it
    run = _start_run(config, resume_from)
    run_id = run.info.run_id
    status = "FAILED"
    try:
        result = train_in_run(
            config,
            run_id,
            workdir,
            resume_checkpoint=resume_ckpt,
            on_trainer=lambda t: holder.__setitem__("trainer", t),
        )
        status = result.status
    except KeyboardInterrupt:
        status = "KILLED"
        click.echo(f"run {run_id} KILLED before training started", err=True)
        return EXIT_KILLED
    except BaseException as err:
        reason = f"{type(err).__name__}: {err}"
        mlflow.MlflowClient().set_tag(run_id, C.FAILURE_REASON, reason[:5000])
        raise
    finally:
        mlflow.end_run(status=status)
        if launched == run_id and (status == "KILLED" or holder.get("signalled")):
            restore_after_launcher(run_id, status)
    best = result.best_metrics or {}
    q = best.get(C.QUALITY)
    q_text = f", Q={q:.3f}" if isinstance(q, int | float) else ""
    click.echo(
        f"run {run_id} {status}: epoch {result.last_epoch}, best epoch {result.best_epoch}{q_text}"
        + (f" ({result.reason})" if result.reason else "")
    )
    click.echo(_next_steps(run_id, status))
    return {"FINISHED": 0, "KILLED": EXIT_KILLED}.get(status, EXIT_FAILED)


def _next_steps(run_id: str, status: str) -> str:
    """Where the run is and the commands to go on with it."""
    import mlflow

    client = mlflow.MlflowClient()
    exp = client.get_experiment(client.get_run(run_id).info.experiment_id)
    uri = mlflow.get_tracking_uri()
    lines = [f"experiment {exp.name!r} (id {exp.experiment_id}), store {uri}"]
    if status == "FINISHED":
        lines.append(f"analyse:  mlflow run . -e analyze --env-manager local -P run_id={run_id}")
    else:
        lines.append(f"resume:   mlflow run . -e train --env-manager local -P resume_from={run_id}")
    lines.append(
        f"compare:  mlflow run . -e compare --env-manager local -P experiment='{exp.name}'"
    )
    ui = (
        "mlflow ui"
        if uri.startswith("sqlite:///mlflow.db")
        else f"mlflow ui --backend-store-uri {uri}"
    )
    lines.append(f"look:     {ui}")
    return "\n".join(lines)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    default=DEFAULT_CONFIG,
    show_default=True,
    help="YAML config file (ignored with --resume-from: the run's config is used).",
)
@click.option("--epochs", type=Blank(click.IntRange(min=1)), default=None)
@click.option("--batch-size", type=Blank(click.IntRange(min=1, max=19683)), default=None)
@click.option("--lr", type=Blank(click.FloatRange(min=0, min_open=True, max=1)), default=None)
@click.option("--seed", type=Blank(click.IntRange(min=0, max=2**31 - 1)), default=None)
@click.option("--amp", type=Blank(click.Choice(["auto", "bf16", "fp16", "off"])), default=None)
@click.option(
    "--device", type=Blank(click.STRING), default=None, help="auto, cpu, cuda, cuda:N or mps."
)
@click.option(
    "--resume-from",
    type=Blank(click.STRING),
    default=None,
    help="Run id whose checkpoints/last.pt to continue, in that same run.",
)
def cli(
    config_path: str,
    epochs: int | None,
    batch_size: int | None,
    lr: float | None,
    seed: int | None,
    amp: str | None,
    device: str | None,
    resume_from: str | None,
) -> None:
    """Train TernaryVAE and log everything to MLflow."""
    overrides = _overrides(
        epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, amp=amp, device=device
    )
    workdir = Path(tempfile.mkdtemp(prefix="tvae-train-"))
    code = EXIT_FAILED
    try:
        resume_ckpt = None
        try:
            if resume_from:
                config, resume_ckpt = _resume_config(resume_from, workdir, overrides)
            else:
                config = load_config(config_path or DEFAULT_CONFIG, overrides)
            _check_runtime(config)
        except (ConfigError, ValueError) as err:
            exit_with_error(str(err), EXIT_BAD_INPUT)
        code = train(config, resume_from, resume_ckpt, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry (`tvae-train`)."""
    run_as_program(cli, "tvae-train", argv)


if __name__ == "__main__":
    main()
