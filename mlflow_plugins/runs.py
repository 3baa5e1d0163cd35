"""Small run helpers: readable names, experiment choice, resume look-ups, failing a run with why."""

from __future__ import annotations

import os
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.exceptions import MlflowException

from tvae import contract as C
from tvae.config import TVAEConfig

LAST_CHECKPOINT = "checkpoints/last.pt"
BEST_CHECKPOINT = "checkpoints/best.pt"
STEP_KEY = C.TRAIN_LOSS  # logged every epoch, so its last step is the last finished epoch


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


def get_resumable_run(client: MlflowClient, run_id: str) -> Run:
    """The run to continue; it must exist, be active and hold a last checkpoint."""
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise ResumeError(f"--resume-from: no run with id '{run_id}'") from None
    if run.info.lifecycle_stage != "active":
        raise ResumeError(f"--resume-from: run '{run_id}' is deleted")
    if run.info.status == "RUNNING":
        raise ResumeError(f"--resume-from: run '{run_id}' is still RUNNING")
    names = {f.path for f in client.list_artifacts(run_id, "checkpoints")}
    if LAST_CHECKPOINT not in names:
        raise ResumeError(f"--resume-from: run '{run_id}' has no {LAST_CHECKPOINT} artifact")
    return run


def download_checkpoints(client: MlflowClient, run_id: str, workdir: Path) -> dict[str, Path]:
    """Fetch the run's last.pt (and best.pt when present) into workdir/checkpoints."""
    dst = workdir / "checkpoints"
    dst.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    names = {f.path for f in client.list_artifacts(run_id, "checkpoints")}
    for kind, artifact in (("last", LAST_CHECKPOINT), ("best", BEST_CHECKPOINT)):
        if artifact in names:
            # a single file lands in dst itself, where the trainer keeps its checkpoints
            out[kind] = Path(client.download_artifacts(run_id, artifact, str(dst)))
    return out


def last_logged_step(client: MlflowClient, run_id: str, key: str = STEP_KEY) -> int:
    """Highest step of `key` on the run (0 when never logged)."""
    history = client.get_metric_history(run_id, key)
    return max((m.step for m in history), default=0)
