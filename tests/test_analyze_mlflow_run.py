"""`mlflow run . -e analyze --env-manager local` end to end (subprocess, real SQLite store)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from test_analyze_cli import GROKKING, analysis_tags, expected_report, log_csv_run

from tvae.contract import FAILURE_REASON

REPO = Path(__file__).resolve().parents[1]


def _mlflow_run(tracking_uri: str, *params: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "mlflow", "run", str(REPO), "-e", "analyze"]
    cmd += ["--env-manager", "local"]
    for p in params:
        cmd += ["-P", p]
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "MLFLOW_DISABLE_TELEMETRY": "true"}
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_mlflow_run_analyze_tags_run_and_fails_cleanly_on_bad_input(tracking_uri):
    """The README's foreign-run example: a run that logs val_acc and train_loss groks."""
    client = MlflowClient()
    run_id = log_csv_run(GROKKING)
    foreign = "accuracy=val_acc,loss=train_loss"
    done = _mlflow_run(tracking_uri, f"run_id={run_id}", f"metric_map={foreign}")
    assert done.returncode == 0, done.stderr[-3000:]
    tags = analysis_tags(run_id)
    analyze_run = client.get_run(tags.pop("analysis.run_id"))
    assert tags == expected_report(GROKKING, foreign).tags()
    assert tags["grokking.events"] == "1" and 663 <= int(tags["grokking.first_epoch"]) <= 1091
    assert analyze_run.info.status == "FINISHED"
    assert analyze_run.data.tags["analysis.source_run_id"] == run_id
    assert analyze_run.data.params["run_id"] == run_id
    # `mlflow run` names its run at random; analyze names it after the run it analysed
    assert analyze_run.info.run_name == f"analyze-{client.get_run(run_id).info.run_name}"

    client.delete_run(run_id)
    before = {r.info.run_id for r in client.search_runs(["0"], run_view_type=3)}
    failed = _mlflow_run(tracking_uri, f"run_id={run_id}")
    assert failed.returncode != 0
    # our one line is the last thing the user reads before MLflow's own failure report
    lines = failed.stderr.strip().splitlines()
    assert lines[-2] == f"error: -P run_id: run '{run_id}' is deleted", failed.stderr
    assert "=== Run (ID" in lines[-1] and "failed ===" in lines[-1], failed.stderr
    (new,) = [r for r in client.search_runs(["0"], run_view_type=3) if r.info.run_id not in before]
    assert new.info.status == "FAILED"
    assert "is deleted" in new.data.tags[FAILURE_REASON]
    assert client.get_run(run_id).data.tags["analysis.run_id"] == analyze_run.info.run_id
