"""`tvae-analyze` against a real `mlflow server` on 127.0.0.1: REST history, proxied artifacts."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pandas as pd
from click.testing import CliRunner
from mlflow.tracking import MlflowClient
from mlflow_server import mlflow_server
from test_analyze_cli import LR_DROP, METRIC_MAP, analysis_tags, expected_report, log_csv_run

from entrypoints.analyze import main as analyze_main
from mlflow_plugins.history import load_history


def test_analyze_through_a_real_server(tmp_path, monkeypatch):
    with mlflow_server(tmp_path / "server") as server:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
        monkeypatch.chdir(tmp_path)
        mlflow.set_tracking_uri(server.url)
        try:
            client = MlflowClient()
            run_id = log_csv_run(LR_DROP)
            history, _ = load_history(client, run_id)  # REST path: the public client pages
            csv = pd.read_csv(LR_DROP, index_col="epoch")
            assert sorted(history.columns) == sorted(csv.columns)
            assert (history.to_numpy() == csv[history.columns].to_numpy()).all()

            result = CliRunner().invoke(
                analyze_main, ["--run-id", run_id, "--metric-map", METRIC_MAP]
            )
            assert result.exit_code == 0, result.output + server.log_tail()
            tags = analysis_tags(run_id)
            tags.pop("analysis.run_id")
            assert tags == expected_report(LR_DROP).tags()
            local = client.download_artifacts(run_id, "analysis/report.json", str(tmp_path))
            assert json.loads(Path(local).read_text())["tags"] == tags
        finally:
            mlflow.set_tracking_uri(None)
