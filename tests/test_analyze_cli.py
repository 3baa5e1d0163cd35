"""`tvae-analyze` in process against a real SQLite store, on runs logged from corpus CSVs.

Expected tags/report come from running `tvae.analysis.analyze` on the CSV itself; the test
checks that the MLflow path (history loading -> analysis -> tags/artifacts) reproduces them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from entrypoints.analyze import main as analyze_main
from mlflow_plugins.analyze_run import AnalyzeInputError, analyze_run
from tvae.analysis import Roles, analyze
from tvae.contract import ANALYSIS_TAGS, FAILURE_REASON

RUNS = Path(__file__).parent / "corpus" / "runs"
LR_DROP = RUNS / "blobs_step35.csv.gz"  # a classifier whose accuracy jumps when the LR drops
GROKKING = RUNS / "add53_f40_wd1.csv.gz"  # modular addition that groks at ~900 epochs
METRIC_MAP = "accuracy=val_acc,loss=train_loss,val_loss=val_loss,lr=lr"


def log_csv_run(csv: Path, *, end: str | None = "FINISHED", name: str = "fixture") -> str:
    """A run holding every column of `csv` as a metric history (step = epoch)."""
    client = MlflowClient()
    frame = pd.read_csv(csv, index_col="epoch")
    ts = int(time.time() * 1000)
    metrics = [
        Metric(key, float(value), ts + int(epoch), int(epoch))
        for key in frame.columns
        for epoch, value in frame[key].dropna().items()
    ]
    run = client.create_run(client.get_experiment_by_name("Default").experiment_id, run_name=name)
    for i in range(0, len(metrics), 1000):
        client.log_batch(run.info.run_id, metrics=metrics[i : i + 1000])
    if end:
        client.set_terminated(run.info.run_id, end)
    return run.info.run_id


def expected_report(csv: Path, metric_map: str = METRIC_MAP, status: str = "FINISHED"):
    frame = pd.read_csv(csv, index_col="epoch")
    return analyze(frame, Roles.from_metric_map(metric_map), run_status=status)


def invoke(*args: str):
    return CliRunner().invoke(analyze_main, list(args), catch_exceptions=False)


def analysis_tags(run_id: str) -> dict[str, str]:
    tags = MlflowClient().get_run(run_id).data.tags
    return {k: v for k, v in tags.items() if k in ANALYSIS_TAGS}


def assert_one_line_error(result, message: str) -> None:
    """The house error style: exit 2, one `error:` line, and it is the last line printed."""
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    errors = [line for line in lines if line.lower().startswith("error")]
    assert errors == [lines[-1]] and lines[-1].startswith("error: "), result.output
    assert message in lines[-1], result.output


def test_tags_report_plots_and_analyze_run(tracking_uri):
    client = MlflowClient()
    run_id = log_csv_run(LR_DROP)
    result = invoke("--run-id", run_id, "--metric-map", METRIC_MAP)
    assert result.exit_code == 0, result.output

    expected = expected_report(LR_DROP)
    tags = analysis_tags(run_id)
    analyze_run_id = tags.pop("analysis.run_id")
    assert tags == expected.tags()
    for candidate in expected.rejected:  # the summary names every rejected candidate
        assert candidate.reason in result.output
    assert "Registry: skipped" in result.output  # tier None < Good

    files = {Path(f.path).name for f in client.list_artifacts(run_id, "analysis")}
    assert "report.json" in files and any(f.endswith(".png") for f in files)
    local = client.download_artifacts(run_id, "analysis/report.json", ".")
    report = json.loads(Path(local).read_text())
    assert report["tags"] == expected.tags()
    assert len(report["candidates"]) == len(expected.candidates)
    assert all(c["verdict"] and c["reason"] for c in report["candidates"])
    assert report["registry"]["action"] == "skipped"

    own = client.get_run(analyze_run_id)
    assert own.info.status == "FINISHED"
    assert own.data.tags["analysis.source_run_id"] == run_id
    assert own.data.tags["result.tier"] == expected.tags()["tier"]
    assert not set(ANALYSIS_TAGS) & set(own.data.tags)  # tier filters find training runs only
    assert own.data.params["run_id"] == run_id and own.data.params["metric_map"] == METRIC_MAP
    own_files = {Path(f.path).name for f in client.list_artifacts(analyze_run_id, "analysis")}
    assert own_files == files
    assert client.get_run(run_id).info.status == "FINISHED"  # the training run is untouched


def test_rerun_replaces_tags_and_artifacts(tracking_uri):
    client = MlflowClient()
    run_id = log_csv_run(LR_DROP)
    stale = {key: "stale" for key in ANALYSIS_TAGS}
    for key, value in stale.items():
        client.set_tag(run_id, key, value)
    client.log_text(run_id, "old", "analysis/old_plot.png")

    first = invoke("--run-id", run_id, "--metric-map", METRIC_MAP)
    assert first.exit_code == 0, first.output
    tags_first = analysis_tags(run_id)
    files_first = sorted(f.path for f in client.list_artifacts(run_id, "analysis"))
    assert "analysis/old_plot.png" not in files_first
    expected = {**expected_report(LR_DROP).tags(), "analysis.run_id": tags_first["analysis.run_id"]}
    assert tags_first == expected  # stale contract tags the report does not set are gone

    second = invoke("--run-id", run_id, "--metric-map", METRIC_MAP)
    assert second.exit_code == 0, second.output
    tags_second = analysis_tags(run_id)
    assert tags_second.pop("analysis.run_id") != tags_first.pop("analysis.run_id")
    assert tags_second == tags_first
    assert sorted(f.path for f in client.list_artifacts(run_id, "analysis")) == files_first


def test_running_and_killed_runs_and_missing_roles(tracking_uri):
    client = MlflowClient()
    running = log_csv_run(LR_DROP, end=None)
    result = invoke("--run-id", running, "--metric-map", METRIC_MAP)
    assert result.exit_code == 0, result.output
    assert "RUNNING" in result.output
    assert client.get_run(running).info.status == "RUNNING"  # analysis never ends the run
    assert analysis_tags(running)["tier"] == "None"

    killed = log_csv_run(LR_DROP, end="KILLED")
    partial = "accuracy=val_acc,loss=train_loss"  # our default keys for the other roles
    result = invoke("--run-id", killed, "--metric-map", partial)
    assert result.exit_code == 0, result.output
    skipped = expected_report(LR_DROP, metric_map=partial, status="KILLED").skipped_roles
    assert set(skipped) == {"hierarchy", "quality", "grad_norm", "lr"}
    assert all(role in result.output for role in skipped)
    report = json.loads(
        Path(client.download_artifacts(killed, "analysis/report.json", ".")).read_text()
    )
    assert report["skipped_roles"] == skipped
    assert report["source_run"]["status"] == "KILLED"


BAD_YAML = "grokking: [unclosed\n"
UNKNOWN_KEY = "no_such_threshold: 3\n"


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("unknown_run", "no run"),
        ("deleted_run", "is deleted"),
        ("no_metrics", "has no metrics"),
        ("missing_key", "has no metric for accuracy=val_accuracy"),
        ("malformed_map", "--metric-map"),
        ("unknown_role", "unknown role"),
        ("bad_yaml", "--config"),
        ("unknown_threshold", "--config"),
        ("missing_config", "not found"),
        ("bad_tier", "not one of"),
        ("bad_bool", "not true or false"),
        ("bad_model_name", "--model-name: Invalid model name 'a/b'"),
        ("blank_run_id", "--run-id is required"),
    ],
)
def test_bad_input_one_line_nothing_written(tracking_uri, tmp_path, case, message):
    client = MlflowClient()
    run_id = log_csv_run(LR_DROP)
    args = ["--run-id", run_id, "--metric-map", METRIC_MAP]
    if case == "unknown_run":
        args[1] = "0" * 32
    elif case == "deleted_run":
        client.delete_run(run_id)
    elif case == "no_metrics":
        empty = client.create_run(client.get_run(run_id).info.experiment_id)
        run_id = args[1] = empty.info.run_id
    elif case == "missing_key":
        args[3] = "accuracy=val_accuracy,loss=train_loss"
    elif case == "malformed_map":
        args[3] = "accuracy"
    elif case == "unknown_role":
        args[3] = "speed=val_acc"
    elif case in ("bad_yaml", "unknown_threshold", "missing_config"):
        path = tmp_path / f"{case}.yaml"
        if case != "missing_config":
            path.write_text(BAD_YAML if case == "bad_yaml" else UNKNOWN_KEY)
        args += ["--config", str(path)]
    elif case == "bad_tier":
        args += ["--min-tier", "Great"]
    elif case == "bad_bool":
        args += ["--register", "maybe"]
    elif case == "bad_model_name":  # refused before the (slow) re-evaluation could start
        args += ["--model-name", "a/b", "--min-tier", "None"]
    elif case == "blank_run_id":  # what MLproject passes for an empty -P run_id=
        args[1] = ""
    runs_before = len(client.search_runs(["0"], run_view_type=3))

    result = CliRunner().invoke(analyze_main, args)
    assert_one_line_error(result, message)
    if case != "unknown_run":
        assert analysis_tags(run_id) == {}
        assert client.list_artifacts(run_id, "analysis") == []
    assert len(client.search_runs(["0"], run_view_type=3)) == runs_before  # no analyze run


@pytest.mark.parametrize(
    ("args", "reason"),
    [(["--min-tier", "Great"], "not one of"), (["--metric-map", "speed=x"], "unknown role")],
)
def test_launcher_run_ends_failed_with_reason(tracking_uri, monkeypatch, args, reason):
    """As under `mlflow run`: the pre-made analyze run (MLFLOW_RUN_ID) ends FAILED, with why."""
    client = MlflowClient()
    run_id = log_csv_run(LR_DROP)
    launcher = client.create_run(client.get_run(run_id).info.experiment_id).info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", launcher)
    result = CliRunner().invoke(analyze_main, ["--run-id", run_id, *args])
    assert_one_line_error(result, reason)
    own = client.get_run(launcher)
    assert own.info.status == "FAILED" and reason in own.data.tags[FAILURE_REASON]
    assert analysis_tags(run_id) == {}


def test_an_analyze_run_is_refused_and_left_as_it_was(tracking_uri):
    client = MlflowClient()
    run_id = log_csv_run(LR_DROP)
    assert invoke("--run-id", run_id, "--metric-map", METRIC_MAP).exit_code == 0
    analyze_run = analysis_tags(run_id)["analysis.run_id"]
    before = client.get_run(analyze_run)
    files = sorted(f.path for f in client.list_artifacts(analyze_run, "analysis"))
    runs_before = len(client.search_runs(["0"], run_view_type=3))

    result = CliRunner().invoke(analyze_main, ["--run-id", analyze_run])
    assert_one_line_error(result, f"is an analyze run (of training run {run_id})")
    after = client.get_run(analyze_run)
    assert after.data.tags == before.data.tags and "tier" not in after.data.tags
    assert sorted(f.path for f in client.list_artifacts(analyze_run, "analysis")) == files
    assert len(client.search_runs(["0"], run_view_type=3)) == runs_before


def test_python_callers_use_the_same_analysis_without_the_cli(tracking_uri):
    """`analyze_run` is the whole analysis: a notebook gets the report and the runs it wrote."""
    client = MlflowClient()
    run_id = log_csv_run(LR_DROP)
    outcome = analyze_run(client, run_id, metric_map=METRIC_MAP, register=False)
    assert outcome.report.tags() == expected_report(LR_DROP).tags()
    assert outcome.registry.action == "skipped" and "register=false" in outcome.summary()
    assert analysis_tags(run_id)["analysis.run_id"] == outcome.analyze_run_id
    own = client.get_run(outcome.analyze_run_id)
    assert own.info.status == "FINISHED" and own.data.params["register"] == "false"

    runs_before = len(client.search_runs(["0"], run_view_type=3))
    with pytest.raises(AnalyzeInputError, match="--min-tier"):
        analyze_run(client, run_id, min_tier="Great")
    assert len(client.search_runs(["0"], run_view_type=3)) == runs_before


def test_a_failing_write_ends_the_analyze_run_failed_with_why(tracking_uri):
    """After validation, a store that refuses a write leaves no FINISHED half-written run."""
    client = MlflowClient()
    run_id = log_csv_run(LR_DROP)
    artifacts = Path(client.get_run(run_id).info.artifact_uri.removeprefix("file://"))
    artifacts.parent.mkdir(parents=True, exist_ok=True)
    artifacts.write_text("a file where the run's artifact folder should be")

    result = CliRunner().invoke(analyze_main, ["--run-id", run_id, "--metric-map", METRIC_MAP])
    assert result.exit_code == 1, result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("error: analysis failed: ") and "Error" in last, result.output
    (own,) = [r for r in client.search_runs(["0"]) if r.info.run_id != run_id]
    assert own.info.status == "FAILED" and own.data.tags[FAILURE_REASON]
    assert analysis_tags(run_id) == {}
