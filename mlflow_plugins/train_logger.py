"""The MLflow TrainLogger: one run's metrics, checkpoints, console log, events and summary.

Metrics go out as `log_batch` calls (step = epoch) and checkpoints as artifact uploads, all on
one background thread of this logger, in order, so the training loop never waits on the store.
Epochs shorter than `METRICS_HOLD_S` share one call: a SQL store spends much of a 32-metric call
on fixed per-call work, on a core the two training threads use. Not MLflow's own async logging:
its worker polls its queue on a timer, which `end_run` waits out.

Checkpoints stay in the run's local work folder (the trainer writes them there); an upload that
still fails after retries stops the training at the next epoch boundary (see `ArtifactStoreError`).

The tracking server being away is not such a failure: every write is first kept in the run's
journal (`mlflow_plugins.journal`), the worker retries the oldest one until the server answers
again while training goes on, and the rest follows in order. At the end of training the logger
waits up to $TVAE_SYNC_WAIT seconds for the server, then gives up with the journal kept and the
run left RUNNING (resumable) for `python -m mlflow_plugins.sync <run id>`
(see `TrackingUnreachable`).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from functools import partial
from pathlib import Path
from typing import Any

import requests
from mlflow import MlflowClient
from mlflow.entities import Metric, RunTag
from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT
from mlflow.utils.validation import MAX_METRICS_PER_BATCH

from mlflow_plugins.context import TAG_CONFIG_NAME, git_commit, runtime_tags
from mlflow_plugins.journal import Journal
from mlflow_plugins.store_writes import (
    ArtifactStoreError,
    TrackingUnreachable,
    is_unreachable,
    set_tags,
    store_write,
    sync_wait_s,
)
from mlflow_plugins.system_sampler import SystemSampler
from tvae import contract as C
from tvae.callbacks import TrainLogger
from tvae.config import TVAEConfig

LOG_ARTIFACT = "training.log"
SUMMARY_ARTIFACT = "training_summary.json"
EVENTS_ARTIFACT = "events.json"
OUTAGE_BACKOFF_S = 0.5  # first wait between probes of an absent server, doubled up to the max
OUTAGE_BACKOFF_MAX_S = 5.0
METRICS_HOLD_S = 1.0  # an epoch's metrics wait for the next epoch's while sent sooner than this


class MlflowTrainLogger(TrainLogger):
    """Logs one training run's metrics, tags, checkpoints, console log and summary."""

    def __init__(
        self,
        run_id: str,
        workdir: Path,
        client: MlflowClient | None = None,
        skip_through_step: int = 0,
    ) -> None:
        self.run_id = run_id
        self.skip_through_step = skip_through_step  # resumed behind the last logged step
        self.client = client or MlflowClient()
        self.workdir = Path(workdir)
        self._jobs: list[Future] = []  # metric batches and uploads, oldest first
        self._uploads: dict[Future, int] = {}  # the checkpoint uploads among them -> epoch
        self.store_error: str | None = None  # the first upload that failed for good
        self.on_store_failure: Callable[[str], None] | None = None  # e.g. trainer.request_stop
        self._pending: dict[str, Path] = {}  # kind -> checkpoint written, not yet uploaded
        self._upload_at: int | None = None  # last.pt of this epoch waits for its metrics
        self._prewarm: threading.Thread | None = None
        self._lock = threading.Lock()
        self._order = threading.Lock()  # journal order = worker order, across threads
        self._held: list[Metric] = []  # journaled metrics not yet queued (short epochs)
        self._held_seq = 0  # the journal operation of the newest of them
        self._sent_at = 0.0  # monotonic time metrics were last queued
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tvae-mlflow")
        self.journal = Journal(self.workdir)
        self._offline_since: float | None = None  # when the server was first found away
        self._give_up = threading.Event()  # the end-of-training wait is over
        self.unreachable = False  # gave up on the server: the journal holds the rest
        self._log_lock = threading.Lock()  # training.log is written by the worker too
        self._events: list[dict[str, Any]] = []
        self._log_path = self.workdir / LOG_ARTIFACT
        self._log_file = self._log_path.open("a", encoding="utf-8")
        self.last_epoch = 0
        self.summary: dict[str, Any] = {}
        self.live: TrainLogger | None = None  # the live grokking follower, fed logged epochs
        self.sampler: SystemSampler | None = None  # system/* metrics, journaled like epochs

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
        self.sampler = SystemSampler(self.client, self.run_id, self.log_system)
        self.sampler.start()

    def log_system(self, metrics: dict[str, float], step: int) -> None:
        """One system-metrics aggregate (from the sampler's thread), journaled and sent in
        order with the epochs' metrics, so an outage delays it instead of ending the sampling."""
        self._send_metrics(metrics, step)

    def _send_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Journal one step's metrics (one timestamp); queue them with those held before, unless
        metrics were queued less than METRICS_HOLD_S ago (then they wait for the next step's
        or for any other operation, which queues them first)."""
        ts = int(time.time() * 1000)
        batch = [Metric(k, float(v), ts, int(step)) for k, v in metrics.items()]
        rows = [[m.key, m.value, m.timestamp, m.step] for m in batch]
        with self._order:
            self._held_seq = self.journal.append("metrics", metrics=rows)
            self._held += batch
            if time.monotonic() - self._sent_at >= METRICS_HOLD_S:
                self._release_held()

    def _release_held(self) -> None:
        """Queue the held metrics as one job (the caller holds `_order`)."""
        if not self._held:
            return
        batch, self._held = self._held, []
        self._sent_at = time.monotonic()
        write = partial(self._log_metrics, batch)
        self._jobs.append(self._worker.submit(self._apply, self._held_seq, write))

    def _queue(self, op: str, write: Callable[[], None], **fields: Any) -> Future:
        """Journal operation `op` and queue `write` on the worker, after the held metrics."""
        with self._order:
            self._release_held()
            seq = self.journal.append(op, **fields)
            job = self._worker.submit(self._apply, seq, write)
            self._jobs.append(job)
            return job

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        self.last_epoch = int(epoch)
        self._check_uploads(epoch)
        if epoch <= self.skip_through_step:  # already on the run: never log a step twice
            return
        self._send_metrics(metrics, epoch)
        self._upload_due(epoch)
        if self.live is not None:
            self.live.on_epoch_end(epoch, metrics)

    def write_tags(self, tags: dict[str, str], delete: list[str]) -> None:
        """Set and delete run tags on the worker, after the metrics queued before them (kept in
        the journal like them while the server is away)."""
        write = partial(set_tags, self.client, self.run_id, tags, list(delete))
        self._queue("tags", write, tags=tags, delete=list(delete))

    def echo_line(self, line: str) -> None:
        """A line for the console and training.log."""
        print(line, file=sys.stderr, flush=True)
        self.on_log_line(line)

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
            upload = partial(self._upload, file)
            job = self._queue("artifact", upload, path=str(file), artifact_path="checkpoints")
            self._uploads[job] = self.last_epoch

    def _check_uploads(self, epoch: int, training: bool = True) -> None:
        """At an epoch boundary: report the first upload that failed for good (one line on
        stderr and in training.log) and ask the trainer to stop. Never waits for an upload
        still in flight: a slow store must not slow training; it is seen at a later boundary."""
        if self.store_error is not None:
            return
        done = [f for f in self._uploads if f.done()]
        refused = (f for f in done if isinstance(f.exception(), ArtifactStoreError))
        failed = next(refused, None)  # TrackingUnreachable: kept in the journal, not failed
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
        with self._log_lock:
            if self._log_file.closed:
                return
            self._log_file.write(line.rstrip("\n") + "\n")
            self._log_file.flush()

    def on_train_end(self, status: str, summary: dict[str, Any]) -> None:
        self.summary = {"status": status, **summary}
        if self.live is not None:
            self.live.on_train_end(status, summary)

    # -- finishing ------------------------------------------------------------------------
    def _log_metrics(self, batch: list[Metric]) -> None:
        for i in range(0, len(batch), MAX_METRICS_PER_BATCH):
            chunk = batch[i : i + MAX_METRICS_PER_BATCH]
            self.client.log_batch(self.run_id, metrics=chunk, synchronous=True)

    def _upload(self, file: Path, artifact_path: str | None = "checkpoints") -> None:
        store_write(self.client, self.run_id, file, artifact_path, unreachable_raises=True)

    def _apply(self, seq: int, write: Callable[[], None]) -> None:
        """Run journal operation `seq` on the worker; while the server is away, probe it with
        backoff and try again (training goes on; later operations queue behind this one)."""
        delay = OUTAGE_BACKOFF_S
        while True:
            if self._give_up.is_set():
                raise TrackingUnreachable(f"operation {seq} kept in {self.journal.path}")
            if self._offline_since is None or self._server_up():
                try:
                    write()
                except Exception as err:
                    if not is_unreachable(err):
                        raise  # the store refused it: reported as before, left in the journal
                    self._went_offline(err)
                else:
                    self.journal.mark_done(seq)
                    if self._offline_since is not None:
                        self._came_back()
                    return
            self._give_up.wait(delay)
            delay = min(delay * 2, OUTAGE_BACKOFF_MAX_S)

    def _server_up(self) -> bool:
        """A cheap probe (GET /health, 2 s) of an HTTP tracking server, so that an absent one
        costs no full client retry budget per try; other stores are just tried again."""
        uri = self.client.tracking_uri
        if not uri.startswith(("http://", "https://")):
            return True
        try:
            return requests.get(f"{uri.rstrip('/')}/health", timeout=2).ok
        except requests.RequestException:
            return False

    def _went_offline(self, err: BaseException) -> None:
        if self._offline_since is not None:
            return
        self._offline_since = time.monotonic()
        why = " ".join(f"{type(err).__name__}: {err}".split())[:300]
        line = (
            f"warning: tracking server unreachable ({why}); training goes on, its metrics and "
            f"artifacts are kept in {self.journal.path} until the server is back"
        )
        print(line, file=sys.stderr, flush=True)
        self.on_log_line(line)

    def _came_back(self) -> None:
        away = time.monotonic() - (self._offline_since or time.monotonic())
        self._offline_since = None
        line = f"tracking server back after {away:.0f} s; replaying the journal in order"
        print(line, file=sys.stderr, flush=True)
        self.on_log_line(line)

    def _wait(self, jobs: list[Future]) -> None:
        """Wait for `jobs`; once the server has been away for $TVAE_SYNC_WAIT seconds of this
        wait, give up on it (the remaining operations stay in the journal)."""
        deadline: float | None = None
        for job in jobs:
            while True:
                try:
                    job.exception(timeout=0.25)
                    break
                except FutureTimeout:
                    pass
                if self._offline_since is None:
                    continue  # a slow but present store is waited for
                now = time.monotonic()
                deadline = deadline if deadline is not None else now + sync_wait_s()
                if now >= deadline:
                    self._give_up.set()
                    self.unreachable = True

    def flush(self) -> None:
        """Wait for every pending metric batch and checkpoint upload; re-raise the first
        metric error (a checkpoint that failed for good is `store_error`, not raised; an
        operation given up on with the server away is left in the journal, `unreachable`)."""
        with self._order:
            self._release_held()
            jobs, self._jobs = self._jobs, []
        self._wait(jobs)
        errors = [f.exception() for f in jobs]
        self._check_uploads(self.last_epoch, training=False)
        kept = (ArtifactStoreError, TrackingUnreachable)
        first = next((e for e in errors if e and not isinstance(e, kept)), None)
        if first is not None:
            raise first

    def drain(self) -> None:
        """Upload checkpoints still pending and wait for everything queued (idempotent): after
        it, `store_error` says whether every checkpoint reached the store."""
        self._upload_pending()
        self.flush()

    def pending(self) -> int:
        """How many operations the store has not confirmed (they are in the journal)."""
        return len(self.journal.pending())

    def close(self, summary_extra: dict[str, Any] | None = None) -> None:
        """drain(), then training.log, summary and events (kept in the work folder too)."""
        try:
            self.drain()
        finally:
            with self._log_lock:
                self._log_file.close()
        summary = {**self.summary, **(summary_extra or {})}
        (self.workdir / SUMMARY_ARTIFACT).write_text(json.dumps(summary, indent=2, default=str))
        (self.workdir / EVENTS_ARTIFACT).write_text(json.dumps(self._events, default=str))
        try:
            jobs = []
            for name in (LOG_ARTIFACT, SUMMARY_ARTIFACT, EVENTS_ARTIFACT):
                path = self.workdir / name
                if self.store_error:  # one attempt each: the store is known to be in trouble
                    try:
                        store_write(self.client, self.run_id, path, attempts=1)
                    except ArtifactStoreError as err:
                        self.store_error = self.store_error or str(err)
                    continue
                upload = partial(self._upload, path, None)
                jobs.append(self._queue("artifact", upload, path=str(path), artifact_path=None))
            self._wait(jobs)
            for job in jobs:
                if isinstance(job.exception(), ArtifactStoreError):
                    self.store_error = self.store_error or str(job.exception())
        finally:
            if self.sampler is not None:  # it samples while the end waits for the server too
                self.sampler.stop()
                with self._order:  # the aggregate it published on stopping may still be held
                    self._release_held()
                    jobs, self._jobs = self._jobs, []
                self._wait(jobs)
            self._worker.shutdown(wait=True)
            if self._prewarm is not None:  # two torch.export calls at once corrupt its state
                self._prewarm.join()
