"""A tracking-server outage during training (issue 14, item 4), with a real `mlflow server`
(SQLite backend, proxied artifacts) killed with -9 and restarted on the same port and store.

MLflow's HTTP retries are turned off (MLFLOW_HTTP_REQUEST_MAX_RETRIES=0), so seconds of outage
are felt as a user feels minutes with the default ~4 min retry budget.

- server away mid-run, back before the end: the run ends FINISHED, every epoch's metrics are on
  it exactly once, with its model and training.log;
- server still away at the end, past $TVAE_SYNC_WAIT: one line naming the sync command, exit 1,
  the run left RUNNING with its journal; `python -m mlflow_plugins.sync` finishes it later, or
  a resume replays the journal first and trains on;
- what counts as "away" (waited out) and what as a refusal (reported at once).

Cost: ~1-2 min on 2 shared cores (two server starts per test, short trainings).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow_server import free_port, kill_server, start_server
from test_faults import config, errors, steps

from mlflow_plugins.store_writes import ArtifactStoreError, is_unreachable, store_write
from tvae import contract as C

REPO = Path(__file__).resolve().parents[1]
TRAIN = [sys.executable, "-m", "entrypoints.train"]
SYNC = [sys.executable, "-m", "mlflow_plugins.sync"]


def environment(root: Path, url: str, sync_wait: float) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "TVAE_"))}
    env.update(
        MLFLOW_TRACKING_URI=url,
        MLFLOW_DISABLE_TELEMETRY="true",
        MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL="1",
        MLFLOW_HTTP_REQUEST_MAX_RETRIES="0",
        MLFLOW_HTTP_REQUEST_TIMEOUT="5",
        TVAE_WORK_DIR=str(root / "work"),
        TVAE_SYNC_WAIT=str(sync_wait),
    )
    return env


def wait_for_step(client: MlflowClient, proc: subprocess.Popen, name: str, step: int) -> str:
    """The run id of experiment `name` once it has logged `step` (fails after 180 s)."""
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        exp = client.get_experiment_by_name(name)
        runs = client.search_runs([exp.experiment_id]) if exp else []
        if runs and step in steps(client, runs[0].info.run_id):
            return runs[0].info.run_id
        time.sleep(0.3)
    raise AssertionError(f"training never logged step {step}: {proc.communicate()}")


def assert_complete(client: MlflowClient, run_id: str, epochs: int) -> None:
    """FINISHED, each contract key once per epoch, the model and the training log."""
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    keys = [k for k in run.data.metrics if not k.startswith("system/")]
    assert C.TRAIN_LOSS in keys and len(keys) > 5
    for key in keys:
        logged = sorted(m.step for m in client.get_metric_history(run_id, key))
        assert logged == list(range(1, epochs + 1)), key
    assert run.data.tags[C.MODEL_ID]
    names = {f.path for f in client.list_artifacts(run_id)}
    assert {"training.log", "config.yaml", "training_summary.json"} <= names
    ckpts = {f.path for f in client.list_artifacts(run_id, "checkpoints")}
    assert "checkpoints/last.pt" in ckpts


def test_an_outage_mid_run_loses_nothing_and_the_run_finishes(tmp_path):
    port = free_port()
    server = start_server(tmp_path / "server", port)
    epochs = 12
    env = environment(tmp_path, server.url, sync_wait=120)
    client = MlflowClient(server.url)
    try:
        proc = train(env, config(tmp_path, "outage", epochs))
        try:
            run_id = wait_for_step(client, proc, "outage", 2)
            kill_server(server)
            away = time.time() * 1000
            time.sleep(8)
            assert proc.poll() is None, "training must go on while the server is away"
            back = time.time() * 1000
            server = start_server(tmp_path / "server", port)
            _, err = proc.communicate(timeout=300)
        finally:
            stop(proc)
        assert proc.returncode == 0, err[-3000:] + server.log_tail()
        assert "warning: tracking server unreachable" in err
        assert "tracking server back after" in err
        assert not errors(err)
        assert_complete(client, run_id, epochs)
        assert not (tmp_path / "work" / run_id).exists()  # everything reached the store
        # system metrics went on sampling while the server was away (1 s interval)
        cpu = client.get_metric_history(run_id, "system/cpu_utilization_percentage")
        during = [m for m in cpu if away < m.timestamp < back]
        assert len(during) >= 3, [(m.step, m.timestamp) for m in cpu]
        assert sorted(m.step for m in cpu) == list(range(len(cpu)))  # each sample once
    finally:
        kill_server(server)


def test_a_server_away_at_the_end_leaves_the_run_for_sync(tmp_path):
    port = free_port()
    server = start_server(tmp_path / "server", port)
    epochs = 4
    env = environment(tmp_path, server.url, sync_wait=3)
    client = MlflowClient(server.url)
    try:
        proc = train(env, config(tmp_path, "away", epochs))
        try:
            run_id = wait_for_step(client, proc, "away", 1)
            kill_server(server)
            _, err = proc.communicate(timeout=300)
        finally:
            stop(proc)
        assert proc.returncode == 1, err[-3000:]
        (line,) = errors(err)
        journal = tmp_path / "work" / run_id / "journal.jsonl"
        assert line.startswith(f"error: run {run_id}: tracking server unreachable; ")
        assert f"operations kept in {journal}" in line
        assert line.endswith(f"upload them later with: python -m mlflow_plugins.sync {run_id}")
        assert err.rstrip().endswith(line)  # the last thing said
        assert journal.is_file()

        server = start_server(tmp_path / "server", port)
        assert client.get_run(run_id).info.status == "RUNNING"  # resumable, not FAILED
        synced = sync(env, run_id)
        assert synced.returncode == 0, synced.stderr[-3000:] + server.log_tail()
        assert f"run {run_id} FINISHED" in synced.stdout
        assert_complete(client, run_id, epochs)
        assert not journal.parent.exists()  # everything reached the store
        again = sync(env, run_id)
        assert again.returncode == 2 and "no work folder" in again.stderr
        assert_complete(client, run_id, epochs)
    finally:
        kill_server(server)


def train(env: dict[str, str], cfg: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [*TRAIN, "--config", str(cfg)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def sync(env: dict[str, str], run_id: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*SYNC, run_id], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )


def test_a_resume_replays_a_journal_left_by_an_outage_first(tmp_path):
    port = free_port()
    server = start_server(tmp_path / "server", port)
    env = environment(tmp_path, server.url, sync_wait=2)
    client = MlflowClient(server.url)
    try:
        proc = train(env, config(tmp_path, "resumed", 3))
        try:
            run_id = wait_for_step(client, proc, "resumed", 1)
            kill_server(server)
            _, err = proc.communicate(timeout=300)
        finally:
            stop(proc)
        assert proc.returncode == 1 and "tracking server unreachable" in errors(err)[0]
        server = start_server(tmp_path / "server", port)
        resumed = subprocess.run(
            [*TRAIN, "--resume-from", run_id, "--epochs", "5"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert_complete(client, run_id, 5)  # the journal's epochs once, then the new ones
        assert client.get_run(run_id).data.tags[C.RESUMED_FROM_EPOCH] == "3"
    finally:
        kill_server(server)


def test_only_an_absent_server_counts_as_unreachable(tracking_uri, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with pytest.raises(MlflowException) as away:  # nothing listens on that port
        MlflowClient(f"http://127.0.0.1:{free_port()}").get_run("0" * 32)
    assert is_unreachable(away.value)
    with pytest.raises(MlflowException) as missing:  # the store answered: no such run
        MlflowClient(tracking_uri).get_run("0" * 32)
    assert not is_unreachable(missing.value)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    client = MlflowClient(tracking_uri)
    run = client.create_run(client.create_experiment("refused", str(blocker / "artifacts")))
    with pytest.raises(ArtifactStoreError) as refused:  # a store that refuses the write
        store_write(client, run.info.run_id, blocker, attempts=1, unreachable_raises=True)
    assert not is_unreachable(refused.value)


def test_a_server_away_before_the_run_exists_is_one_line_and_nothing_trained(tmp_path):
    """No run can be made without the server: one `error:` line naming it, exit 1, no
    traceback and no work folder."""
    url = f"http://127.0.0.1:{free_port()}"
    env = environment(tmp_path, url, sync_wait=3)
    proc = train(env, config(tmp_path, "never", 2))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err[-3000:]
    (line,) = errors(err)
    assert line.startswith(f"error: tracking server {url} unreachable before the run was created")
    assert "Traceback" not in err
    assert not (tmp_path / "work").exists() or not any((tmp_path / "work").iterdir())
