"""Small run helpers: readable names, experiment choice, failing a run with why, and resume:
local work folders, run owners, finding the newest checkpoint."""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psutil
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.exceptions import MlflowException

from tvae import contract as C
from tvae.config import TVAEConfig

LAST_CHECKPOINT = "checkpoints/last.pt"
BEST_CHECKPOINT = "checkpoints/best.pt"
STEP_KEY = C.TRAIN_LOSS  # logged every epoch, so its last step is the last finished epoch
WORK_ROOT_ENV = "TVAE_WORK_DIR"  # where runs' local work folders live (see work_root)
RUN_MARKER = "run.json"  # in a work folder: the run id and store it belongs to


class ResumeError(ValueError):
    """A run cannot be resumed; the message is one line saying why."""


def format_lr(lr: float) -> str:
    """8e-4 -> '8e-4', 1.25e-3 -> '1.25e-3' (short, file- and UI-friendly)."""
    mantissa, exponent = f"{lr:.3e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def run_name(config: TVAEConfig) -> str:
    """A readable run name such as 'v5.12.4-s0-lr8e-4'."""
    return f"{config.name}-s{config.train.seed}-lr{format_lr(config.train.lr)}"


def experiment_name(config: TVAEConfig) -> str:
    """One experiment per config name unless MLFLOW_EXPERIMENT_NAME says otherwise."""
    return os.environ.get("MLFLOW_EXPERIMENT_NAME") or config.name


EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING_KIND = "custom_model_development"


def mark_model_training(client: MlflowClient, experiment_id: str) -> None:
    """Tag the experiment as model training so the MLflow UI opens its runs table and charts
    (untagged new experiments open in the GenAI view)."""
    if EXPERIMENT_KIND_TAG in client.get_experiment(experiment_id).tags:
        return
    try:
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND)
    except MlflowException:
        # two trainings starting at once: the other one's create_experiment wrote this tag
        # between our read and our write, and the store's tag upsert is not atomic (a UNIQUE
        # constraint error); the tag being there is all that matters
        tags = client.get_experiment(experiment_id).tags
        if tags.get(EXPERIMENT_KIND_TAG) != MODEL_TRAINING_KIND:
            raise


def ensure_experiment(client: MlflowClient, name: str) -> str:
    """Id of the live experiment `name`, created if missing.

    Safe when two trainings create it at once (mlflow.set_experiment is not: the loser of the
    race is left on the Default experiment).
    """
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            return client.create_experiment(name, tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING_KIND})
        except MlflowException as err:
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            exp = client.get_experiment_by_name(name)
    if exp.lifecycle_stage != "active":
        raise MlflowException(
            f"experiment '{name}' is deleted: restore it or set MLFLOW_EXPERIMENT_NAME"
        )
    mark_model_training(client, exp.experiment_id)
    return exp.experiment_id


def fail_run(
    client: MlflowClient,
    run_id: str,
    reason: str,
    *,
    only_running: bool = True,
    tag: str = C.FAILURE_REASON,
) -> bool:
    """End `run_id` FAILED with why in `failure.reason` (the contract tag; `tag` only for old
    callers). With `only_running` a run that already ended (an existing run given to `mlflow
    run --run-id`) is left as it was. Returns whether the run was marked.
    """
    if only_running and client.get_run(run_id).info.status != "RUNNING":
        return False
    client.set_tag(run_id, tag, " ".join(reason.split())[:5000])
    client.set_terminated(run_id, "FAILED")
    return True


def work_root() -> Path:
    """Where runs' local work folders live: $TVAE_WORK_DIR, else the user's cache
    ($XDG_CACHE_HOME or ~/.cache)/tvae/runs. Not the current directory, so `--resume-from
    <run id>` finds a run's folder from wherever it is typed."""
    root = os.environ.get(WORK_ROOT_ENV)
    if root:
        return Path(root).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "tvae" / "runs"


def work_dir(run_id: str) -> Path:
    """The run's local work folder (checkpoints, training.log) under `work_root()`."""
    return work_root() / run_id


def claim_work_dir(run_id: str, tracking_uri: str, folder: Path | None = None) -> Path:
    """Create the run's work folder with its `run.json` (run id and store), so a checkpoint
    path given to `--resume-from` names its run."""
    folder = Path(folder) if folder is not None else work_dir(run_id)
    folder.mkdir(parents=True, exist_ok=True)
    marker = {"run_id": run_id, "tracking_uri": tracking_uri}
    (folder / RUN_MARKER).write_text(json.dumps(marker))
    return folder


def resume_target(target: str) -> tuple[str, Path]:
    """(run id, work folder) of a `--resume-from` value: a run id, or a local last.pt (or its
    work folder) from a run whose checkpoint never reached the store."""
    path = Path(target).expanduser()
    looks_like_path = path.suffix == ".pt" or os.sep in target or path.exists()
    if not looks_like_path:
        return target, work_dir(target)
    if path.is_dir():
        path = path / LAST_CHECKPOINT
    if not path.is_file():
        raise ResumeError(f"--resume-from: no checkpoint file {path}")
    folder = path.parent.parent
    try:
        marker = json.loads((folder / RUN_MARKER).read_text())
        return str(marker["run_id"]), folder
    except (OSError, ValueError, KeyError, TypeError):
        raise ResumeError(
            f"--resume-from: {path} is not in a run's work folder (no readable {RUN_MARKER} in "
            f"{folder}); give the run id instead"
        ) from None


