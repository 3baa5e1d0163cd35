"""`mlflow run . -e train` / `tvae-train`: validate, pick the run, train inside it, end it.

Everything the user typed is checked (click types, then the pydantic config) before anything is
written to MLflow. Under `mlflow run` the run already exists (MLFLOW_RUN_ID); on bad input that
run is ended FAILED with a `failure.reason` tag, so no RUNNING run is ever left behind.

Each run trains in its own local work folder (mlflow_plugins.runs.work_root: $TVAE_WORK_DIR,
else ~/.cache/tvae/runs/<run id>), which keeps its checkpoints until they reached the artifact
store and is removed once everything did; `--resume-from` takes a run id or a local last.pt.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

import click

from entrypoints._cli import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_KILLED,
    Blank,
    exit_with_error,
    name_launcher_run,
    permission_denied,
    run_as_program,
)
from entrypoints._ranks import join_group, launch_ranks, train_other_rank
from entrypoints._resume import Resume, resume_run
from tvae import contract as C
from tvae.config import ConfigError, TVAEConfig, load_config

DEFAULT_CONFIG = "configs/v5_12_4_extended_grokking.yaml"


def _overrides(**values: Any) -> tuple[dict[str, Any], dict[str, str]]:
    """The options given, as dotted config overrides, and the option each came from (errors
    blame the option, not the config file)."""
    given = {k: v for k, v in values.items() if v is not None}
    return (
        {f"train.{k}": v for k, v in given.items()},
        {f"train.{k}": f"--{k.replace('_', '-')}" for k in given},
    )


def _check_runtime(config: TVAEConfig, given: dict[str, str], nproc: int = 1) -> None:
    """Device and AMP mode must exist on this machine, and a GPU for each of `nproc` CUDA
    processes (ValueError with one line otherwise, naming the option that gave the value):
    a tensor is placed on the device, so one this torch build or machine lacks fails here,
    before anything is logged."""
    import torch

    from tvae.device import resolve_amp, resolve_device

    name = given.get("train.device", "train.device")
    try:
        device = resolve_device(config.train.device)
        torch.empty(1, device=device)
    except (RuntimeError, AssertionError, ValueError):
        have = ["cpu"]
        if torch.cuda.is_available():
            have.append(f"cuda:0-{torch.cuda.device_count() - 1}")
        if torch.backends.mps.is_available():
            have.append("mps")
        raise ValueError(
            f"{name}: device {config.train.device!r} is not available here (this machine has: "
            f"{', '.join(have)})"
        ) from None
    try:
        resolve_amp(config.train.amp, device)
    except ValueError as err:
        raise ValueError(f"{given['train.amp']}: {err}" if "train.amp" in given else err) from None
    gpus = torch.cuda.device_count() if device.type == "cuda" else nproc
    if nproc > gpus:
        raise ValueError(f"--nproc {nproc}: one GPU per process, and this machine has {gpus}")


def _start_run(config: TVAEConfig, resume_from: str | None) -> Any:
    """Resume run, the `mlflow run` run, or a new run in the config's experiment."""
    import mlflow
    from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME, MLFLOW_RUN_NOTE

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
            client.set_tag(launcher, C.CONTINUED_IN, resume_from)
            client.set_tag(launcher, MLFLOW_RUN_NOTE, f"Training continued in {resume_from}")
            client.set_terminated(launcher, "FINISHED")
        # system metrics: the train logger's own sampler, which an outage does not stop
        return mlflow.start_run(run_id=resume_from, log_system_metrics=False)
    if launcher:
        run = mlflow.start_run(run_id=launcher, log_system_metrics=False)
        mark_model_training(client, run.info.experiment_id)
        mlflow.set_tag(MLFLOW_RUN_NAME, run_name(config))
        return run
    if os.environ.get("MLFLOW_EXPERIMENT_NAME") or not os.environ.get("MLFLOW_EXPERIMENT_ID"):
        mlflow.set_experiment(experiment_id=ensure_experiment(client, experiment_name(config)))
    return mlflow.start_run(run_name=run_name(config), log_system_metrics=False)


