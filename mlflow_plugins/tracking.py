"""The MLflow side of training: a TrainLogger that logs to one run, and the run-level driver.

Metrics go out as one `log_batch` per epoch (step = epoch) and checkpoints as artifact uploads,
all on one background thread of this logger, in order, so the training loop never waits on the
store. Not MLflow's own async logging: its worker polls its queue once a second, so `end_run`
waited up to 1 s for it (0.5 s on average), and it spent about 2 ms more per batch.

Checkpoints stay in the run's local work folder (the trainer writes them there); an upload that
still fails after retries stops the training at the next epoch boundary (see `ArtifactStoreError`).
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT
from mlflow.utils.validation import MAX_PARAMS_TAGS_PER_BATCH

from mlflow_plugins.context import TAG_CONFIG_NAME, git_commit, runtime_tags
from tvae import contract as C
from tvae.callbacks import TrainLogger
from tvae.config import TVAEConfig, config_to_yaml, flatten_config
from tvae.interrupts import deferred_interrupt

_log = logging.getLogger(__name__)

CONFIG_ARTIFACT = "config.yaml"
LOG_ARTIFACT = "training.log"
SUMMARY_ARTIFACT = "training_summary.json"
EVENTS_ARTIFACT = "events.json"
UPLOAD_ATTEMPTS = 3  # an artifact write is tried this often before it counts as failed
UPLOAD_BACKOFF_S = 0.5  # wait before the second attempt, doubled before each later one


class ArtifactStoreError(RuntimeError):
    """The artifact store refused a file after every retry (read-only, full, unreachable).

    Training stops at the next epoch boundary and the run ends FAILED with this as its
    `failure.reason`, rather than training on: every later checkpoint and the final model would
    fail the same way, so a run that kept training would look healthy while nothing of it could
    be resumed or served from the store. Stopping loses nothing: the checkpoints stay in the
    run's local work folder, and `--resume-from` continues from them once the store is fixed.
    """


def store_write(
    client: MlflowClient,
    run_id: str,
    path: Path,
    artifact_path: str | None = None,
    attempts: int = UPLOAD_ATTEMPTS,
) -> None:
    """log_artifact with retries (a short backoff); ArtifactStoreError (one line) when the
    last attempt fails too."""
    for attempt in range(1, attempts + 1):
        try:
            client.log_artifact(run_id, str(path), artifact_path)
            return
        except Exception as err:  # noqa: BLE001 - any store error (OSError, MlflowException)
            if attempt == attempts:
                where = f"{artifact_path}/{path.name}" if artifact_path else path.name
                why = " ".join(f"{type(err).__name__}: {err}".split())[:500]
                raise ArtifactStoreError(
                    f"the artifact store refused {where} ({attempts} attempts): {why}"
                ) from err
            time.sleep(UPLOAD_BACKOFF_S * 2 ** (attempt - 1))


def log_config(client: MlflowClient, run_id: str, config: TVAEConfig, workdir: Path) -> None:
    """Dotted params + config YAML; keys already on the run (resume, `mlflow run`) are kept."""
    existing = client.get_run(run_id).data.params
    flat = flatten_config(config)
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


class MlflowTrainLogger(TrainLogger):
    """Logs one training run's metrics, tags, checkpoints, console log and summary."""

    def __init__(
        self,
        run_id: str,
        workdir: Path,
        client: MlflowClient | None = None,
        synchronous: bool = False,
        skip_through_step: int = 0,
    ) -> None:
        self.run_id = run_id
        self.skip_through_step = skip_through_step  # resumed behind the last logged step
        self.client = client or MlflowClient()
        self.synchronous = synchronous
        self.workdir = Path(workdir)
        self._jobs: list[Future] = []  # metric batches and uploads, oldest first
        self._uploads: dict[Future, int] = {}  # the checkpoint uploads among them -> epoch
        self.store_error: str | None = None  # the first upload that failed for good
        self.on_store_failure: Callable[[str], None] | None = None  # e.g. trainer.request_stop
        self._pending: dict[str, Path] = {}  # kind -> checkpoint written, not yet uploaded
        self._upload_at: int | None = None  # last.pt of this epoch waits for its metrics
        self._prewarm: threading.Thread | None = None
        self._lock = threading.Lock()
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tvae-mlflow")
        self._events: list[dict[str, Any]] = []
        self._log_path = self.workdir / LOG_ARTIFACT
        self._log_file = self._log_path.open("a", encoding="utf-8")
        self.last_epoch = 0
        self.summary: dict[str, Any] = {}

    # -- TrainLogger callbacks -------------------------------------------------------------
    def on_train_start(self, info: dict[str, Any]) -> None:
        from mlflow_plugins.model_logging import prewarm_export

        self._prewarm = threading.Thread(target=prewarm_export, name="tvae-prewarm", daemon=True)
        self._prewarm.start()
        device = str(info["device"]) if info.get("device") is not None else None
        tags = runtime_tags(
            device=device,
            # the trainer names GPUs well; for CPUs, /proc/cpuinfo's model name says more
            device_name=info.get("device_name") if device and device.startswith("cuda") else None,
            amp=str(info.get("amp")) if info.get("amp") is not None else None,
        )
        config = info.get("config")
        if isinstance(config, TVAEConfig):
            tags[TAG_CONFIG_NAME] = config.name
        start = int(info.get("start_epoch") or 0)
        if start:
            tags[C.RESUMED_FROM_EPOCH] = str(start)
        commit = git_commit()
        if commit and MLFLOW_GIT_COMMIT not in self.client.get_run(self.run_id).data.tags:
            tags[MLFLOW_GIT_COMMIT] = commit  # MLflow sets it unless run as a console script
        self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in tags.items()])

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        self.last_epoch = int(epoch)
        self._check_uploads(epoch)
        if epoch <= self.skip_through_step:  # already on the run: never log a step twice
            return
        ts = int(time.time() * 1000)
        batch = [Metric(k, float(v), ts, int(epoch)) for k, v in metrics.items()]
        if self.synchronous:
            self._log_metrics(batch)
        else:
            self._jobs.append(self._worker.submit(self._log_metrics, batch))
        self._upload_due(epoch)

    def _upload_due(self, epoch: int) -> None:
        if self._upload_at is not None and epoch >= self._upload_at:
            self._upload_at = None
            self._upload_pending()

    def on_checkpoint(self, path: Path, epoch: int, kind: str) -> None:
        """Upload last.pt when the trainer writes it (every checkpoint_every epochs and at the
        end), with the newest best.pt if it changed since; best.pt alone only waits. The upload
        is queued behind the metrics of the checkpoint's epoch (one worker, in order), so a run
        killed at any moment never holds a checkpoint ahead of its logged steps.

        best.pt improves nearly every epoch; uploading each (a copy plus MLflow's Python under
        the trainer's GIL) measurably slowed epochs. No staging copies: the trainer replaces
        checkpoint files atomically, so an upload reads one complete version or the next.
        """
        with self._lock:
            self._pending[kind] = Path(path)
        if kind == "last":
            self._upload_at = int(epoch)
            self._upload_due(self.last_epoch)

    def _upload_pending(self) -> None:
        with self._lock:
            files = sorted(self._pending.values())
            self._pending.clear()
        if self.store_error is not None:  # they would fail too; the work folder keeps them
            return
        for file in files:
            job = self._worker.submit(self._upload, file)
            self._jobs.append(job)
            self._uploads[job] = self.last_epoch

    def _check_uploads(self, epoch: int, training: bool = True) -> None:
        """At an epoch boundary: report the first upload that failed for good (one line on
        stderr and in training.log) and ask the trainer to stop. Never waits for an upload
        still in flight: a slow store must not slow training; it is seen at a later boundary."""
        if self.store_error is not None:
            return
        done = [f for f in self._uploads if f.done()]
        failed = next((f for f in done if f.exception() is not None), None)
        written = self._uploads[failed] if failed is not None else None
        for f in done:
            del self._uploads[f]
        if failed is None:
            return
        self.store_error = str(failed.exception())
        stops = "training stops, " if training else ""
        line = (
            f"error: after epoch {epoch}: {self.store_error} (a checkpoint of epoch {written}); "
            f"{stops}checkpoints kept in {self.workdir / 'checkpoints'}"
        )
        print(line, file=sys.stderr, flush=True)
        self.on_log_line(line)
        if self.on_store_failure is not None:
            self.on_store_failure(self.store_error)

    def on_event(self, name: str, payload: dict[str, Any]) -> None:
        self._events.append({"name": name, "epoch": self.last_epoch, "payload": payload})

    def on_log_line(self, line: str) -> None:
        self._log_file.write(line.rstrip("\n") + "\n")
        self._log_file.flush()

    def on_train_end(self, status: str, summary: dict[str, Any]) -> None:
        self.summary = {"status": status, **summary}

    # -- finishing ------------------------------------------------------------------------
    def _log_metrics(self, batch: list[Metric]) -> None:
        self.client.log_batch(self.run_id, metrics=batch, synchronous=True)

    def _upload(self, file: Path) -> None:
        store_write(self.client, self.run_id, file, "checkpoints")

    def flush(self) -> None:
        """Wait for every pending metric batch and checkpoint upload; re-raise the first
        metric error (a checkpoint that failed for good is `store_error`, not raised)."""
        jobs, self._jobs = self._jobs, []
        errors = [f.exception() for f in jobs]
        self._check_uploads(self.last_epoch, training=False)
        first = next((e for e in errors if e and not isinstance(e, ArtifactStoreError)), None)
        if first is not None:
            raise first

    def drain(self) -> None:
        """Upload checkpoints still pending and wait for everything queued (idempotent): after
        it, `store_error` says whether every checkpoint reached the store."""
        self._upload_pending()
        try:
            self.flush()
        finally:
            self._worker.shutdown(wait=True)
            if self._prewarm is not None:  # two torch.export calls at once corrupt its state
                self._prewarm.join()

    def close(self, summary_extra: dict[str, Any] | None = None) -> None:
        """drain(), then training.log, summary and events (kept in the work folder too)."""
        try:
            self.drain()
        finally:
            self._log_file.close()
        summary = {**self.summary, **(summary_extra or {})}
        (self.workdir / SUMMARY_ARTIFACT).write_text(json.dumps(summary, indent=2, default=str))
        (self.workdir / EVENTS_ARTIFACT).write_text(json.dumps(self._events, default=str))
        for name in (LOG_ARTIFACT, SUMMARY_ARTIFACT, EVENTS_ARTIFACT):
            try:  # after a failure, one attempt each: the store is known to be in trouble
                attempts = 1 if self.store_error else UPLOAD_ATTEMPTS
                store_write(self.client, self.run_id, self.workdir / name, attempts=attempts)
            except ArtifactStoreError as err:
                self.store_error = self.store_error or str(err)


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
) -> Any:
    """Train `config` inside the existing run `run_id`; return the TrainResult.

    Tags the run's owner (this process) and work folder, logs params/config, streams metrics
    and checkpoints, then the summary, the log and the best model (tags `model.id`,
    `model.uri`). The caller ends the run with result.status. `on_trainer` receives the
    Trainer before fit (e.g. to hook SIGTERM to request_stop). A checkpoint the store refused
    ends the run FAILED (`ArtifactStoreError`) with the work folder kept; with `remove_workdir`
    the folder is removed once everything reached the store.
    """
    import socket

    from mlflow_plugins.runs import owner_value
    from tvae.train import Trainer

    client = client or MlflowClient()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    owner = {C.OWNER: owner_value(), C.WORKDIR: f"{socket.gethostname()}:{workdir.resolve()}"}
    client.log_batch(run_id, tags=[RunTag(k, v) for k, v in owner.items()])
    log_config(client, run_id, config, workdir)
    skip = 0
    if resume_checkpoint is not None:
        import torch

        from mlflow_plugins.runs import last_logged_step

        ckpt_epoch = int(torch.load(resume_checkpoint, weights_only=True)["epoch"])
        logged = last_logged_step(client, run_id)
        if logged > ckpt_epoch:  # killed hard after the last checkpoint
            skip = logged
            client.set_tag(run_id, C.SKIPPED_STEPS, f"{ckpt_epoch + 1}-{logged}")
    logger = MlflowTrainLogger(run_id, workdir, client, skip_through_step=skip)
    trainer = Trainer(config, workdir, logger, echo=echo)
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
    wrapped = False
    try:  # the training is over: a Ctrl-C now must not cost the run its model
        with deferred_interrupt():
            _wrap_up(client, run_id, result, log_model and not logger.store_error)
            wrapped = True
    except KeyboardInterrupt:
        _log.warning("interrupted after training: the model and status were written first")
    if remove_workdir and wrapped and not logger.store_error:
        shutil.rmtree(workdir, ignore_errors=True)  # the store holds all a resume needs
    return result


def _wrap_up(client: MlflowClient, run_id: str, result: Any, log_model: bool) -> None:
    """The run's failure reason (set or cleared) and its best model (not logged when the
    store refused the checkpoints: the model would fail the same way; a resume logs it)."""
    if result.status == "FAILED":
        client.set_tag(run_id, C.FAILURE_REASON, str(result.reason or "unknown")[:5000])
    elif C.FAILURE_REASON in client.get_run(run_id).data.tags:  # a resume got past it
        client.delete_tag(run_id, C.FAILURE_REASON)
    best = result.best_checkpoint
    if log_model and best is not None and Path(best).is_file() and result.best_epoch:
        from mlflow_plugins.model_logging import log_best_model

        log_best_model(Path(best), int(result.best_epoch), run_id=run_id)