def owner_value() -> str:
    """This process as a run owner: host:pid:process start time (the pair pid + start time
    names one process even after the pid is reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{psutil.Process().create_time():.2f}"


def describe_owner(value: str) -> str:
    """'pid 123 on host h (started 2025-01-02 03:04:05)' for an owner tag value."""
    host, pid, started = _parse_owner(value) or (value, "?", None)
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if started else "?"
    return f"pid {pid} on host {host} (started {when})"


def _parse_owner(value: str) -> tuple[str, int, float] | None:
    try:
        host, pid, started = value.rsplit(":", 2)
        return host, int(pid), float(started)
    except ValueError:
        return None


def owner_alive(value: str) -> bool | None:
    """Whether the owning process still runs; None when that cannot be told from here (another
    host, or a value this version does not read)."""
    parsed = _parse_owner(value)
    if parsed is None or parsed[0] != socket.gethostname():
        return None
    _, pid, started = parsed
    try:
        # a reused pid belongs to a process started later; 1 s allows for boot-time rounding
        return abs(psutil.Process(pid).create_time() - started) < 1.0
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:  # exists, but not ours to inspect: treat as alive
        return True


def get_resumable_run(
    client: MlflowClient,
    run_id: str,
    local_checkpoint: Path | None = None,
    notice: Callable[[str], None] | None = None,
) -> Run:
    """The run to continue: it must exist, be active and hold a last checkpoint (in the store,
    or `local_checkpoint` from its work folder).

    A RUNNING run is taken over only when its recorded owner (`train.owner`) is a process of
    this host that is gone (killed -9, machine rebooted); `notice` gets a line saying so. A
    live owner, one on another host, or no owner at all (a launcher run whose environment never
    built) is refused with a line that says who holds it or what happened.
    """
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise ResumeError(f"--resume-from: no run with id '{run_id}'") from None
    if run.info.lifecycle_stage != "active":
        raise ResumeError(f"--resume-from: run '{run_id}' is deleted")
    names = {f.path for f in client.list_artifacts(run_id, "checkpoints")}
    has_local = local_checkpoint is not None and Path(local_checkpoint).is_file()
    has_checkpoint = LAST_CHECKPOINT in names or has_local
    took_over = _check_owner(run, has_checkpoint) if run.info.status == "RUNNING" else None
    if not has_checkpoint:
        where = Path(local_checkpoint).parent if local_checkpoint else work_dir(run_id)
        raise ResumeError(
            f"--resume-from: run '{run_id}' has no {LAST_CHECKPOINT} artifact and no local "
            f"checkpoint in {where}"
            + (" (its trainer died before its first checkpoint)" if took_over else "")
        )
    if took_over and notice is not None:
        notice(took_over)
    return run


def _check_owner(run: Run, has_checkpoint: bool) -> str:
    """ResumeError unless the RUNNING run's owner is known to be dead; then the line saying
    that this resume takes the run over."""
    run_id, owner = run.info.run_id, run.data.tags.get(C.OWNER)
    if owner is None and not has_checkpoint:
        raise ResumeError(
            f"--resume-from: run '{run_id}' is RUNNING but training never started in it (no "
            "owner, no checkpoint: e.g. `mlflow run` could not build its environment); there is "
            "nothing to resume: start a new run (mlflow run . -e train --env-manager local)"
        )
    if owner is None:
        raise ResumeError(
            f"--resume-from: run '{run_id}' is RUNNING with no recorded owner (trained by an "
            "older version), so whether it still trains cannot be told; if it does not, end it: "
            f"python -c \"import mlflow; mlflow.MlflowClient().set_terminated('{run_id}', "
            "'KILLED')\" and resume again"
        )
    alive = owner_alive(owner)
    if alive is None:
        raise ResumeError(
            f"--resume-from: run '{run_id}' is RUNNING, trained by {describe_owner(owner)}, "
            "which cannot be checked from this host: resume it there, or stop that process first"
        )
    if alive:
        pid = owner.rsplit(":", 2)[1]
        raise ResumeError(
            f"--resume-from: run '{run_id}' is RUNNING, trained by {describe_owner(owner)}, "
            f"which is still alive: stop it first (kill -TERM {pid} saves a checkpoint)"
        )
    return (
        f"--resume-from: run '{run_id}' was left RUNNING by {describe_owner(owner)}, which is "
        "gone: taking it over"
    )


def _epoch(path: Path) -> int:
    import torch

    return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"])


def download_checkpoints(client: MlflowClient, run_id: str, workdir: Path) -> dict[str, Path]:
    """Put the run's newest last.pt (with its best.pt) in workdir/checkpoints, where the
    trainer keeps them: the store's, unless the work folder already holds a newer one (kept
    there because its upload failed, or the trainer was killed before it was uploaded)."""
    dst = workdir / "checkpoints"
    dst.mkdir(parents=True, exist_ok=True)
    local = dst / "last.pt"
    names = {f.path for f in client.list_artifacts(run_id, "checkpoints")}
    if LAST_CHECKPOINT in names:
        with tempfile.TemporaryDirectory(dir=workdir, prefix=".download-") as tmp:
            stored = Path(client.download_artifacts(run_id, LAST_CHECKPOINT, tmp))
            if not local.is_file() or _epoch(stored) > _epoch(local):
                os.replace(stored, local)
                if BEST_CHECKPOINT in names:
                    best = client.download_artifacts(run_id, BEST_CHECKPOINT, tmp)
                    os.replace(best, dst / "best.pt")
            elif BEST_CHECKPOINT in names and not (dst / "best.pt").is_file():
                os.replace(client.download_artifacts(run_id, BEST_CHECKPOINT, tmp), dst / "best.pt")
    return {kind: dst / f"{kind}.pt" for kind in ("last", "best") if (dst / f"{kind}.pt").is_file()}


def last_logged_step(client: MlflowClient, run_id: str, key: str = STEP_KEY) -> int:
    """Highest step of `key` on the run (0 when never logged)."""
    history = client.get_metric_history(run_id, key)
    return max((m.step for m in history), default=0)
