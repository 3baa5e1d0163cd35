"""compare over an experiment that holds other runs too, such as `Default` after a plain
`mlflow run`: runs without the compared metrics are skipped and named, not a failure, and an
experiment with no comparable run is one error line and a FAILED launcher run.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient
from test_compare import REPO, analysed, log_run, run_cli, synthetic_history

from entrypoints.compare import main


def foreign_and_failed_runs(client: MlflowClient, experiment_id: str) -> tuple[str, str]:
    """What else lands in an experiment such as Default: another project's run (rmse), and a
    `mlflow run -e train` that failed on bad input before logging any metric. An analyze
    launcher run is there too: it is this tool's own and is left out without a word."""
    theirs = log_run(client, experiment_id, "sklearn-fit", {"rmse": {0: 0.3}})
    failed = client.create_run(
        experiment_id, run_name="bad-lr", tags={"mlflow.project.entryPoint": "train"}
    ).info.run_id
    client.set_terminated(failed, "FAILED")
    tool = client.create_run(experiment_id, tags={"mlflow.project.entryPoint": "analyze"})
    client.set_terminated(tool.info.run_id, "FAILED")
    return theirs, failed


def test_experiment_default_compares_its_training_runs_and_names_the_skipped(tracking_uri, capsys):
    client = MlflowClient(tracking_uri)
    ours = log_run(
        client, "0", "v5-run", synthetic_history(list(range(1, 6)), 3, 0.3), analysed("Good", 3)
    )
    theirs, failed = foreign_and_failed_runs(client, "0")
    main(["--experiment", "Default", "--runs", "", "--filter", ""])
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("skipped 2 run(s) that log none of eval/coverage")
    assert f"sklearn-fit ({theirs})" in out[0] and f"bad-lr ({failed})" in out[0]
    assert out[1] == "Compared 1 run (best first):" and out[2].startswith(" 1. v5-run [Good]")
    compare_id = out[-1].split()[3].rstrip(":")
    compare_run = client.get_run(compare_id)
    assert compare_run.info.experiment_id == "0" and compare_run.data.tags["compare.runs"] == ours


def test_no_comparable_run_is_one_error_line_exit_2_and_a_failed_launcher_run(
    tracking_uri, capsys, monkeypatch
):
    client = MlflowClient(tracking_uri)
    exp = client.create_experiment("cmp")
    theirs, failed = foreign_and_failed_runs(client, exp)
    launcher = client.create_run(exp, tags={"mlflow.project.entryPoint": "compare"}).info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", launcher)  # as `mlflow run -e compare` starts it
    code, out, err = run_cli(capsys, "--experiment", "cmp")
    assert code == 2 and out == ""
    (line,) = err.strip().splitlines()
    assert line.startswith("error: no training runs in experiment 'cmp'; skipped 2 run(s)")
    assert theirs in line and failed in line
    run = client.get_run(launcher)
    assert run.info.status == "FAILED"
    assert run.data.tags["failure.reason"] == line.removeprefix("error: ")


@pytest.mark.slow
def test_mlflow_run_compare_on_the_default_experiment(tracking_uri):
    """The README's order: runs made by `mlflow run` without --experiment-name are in Default."""
    client = MlflowClient(tracking_uri)
    ours = log_run(
        client, "0", "v5-run", synthetic_history(list(range(1, 6)), 3, 0.3), analysed("Good", 3)
    )
    theirs, _ = foreign_and_failed_runs(client, "0")
    cmd = [sys.executable, "-m", "mlflow", "run", str(REPO), "-e", "compare"]
    cmd += ["--env-manager", "local", "-P", "experiment=Default"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"sklearn-fit ({theirs})" in done.stdout and " 1. v5-run [Good]" in done.stdout
    (launcher,) = [r for r in client.search_runs(["0"]) if r.data.tags.get("compare.runs") == ours]
    assert launcher.info.status == "FINISHED"
    assert launcher.data.tags["mlflow.project.entryPoint"] == "compare"
