"""Faults a user meets (issue 14, items 6 and 8), with real processes and a real SQLite store.

- a trainer killed with -9 leaves its run RUNNING: resume refuses it while the owner lives and
  takes it over once the owner is dead;
- `mlflow run` without an environment manager on a machine without conda leaves a RUNNING run
  that never trained: resume says so in one line;
- an artifact store that refuses writes: a one-line error at the first failed epoch, the run
  stops FAILED, its last.pt stays in the local work folder and resume continues from it.

Cost: ~2 min on 2 shared cores (short trainings and refusals as subprocesses).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from mlflow import MlflowClient

from tvae import contract as C

REPO = Path(__file__).resolve().parents[1]
TRAIN = [sys.executable, "-m", "entrypoints.train"]


def config(tmp_path: Path, name: str, epochs: int) -> Path:
    """A tiny model, a checkpoint every epoch: seconds per epoch on a shared CPU."""
    data = yaml.safe_load((REPO / "configs" / "smoke.yaml").read_text())
    data["name"] = name
    data["model"].update(encoder_hidden=[32], decoder_hidden=[16], latent_dim=4)
    data["train"].update(epochs=epochs, batch_size=4096, checkpoint_every=1, device="cpu")
    for term in ("rank", "geodesic"):
        data["loss"][term]["pairs"] = 128
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def train(env: dict, *args: str, extra_env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*TRAIN, *args],
        cwd=REPO,
        env={**env, **(extra_env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )


def start_training(env: dict, cfg: Path) -> subprocess.Popen:
    """The trainer as a background process (output discarded)."""
    return subprocess.Popen(
        [*TRAIN, "--config", str(cfg)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def steps(client: MlflowClient, run_id: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, C.TRAIN_LOSS))


def wait_for_epoch(client: MlflowClient, proc: subprocess.Popen, experiment: str) -> str:
    """The id of the run in `experiment` once it has logged an epoch (fails after 180 s)."""
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        exp = client.get_experiment_by_name(experiment)
        runs = client.search_runs([exp.experiment_id]) if exp else []
        if runs and steps(client, runs[0].info.run_id):
            return runs[0].info.run_id
        time.sleep(0.3)
    raise AssertionError(f"training never logged an epoch: {proc.communicate()}")


def test_kill_9_leaves_a_running_run_that_resume_takes_over_once_its_owner_is_dead(store):
    root, env, client = store
    cfg = config(root, "killed", epochs=500)
    proc = start_training(env, cfg)
    try:
        run_id = wait_for_epoch(client, proc, "killed")
        owner = client.get_run(run_id).data.tags[C.OWNER]
        assert owner.startswith(f"{socket.gethostname()}:{proc.pid}:")
        refused = train(env, "--resume-from", run_id)  # the owner is alive
        assert refused.returncode == 2
        (line,) = errors(refused.stderr)
        assert "still alive" in line and f"pid {proc.pid}" in line
        assert f"kill -TERM {proc.pid}" in line
    finally:
        proc.kill()  # SIGKILL: nothing of the trainer runs after this
        proc.wait()
    assert client.get_run(run_id).info.status == "RUNNING"
    done = steps(client, run_id)[-1]
    resumed = train(env, "--resume-from", run_id, "--epochs", str(done + 2))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"left RUNNING by pid {proc.pid}" in resumed.stderr
    assert "taking it over" in resumed.stderr
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags[C.TOOK_OVER_FROM] == owner
    assert run.data.tags[C.OWNER] != owner  # the resume owns it now
    assert steps(client, run_id) == list(range(1, done + 3))
    assert not (root / "work" / run_id).exists()  # everything reached the store


@pytest.mark.slow
def test_a_launcher_run_whose_environment_never_built_is_refused_with_what_happened(store):
    root, env, client = store
    launched = subprocess.run(  # no --env-manager: MLflow wants conda, which is not there
        [sys.executable, "-m", "mlflow", "run", ".", "-e", "train", "-P", "epochs=1"],
        cwd=REPO,
        env={**env, "MLFLOW_CONDA_HOME": str(root / "no-conda")},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert launched.returncode != 0
    exps = [e.experiment_id for e in client.search_experiments()]
    (run,) = client.search_runs(exps)
    assert run.info.status == "RUNNING" and C.OWNER not in run.data.tags
    refused = train(env, "--resume-from", run.info.run_id)
    assert refused.returncode == 2
    (line,) = errors(refused.stderr)
    assert "training never started" in line and "start a new run" in line
    assert not (root / "work" / run.info.run_id).exists()  # the refusal left nothing behind


def test_a_store_that_refuses_writes_fails_at_the_start_in_one_line(store):
    root, env, client = store
    blocker = root / "not-a-dir"
    blocker.write_text("a regular file: nothing can be created under it, not even by root")
    client.create_experiment("unwritable", artifact_location=str(blocker / "artifacts"))
    done = train(
        env,
        "--config",
        str(config(root, "unwritable", epochs=3)),
        extra_env={"MLFLOW_EXPERIMENT_NAME": "unwritable"},
    )
    assert done.returncode == 1
    (line,) = errors(done.stderr)
    assert "the artifact store refused config.yaml" in line
    (run,) = client.search_runs([client.get_experiment_by_name("unwritable").experiment_id])
    assert run.info.status == "FAILED"
    assert "config.yaml" in run.data.tags[C.FAILURE_REASON]
    assert not steps(client, run.info.run_id)  # stopped before training
    assert not (root / "work" / run.info.run_id).exists()


def test_refused_checkpoint_uploads_stop_training_at_once_and_resume_from_the_local_copy(store):
    """The checkpoints folder of the run's artifacts is a regular file, so every checkpoint
    upload really fails (also as root); the metrics store works."""
    root, env, client = store
    exp = client.create_experiment("refused")
    run = client.create_run(exp)  # as `mlflow run` does: the trainer joins a run that exists
    run_id = run.info.run_id
    blocked = Path(run.info.artifact_uri) / "checkpoints"
    blocked.parent.mkdir(parents=True)
    blocked.write_text("in the way")
    epochs = 200
    failed = train(
        env, "--config", str(config(root, "refused", epochs)), extra_env={"MLFLOW_RUN_ID": run_id}
    )
    assert failed.returncode == 1, failed.stderr[-2000:]
    (line,) = errors(failed.stderr)
    assert "the artifact store refused checkpoints/" in line and "3 attempts" in line
    assert "(a checkpoint of epoch 1)" in line  # the first upload failed...
    reported = int(line.split("after epoch ", 1)[1].split(":", 1)[0])
    stamps = {m.step: m.timestamp for m in client.get_metric_history(run_id, C.TRAIN_LOSS)}
    waited_ms = stamps[reported] - stamps[1]
    assert reported < epochs and waited_ms < 10_000, line  # ~1.5 s of retries, then at once
    run = client.get_run(run_id)
    assert run.info.status == "FAILED"
    assert "artifact store refused checkpoints/" in run.data.tags[C.FAILURE_REASON]
    assert steps(client, run_id) == list(range(1, reported + 1))  # stopped where it said
    local = root / "work" / run_id / "checkpoints" / "last.pt"
    assert torch.load(local, weights_only=True)["epoch"] == reported

    blocked.unlink()  # the store is fixed; the run resumes from the local checkpoint
    resumed = train(env, "--resume-from", str(local), "--epochs", str(reported + 2))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and C.FAILURE_REASON not in run.data.tags
    assert run.data.tags[C.RESUMED_FROM_EPOCH] == str(reported)
    assert steps(client, run_id) == list(range(1, reported + 3))
    path = client.download_artifacts(run_id, "checkpoints/last.pt", str(root))
    assert torch.load(path, weights_only=True)["epoch"] == reported + 2
    assert run.data.tags[C.MODEL_ID]
    assert not local.parent.parent.exists()  # everything uploaded: the work folder is gone


def test_resume_from_a_file_outside_a_work_folder_is_one_line(store, tmp_path):
    _, env, _ = store
    stray = tmp_path / "elsewhere" / "last.pt"
    stray.parent.mkdir()
    torch.save({"epoch": 1}, stray)
    done = train(env, "--resume-from", str(stray))
    assert done.returncode == 2
    (line,) = errors(done.stderr)
    assert "not in a run's work folder" in line and "give the run id" in line
    assert train(env, "--resume-from", str(tmp_path / "gone.pt")).returncode == 2


def test_a_kill_right_after_a_checkpoint_write_loses_no_step(store):
    """The trainer writes last.pt before its epoch's metrics reach the store; a kill -9 in
    between left a resume continuing after a step that was never logged."""
    root, env, client = store
    cfg = config(root, "at_write", epochs=500)
    proc = start_training(env, cfg)
    try:
        run_id = wait_for_epoch(client, proc, "at_write")
        last = root / "work" / run_id / "checkpoints" / "last.pt"
        seen = last.stat().st_mtime_ns
        while proc.poll() is None and last.stat().st_mtime_ns == seen:
            time.sleep(0.001)
    finally:
        proc.kill()  # at the write of the next epoch's last.pt
        proc.wait()
    epoch = int(torch.load(last, weights_only=True)["epoch"])
    resumed = train(env, "--resume-from", run_id, "--epochs", str(epoch + 1))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert steps(client, run_id) == list(range(1, epoch + 2))
