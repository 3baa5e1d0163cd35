"""Writes to the tracking store that may find it away or refusing, and what each outcome means.

An absent server (refused, reset, timed out, a gateway's 502/503/504) is waited out: the
training logger keeps every write in the run's journal and replays it when the server is back.
A store that refuses a file after retries (read-only, full) is an `ArtifactStoreError`.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import requests
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

UPLOAD_ATTEMPTS = 3  # an artifact write is tried this often before it counts as failed
UPLOAD_BACKOFF_S = 0.5  # wait before the second attempt, doubled before each later one
SYNC_WAIT_ENV = "TVAE_SYNC_WAIT"  # seconds the end of training waits for an absent server
DEFAULT_SYNC_WAIT_S = 120.0
SYNC_COMMAND = "python -m mlflow_plugins.sync"


def sync_wait_s() -> float:
    """$TVAE_SYNC_WAIT (seconds, >= 0), else the default."""
    try:
        return max(0.0, float(os.environ.get(SYNC_WAIT_ENV, DEFAULT_SYNC_WAIT_S)))
    except ValueError:
        return DEFAULT_SYNC_WAIT_S


class TrackingUnreachable(RuntimeError):
    """The tracking server stayed away past the end-of-training wait. Not a training failure:
    what is left waits in the run's journal, the run stays RUNNING, and the message (one line)
    names the command that uploads the rest."""


_GATEWAY = re.compile(r"error code (502|503|504)\b")


def is_not_found(err: BaseException) -> bool:
    """Whether the store answered that what was asked for (a run, a model, a version) does
    not exist, rather than failing."""
    return isinstance(err, MlflowException) and err.error_code == "RESOURCE_DOES_NOT_EXIST"


def is_unreachable(err: BaseException) -> bool:
    """Whether `err` means the server could not be reached (refused, reset, timed out, a
    gateway's 502/503/504) rather than that it refused the write: only the former is waited
    out. MLflow's REST client wraps the requests error in an MlflowException without `from`,
    so the implicit context is followed too."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(
            current,
            requests.exceptions.ConnectionError
            | requests.exceptions.Timeout
            | requests.exceptions.RetryError
            | ConnectionError,
        ):
            return True
        if isinstance(current, MlflowException):
            text = str(current)
            if " failed with exception " in text or "failed with timeout exception" in text:
                return True
            if _GATEWAY.search(text):
                return True
        current = current.__cause__ or current.__context__
    return False


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
    unreachable_raises: bool = False,
) -> None:
    """log_artifact with retries (a short backoff); ArtifactStoreError (one line) when the
    last attempt fails too. With `unreachable_raises` an absent server is raised as it is, at
    once, for the caller to wait out (it is not the store refusing the file)."""
    for attempt in range(1, attempts + 1):
        try:
            client.log_artifact(run_id, str(path), artifact_path)
            return
        except Exception as err:  # noqa: BLE001 - any store error (OSError, MlflowException)
            if unreachable_raises and is_unreachable(err):
                raise
            if attempt == attempts:
                where = f"{artifact_path}/{path.name}" if artifact_path else path.name
                why = " ".join(f"{type(err).__name__}: {err}".split())[:500]
                raise ArtifactStoreError(
                    f"the artifact store refused {where} ({attempts} attempts): {why}"
                ) from err
            time.sleep(UPLOAD_BACKOFF_S * 2 ** (attempt - 1))


def set_tags(
    client: MlflowClient, run_id: str, tags: dict[str, str], delete: list[str] | tuple = ()
) -> None:
    """Set ``tags`` in one batch and delete ``delete`` (a tag already gone is no error)."""
    from mlflow.entities import RunTag

    client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
    for key in delete:
        try:
            client.delete_tag(run_id, key)
        except MlflowException as err:
            if is_unreachable(err):
                raise