def train(config: TVAEConfig, resume: Resume | None, parallel: Any = None) -> int:
    """Train inside the chosen run and end it with the trainer's status; returns exit code.
    With `parallel` this is rank 0 of a torchrun group: the only rank that logs."""
    import mlflow

    from mlflow_plugins.launcher import restore_after_launcher
    from mlflow_plugins.runs import claim_work_dir
    from mlflow_plugins.store_writes import ArtifactStoreError, TrackingUnreachable
    from mlflow_plugins.tracking import train_in_run

    holder: dict[str, Any] = {}

    def on_sigterm(signum: int, frame: Any) -> None:
        holder["signalled"] = True
        trainer = holder.get("trainer")
        if trainer is None:
            raise KeyboardInterrupt
        trainer.request_stop()

    signal.signal(signal.SIGTERM, on_sigterm)
    if parallel is not None:  # a Ctrl-C stops every rank at the same epoch boundary too
        signal.signal(signal.SIGINT, on_sigterm)
    launched = os.environ.get("MLFLOW_RUN_ID")  # end_run clears it
    run = _start_run(config, resume.run_id if resume else None)
    run_id = run.info.run_id
    status = "FAILED"
    try:
        uri = mlflow.get_tracking_uri()
        workdir = claim_work_dir(run_id, uri, resume.workdir if resume else None)
        if resume and resume.took_over:
            mlflow.set_tag(C.TOOK_OVER_FROM, resume.took_over)
        result = train_in_run(
            config,
            run_id,
            workdir,
            resume_checkpoint=resume.checkpoint if resume else None,
            on_trainer=lambda t: holder.__setitem__("trainer", t),
            remove_workdir=True,
            parallel=parallel,
        )
        status = result.status
    except KeyboardInterrupt:
        status = "KILLED"
        click.echo(f"run {run_id} KILLED before training started", err=True)
        return EXIT_KILLED
    except TrackingUnreachable as err:  # trained; the rest waits in the journal for sync
        status = "RUNNING"
        click.echo(f"error: run {run_id}: {err}", err=True)
        return EXIT_FAILED
    except ArtifactStoreError as err:  # before the first epoch: config.yaml was refused
        mlflow.MlflowClient().set_tag(run_id, C.FAILURE_REASON, str(err)[:5000])
        if resume is None:  # nothing in it to keep (a resume's folder holds its checkpoint)
            shutil.rmtree(workdir, ignore_errors=True)
        click.echo(f"error: run {run_id}: {err}", err=True)
        return EXIT_FAILED
    except BaseException as err:
        reason = f"{type(err).__name__}: {err}"
        mlflow.MlflowClient().set_tag(run_id, C.FAILURE_REASON, reason[:5000])
        raise
    finally:
        if status == "RUNNING":
            _leave_running()
        else:
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
    click.echo(_next_steps(run_id, status, by_mlflow_run=bool(launched)))
    return {"FINISHED": 0, "KILLED": EXIT_KILLED}.get(status, EXIT_FAILED)


