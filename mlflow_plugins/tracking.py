"""The run-level driver of training in MLflow: config and params in, the trainer run with the
MLflow logger (`mlflow_plugins.train_logger`), then the run's failure reason and best model.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.utils.validation import MAX_METRICS_PER_BATCH, MAX_PARAMS_TAGS_PER_BATCH

from mlflow_plugins.journal import Journal
from mlflow_plugins.store_writes import SYNC_COMMAND, TrackingUnreachable, store_write
from mlflow_plugins.train_logger import MlflowTrainLogger
from tvae import contract as C
from tvae.config import TVAEConfig, config_to_yaml, flatten_config
from tvae.interrupts import deferred_interrupt

_log = logging.getLogger(__name__)

CONFIG_ARTIFACT = "config.yaml"


def log_config(
    client: MlflowClient,
    run_id: str,
    config: TVAEConfig,
    workdir: Path,
    extra: dict[str, str] | None = None,
) -> None:
    """Dotted params (plus `extra`) + config YAML; keys already on the run (resume, `mlflow
    run`) are kept."""
    existing = client.get_run(run_id).data.params
    flat = {**flatten_config(config), **(extra or {})}
    new = [Param(k, v) for k, v in flat.items() if k not in existing]
    changed = sorted(k for k, v in flat.items() if k in existing and existing[k] != v)
    for i in range(0, len(new), MAX_PARAMS_TAGS_PER_BATCH):
        client.log_batch(run_id, params=new[i : i + MAX_PARAMS_TAGS_PER_BATCH])
    if changed:
        value = ",".join(f"{k}={flat[k]}" for k in changed)
        client.set_tag(run_id, C.PARAMS_CHANGED, value[:5000])
    path = workdir / CONFIG_ARTIFACT
    path.write_text(config_to_yaml(config))
    store_write(client, run_id, path)


def result_summary(result: Any) -> dict[str, Any]:
    """The JSON-able facts of a TrainResult for training_summary.json."""
    keys = (
        "status",
        "reason",
        "last_epoch",
        "best_epoch",
        "best_metrics",
        "final_metrics",
        "wall_seconds",
        "samples_per_sec",
    )
    return {k: getattr(result, k, None) for k in keys}


def train_in_run(
    config: TVAEConfig,
    run_id: str,
    workdir: Path,
    resume_checkpoint: Path | None = None,
    client: MlflowClient | None = None,
    on_trainer: Callable[[Any], None] | None = None,
    log_model: bool = True,
    echo: bool = True,
    remove_workdir: bool = False,
    parallel: Any = None,
) -> Any:
    """Train `config` inside the existing run `run_id`; return the TrainResult.

    Tags the run's owner (this process) and work folder, logs params/config, streams metrics
    and checkpoints, then the summary, the log and the best model (tags `model.id`,
    `model.uri`). The caller ends the run with result.status. `on_trainer` receives the
    Trainer before fit (e.g. to hook SIGTERM to request_stop). A checkpoint the store refused
    ends the run FAILED (`ArtifactStoreError`) with the work folder kept; with `remove_workdir`
    the folder is removed once everything reached the store. A tracking server still away
    after the end-of-training wait raises `TrackingUnreachable` (one line) after the run's end
    is journaled, the run left RUNNING for `sync`; a resume first replays such a journal.
    `parallel` (tvae.distributed.DataParallel): this is rank 0 of a data-parallel training.
    """
    import socket

    from mlflow_plugins.runs import owner_value
    from tvae.train import Trainer

    client = client or MlflowClient()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    owner = {C.OWNER: owner_value(), C.WORKDIR: f"{socket.gethostname()}:{workdir.resolve()}"}
    client.log_batch(run_id, tags=[RunTag(k, v) for k, v in owner.items()])
    dist_params = {}
    if parallel is not None:
        dist_params = {C.DIST_WORLD_SIZE: str(parallel.world), C.DIST_BACKEND: parallel.backend}
    log_config(client, run_id, config, workdir, dist_params)
    if Journal(workdir).pending():  # an earlier attempt gave up on the server, or was killed
        from mlflow_plugins.sync import replay

        replay(client, run_id, Journal(workdir), end=False)  # before the steps are counted
    skip = 0
    if resume_checkpoint is not None:
        import torch

        from mlflow_plugins.runs import last_logged_step

        state = torch.load(resume_checkpoint, map_location="cpu", weights_only=True)
        ckpt_epoch = int(state["epoch"])
        logged = last_logged_step(client, run_id)
        if logged > ckpt_epoch:  # killed hard after the last checkpoint
            skip = logged
            client.set_tag(run_id, C.SKIPPED_STEPS, f"{ckpt_epoch + 1}-{logged}")
        elif logged < ckpt_epoch and state.get("metrics"):
            # killed after the checkpoint was written but before its epoch's metrics were:
            # the checkpoint holds them (earlier gaps are named by analyze's steps check)
            ts = int(time.time() * 1000)
            batch = [Metric(k, float(v), ts, ckpt_epoch) for k, v in state["metrics"].items()]
            for i in range(0, len(batch), MAX_METRICS_PER_BATCH):
                client.log_batch(run_id, metrics=batch[i : i + MAX_METRICS_PER_BATCH])
    logger = MlflowTrainLogger(run_id, workdir, client, skip_through_step=skip)
    trainer = Trainer(config, workdir, logger, echo=echo, parallel=parallel)
    if config.train.live:
        logger.live = _live_follower(client, run_id, resume_checkpoint, logger, trainer)
    logger.on_store_failure = lambda _: trainer.request_stop()
    if on_trainer is not None:
        on_trainer(trainer)
    result = None
    try:
        result = trainer.fit(resume_checkpoint=resume_checkpoint)
    finally:
        # whatever happened, what was logged so far reaches the store
        with deferred_interrupt():
            try:
                logger.drain()
            finally:
                if result is not None and logger.store_error:
                    result.status, result.reason = "FAILED", logger.store_error
                logger.close(result_summary(result) if result is not None else {})
    if result is not None and logger.store_error:  # a last upload (the logs) may fail late
        result.status, result.reason = "FAILED", logger.store_error
    if logger.unreachable:  # the rest, and the run's end, wait in the journal for sync
        if result is not None:
            best = result.best_checkpoint
            logger.journal.append(
                "end",
                status=result.status,
                reason=result.reason,
                best_checkpoint=str(best) if best is not None else None,
                best_epoch=result.best_epoch,
                log_model=bool(log_model and not logger.store_error),
            )
        raise TrackingUnreachable(
            f"tracking server unreachable; {logger.pending()} operations kept in "
            f"{logger.journal.path}; upload them later with: {SYNC_COMMAND} {run_id}"
        )
    wrapped = False
    try:  # the training is over: a Ctrl-C now must not cost the run its model
        with deferred_interrupt():
            finish_run(
                client,
                run_id,
                result.status,
                result.reason,
                result.best_checkpoint,
                result.best_epoch,
                log_model and not logger.store_error,  # refused checkpoints: a resume logs it
            )
            wrapped = True
    except KeyboardInterrupt:
        _log.warning("interrupted after training: the model and status were written first")
    if remove_workdir and wrapped and not logger.store_error:
        shutil.rmtree(workdir, ignore_errors=True)  # the store holds all a resume needs
    return result


def _live_follower(
    client: MlflowClient, run_id: str, resume: Path | None, logger: MlflowTrainLogger, trainer: Any
) -> Any:
    """The in-training live grokking follower; a resume first reads the run's logged history."""
    from mlflow_plugins.history import load_history
    from mlflow_plugins.live_train import LiveTrainFollower

    return LiveTrainFollower(
        logger.write_tags,
        stop=lambda reason: trainer.request_stop(finished=reason),
        stop_after=trainer.config.train.stop_after_grokking,
        history=load_history(client, run_id)[0] if resume is not None else None,
        echo=logger.echo_line if trainer.echo else logger.on_log_line,  # quiet: the log only
    )


def finish_run(
    client: MlflowClient,
    run_id: str,
    status: str,
    reason: str | None,
    best_checkpoint: Path | str | None,
    best_epoch: int | None,
    log_model: bool,
) -> None:
    """What ends a trained run but its status (shared by training and `sync`): the failure
    reason set or cleared, and the best model logged from the local best.pt."""
    if status == "FAILED":
        client.set_tag(run_id, C.FAILURE_REASON, str(reason or "unknown")[:5000])
    elif C.FAILURE_REASON in client.get_run(run_id).data.tags:  # a resume got past it
        client.delete_tag(run_id, C.FAILURE_REASON)
    best = best_checkpoint
    if log_model and best is not None and Path(best).is_file() and best_epoch:
        from mlflow_plugins.model_logging import log_best_model

        log_best_model(Path(best), int(best_epoch), run_id=run_id)
