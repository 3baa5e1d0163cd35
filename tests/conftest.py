"""Shared fixtures: a real, temporary MLflow SQLite store per test that needs one."""

from __future__ import annotations

import os
import shutil
import sqlite3
import sys
import tempfile
from pathlib import Path

import pytest
from mlflow_server import migrated_sqlite_db

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # no spinning OpenMP workers on busy CPUs
# runs' local work folders (checkpoints until uploaded) away from the user's ~/.cache
os.environ.setdefault("TVAE_WORK_DIR", tempfile.mkdtemp(prefix="tvae-test-work-"))

REPO = Path(__file__).resolve().parents[1]
# the detection corpus's loader (tests/corpus/corpus.py) imports as `corpus` in every test module
sys.path.insert(0, str(REPO / "tests" / "corpus"))


def fresh_store(folder: Path) -> str:
    """An empty store at folder/mlflow.db, copied from one migrated template (migrations take
    seconds per DB), with experiment 0's artifacts under folder/mlruns/0 (where a new local
    store puts them); its URI."""
    shutil.copy(migrated_sqlite_db(), folder / "mlflow.db")
    with sqlite3.connect(folder / "mlflow.db") as db:
        db.execute(
            "UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0",
            (str(folder / "mlruns" / "0"),),
        )
    db.close()
    return f"sqlite:///{folder / 'mlflow.db'}"


@pytest.fixture
def tracking_uri(tmp_path, monkeypatch) -> str:
    """A fresh SQLite tracking store + artifact root in tmp_path, set as the process default."""
    import mlflow

    uri = fresh_store(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", uri)
    monkeypatch.chdir(tmp_path)
    _forget_fluent_state()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    yield uri
    while mlflow.active_run():
        mlflow.end_run()
    _forget_fluent_state()
    mlflow.set_tracking_uri(None)


def _forget_fluent_state() -> None:
    """MLflow's fluent API caches the active experiment (and model) per process; a later test's
    fresh store does not have them, so drop them between tests."""
    import mlflow
    import mlflow.tracking.fluent as fluent

    fluent._active_experiment_id = None
    for leaked in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID"):
        os.environ.pop(leaked, None)  # mlflow.set_experiment exports the first
    mlflow.clear_active_model()


@pytest.fixture
def store(tmp_path):
    """A fresh SQLite store, its artifacts and the runs' work folders under tmp_path, and the
    environment a subprocess needs to use them."""
    from mlflow import MlflowClient

    uri = fresh_store(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "TVAE_"))}
    env.update(
        MLFLOW_TRACKING_URI=uri,
        MLFLOW_DISABLE_TELEMETRY="true",
        MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL="1",
        TVAE_WORK_DIR=str(tmp_path / "work"),
    )
    return tmp_path, env, MlflowClient(uri)
