"""`mlflow run . -e train` end to end, bad input through `mlflow run`, and SIGTERM.

Real subprocesses against one temporary SQLite store. Cost: ~40-60 s on 2 shared cores
(a 1-epoch smoke run, a rejected run, and a tiny run stopped by SIGTERM).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import fresh_store
from mlflow import MlflowClient

REPO = Path(__file__).resolve().parents[1]
MLFLOW = [sys.executable, "-m", "mlflow"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    uri = fresh_store(root)
    env = dict(os.environ)
    env.pop("MLFLOW_RUN_ID", None)
    env.pop("MLFLOW_EXPERIMENT_ID", None)
    env.update(
        MLFLOW_TRACKING_URI=uri,
        MLFLOW_DISABLE_TELEMETRY="true",
        MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL="1",
        TVAE_WORK_DIR=str(root / "work"),  # runs' local work folders
    )
    return root, env, MlflowClient(env["MLFLOW_TRACKING_URI"])


def all_runs(client: MlflowClient) -> list:
    ids = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(ids, max_results=1000)


def mlflow_run(env: dict, *params: str) -> subprocess.CompletedProcess:
    cmd = [*MLFLOW, "run", ".", "-e", "train", "--env-manager", "local"]
    for p in params:
        cmd += ["-P", p]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_mlflow_run_trains_and_logs_into_the_launched_run(store):
    _, env, client = store
    done = mlflow_run(env, "config=configs/smoke.yaml", "epochs=1", "batch_size=4096")
    assert done.returncode == 0, done.stderr[-2000:]
    (run,) = [r for r in all_runs(client) if r.data.params.get("config") == "configs/smoke.yaml"]
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "smoke-s0-lr8e-4"
    # `mlflow run` logged its -P strings; ours are the dotted resolved config, no collision
    assert run.data.params["epochs"] == "1" and run.data.params["train.epochs"] == "1"
    assert run.data.params["train.batch_size"] == "4096"
    assert run.data.tags["model.id"] and run.data.tags["model.step"] == "1"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "eval/coverage")]
    assert steps == [1]
    # started by `mlflow run`: the next steps are `mlflow run` commands too
    said = done.stdout + done.stderr
    assert (
        f"analyse:  mlflow run . -e analyze --env-manager local -P run_id={run.info.run_id}" in said
    )


@pytest.mark.slow
def test_mlflow_run_with_bad_parameter_leaves_failed_run_with_reason(store):
    _, env, client = store
    done = mlflow_run(env, "config=configs/smoke.yaml", "lr=fast")
    assert done.returncode != 0
    assert "error: Invalid value for '-P lr'" in done.stderr  # named as the user gave it
    bad = [r for r in all_runs(client) if r.data.params.get("lr") == "fast"]
    assert len(bad) == 1 and bad[0].info.status == "FAILED"
    assert "-P lr" in bad[0].data.tags["failure.reason"]
    assert not bad[0].data.metrics and "train.lr" not in bad[0].data.params
    assert not [r for r in all_runs(client) if r.info.status == "RUNNING"]


def long_config(tmp_path: Path, name: str) -> Path:
    """A tiny model set to train 500 epochs: long enough to be stopped mid-run."""
    data = yaml.safe_load((REPO / "configs" / "smoke.yaml").read_text())
    data["name"] = name
    data["model"].update(encoder_hidden=[32], decoder_hidden=[16], latent_dim=4)
    data["train"].update(epochs=500, batch_size=4096, checkpoint_every=1000)
    cfg = tmp_path / f"{name}.yaml"
    cfg.write_text(yaml.safe_dump(data))
    return cfg


def first_epoch_logged(client: MlflowClient, proc: subprocess.Popen, run_name: str):
    """The run named `run_name` once it has logged an epoch (fails after 180 s)."""
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        runs = [r for r in all_runs(client) if r.info.run_name == run_name]
        if runs and client.get_metric_history(runs[0].info.run_id, "train/loss"):
            return runs[0]
        time.sleep(0.5)
    raise AssertionError("training never logged an epoch")


def test_sigterm_saves_last_checkpoint_and_ends_run_killed(store, tmp_path):
    root, env, client = store
    cfg = long_config(tmp_path, "sigterm")
    proc = subprocess.Popen(
        [sys.executable, "-m", "entrypoints.train", "--config", str(cfg)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        run = first_epoch_logged(client, proc, "sigterm-s0-lr8e-4")
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out[-2000:]
    run = client.get_run(run.info.run_id)
    assert run.info.status == "KILLED"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert steps == list(range(1, max(steps) + 1)) and max(steps) < 500
    path = client.download_artifacts(run.info.run_id, "checkpoints/last.pt", str(tmp_path))
    assert torch.load(path, weights_only=True)["epoch"] == max(steps)


def test_ctrl_c_under_mlflow_run_ends_the_run_killed_not_failed(store, tmp_path):
    """MLflow's launcher marks the run FAILED when its command exits non-zero, over the
    trainer's KILLED; the run must read KILLED once the launcher is gone."""
    root, env, client = store
    cfg = long_config(tmp_path, "ctrlc")
    cmd = [*MLFLOW, "run", ".", "-e", "train", "--env-manager", "local", "-P", f"config={cfg}"]
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )
    try:
        run = first_epoch_logged(client, proc, "ctrlc-s0-lr8e-4")
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0
    deadline = time.time() + 30
    while time.time() < deadline and client.get_run(run.info.run_id).info.status != "KILLED":
        time.sleep(0.5)
    assert client.get_run(run.info.run_id).info.status == "KILLED", out[-2000:]
    path = client.download_artifacts(run.info.run_id, "checkpoints/last.pt", str(tmp_path))
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert torch.load(path, weights_only=True)["epoch"] == max(steps)