def _leave_running() -> None:
    """Let go of the active run without ending it (sync ends it): MLflow's exit hook would
    end it FINISHED otherwise. end_run takes the run off the stack first, then writes the
    status (RUNNING: harmless) to a server known to be away: one quick try, not MLflow's
    minutes of retries."""
    import mlflow

    quick = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
    saved = {k: os.environ.get(k) for k in quick}
    os.environ.update(quick)
    try:
        mlflow.end_run(status="RUNNING")
    except Exception:  # noqa: BLE001 - the server is away; sync writes the real status
        pass
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _next_steps(run_id: str, status: str, by_mlflow_run: bool) -> str:
    """Where the run is and the commands to go on with it, as `mlflow run` commands when it
    started the trainer, else as the console scripts."""
    import mlflow

    client = mlflow.MlflowClient()
    exp = client.get_experiment(client.get_run(run_id).info.experiment_id)
    uri = mlflow.get_tracking_uri()
    lines = [f"experiment {exp.name!r} (id {exp.experiment_id}), store {uri}"]
    if by_mlflow_run:
        analyse = f"mlflow run . -e analyze --env-manager local -P run_id={run_id}"
        resume = f"mlflow run . -e train --env-manager local -P resume_from={run_id}"
        compare = f"mlflow run . -e compare --env-manager local -P experiment='{exp.name}'"
    else:
        analyse = f"tvae-analyze --run-id {run_id}"
        resume = f"tvae-train --resume-from {run_id}"
        compare = f"tvae-compare --experiment '{exp.name}'"
    lines.append(f"analyse:  {analyse}" if status == "FINISHED" else f"resume:   {resume}")
    lines.append(f"compare:  {compare}")
    if uri.startswith(("http://", "https://")):
        ui = f"open {uri} in a browser"  # a tracking server already serves the UI
    elif uri.startswith("sqlite:///mlflow.db"):
        ui = "mlflow ui"
    else:
        ui = f"mlflow ui --backend-store-uri {uri}"
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
    "--live",
    type=Blank(click.BOOL),
    default=None,
    help="Follow the run with the live grokking detector (grokking.live.* tags); default true.",
)
@click.option(
    "--nproc",
    type=Blank(click.IntRange(min=1, max=1024)),
    default=None,
    help="Processes for data-parallel training (one per GPU, or CPU processes with gloo), "
    "launched with torchrun; default 1.",
)
@click.option(
    "--resume-from",
    type=Blank(click.STRING),
    default=None,
    help="Run id whose checkpoints/last.pt to continue, in that same run (the newer of the "
    "store's and the run's local work folder's), or a local last.pt of a run.",
)
def cli(
    config_path: str,
    epochs: int | None,
    batch_size: int | None,
    lr: float | None,
    seed: int | None,
    amp: str | None,
    device: str | None,
    live: bool | None,
    nproc: int | None,
    resume_from: str | None,
) -> None:
    """Train TernaryVAE and log everything to MLflow."""
    parallel = join_group()
    if parallel is not None and not parallel.is_main:
        sys.exit(train_other_rank(parallel))
    overrides, given = _overrides(
        epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, amp=amp, device=device, live=live
    )
    resume = None
    made: Path | None = None  # a work folder this attempt created, removed if it is refused
    try:
        if resume_from:
            from mlflow_plugins.runs import resume_target

            folder = resume_target(resume_from)[1]
            made = None if folder.exists() else folder
            resume = resume_run(resume_from, overrides, given)
            config = resume.config
        else:
            if config_path and not Path(config_path).is_file():
                raise ConfigError(f"--config: config file not found: {config_path}")
            config = load_config(config_path or DEFAULT_CONFIG, overrides, given)
        _check_runtime(config, given, nproc or 1)
    except (ConfigError, ValueError) as err:
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)
        exit_with_error(str(err), EXIT_BAD_INPUT)
    if parallel is None and resume is not None and (line := resume.nothing_to_do()):
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)
        _note_launcher_run(resume.run_id, line)
        click.echo(line)
        sys.exit(0)
    if (nproc or 1) > 1 and parallel is None:
        sys.exit(launch_ranks(nproc, config.train.device))
    if parallel is not None:  # the other ranks train exactly this config and checkpoint
        checkpoint = resume.checkpoint.read_bytes() if resume else None
        parallel.broadcast((config.model_dump(mode="json"), checkpoint))
    try:
        code = train(config, resume, parallel)
    except Exception as err:
        refused = permission_denied(err) or _unreachable(err)  # one line, not a traceback
        if refused is None:
            raise
        exit_with_error(refused, EXIT_FAILED)
    if parallel is not None:
        parallel.close()
    sys.exit(code)


def _note_launcher_run(resumed: str, line: str) -> None:
    """Under `mlflow run` a resume with nothing to do still leaves the run the launcher made:
    its name and note say why it is empty (the resumed run is left as it is)."""
    launcher = os.environ.get("MLFLOW_RUN_ID")
    if not launcher or launcher == resumed:
        return
    from mlflow import MlflowClient
    from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE

    client = MlflowClient()
    name_launcher_run(client, f"resume-{resumed[:8]}-nothing-to-do")
    client.set_tag(launcher, MLFLOW_RUN_NOTE, line)


def _unreachable(err: BaseException) -> str | None:
    """A tracking server away before the run could be made (once it is, the journal keeps
    everything and the run waits): say so in one line; None for any other error."""
    import mlflow

    from mlflow_plugins.store_writes import is_unreachable

    if not is_unreachable(err):
        return None
    return (
        f"tracking server {mlflow.get_tracking_uri()} unreachable before the run was created; "
        "nothing was trained or written: start the server (or check MLFLOW_TRACKING_URI) "
        "and run again"
    )


def main(argv: list[str] | None = None) -> None:
    """Console-script entry (`tvae-train`)."""
    run_as_program(cli, "tvae-train", argv)


if __name__ == "__main__":
    main()
