"""The whole user flow against the deployment a team runs: PostgreSQL 15 as MLflow's backend
store, an S3 bucket (moto in server mode) behind `mlflow server --serve-artifacts`, Optuna's
study on the same PostgreSQL, and MLflow's basic-auth app on the same store.

Users only ever get MLFLOW_TRACKING_URI (plus their MLflow user in the auth part): no S3
endpoint, no cloud credentials, no database password. Train and sweep run as the commands a
user types (`python -m entrypoints...`); analyze, promote and compare are their click mains
in-process, as in the other tests. One stack serves the module, started once.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from stack_services import postgres_driver_problem
from team_stack import CLIENT_SECRETS_ENV, missing_parts, team_stack

REASON = missing_parts() or postgres_driver_problem()
if REASON:
    pytest.skip(f"team stack not available: {REASON}", allow_module_level=True)

import mlflow  # noqa: E402
from click.testing import CliRunner  # noqa: E402
from contract import CPU_CONTRACT_KEYS  # noqa: E402
from mlflow.entities import ViewType  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from tvae import contract as C  # noqa: E402
from tvae.analysis.tiers import TIER_ORDER  # noqa: E402

# one xdist worker runs the whole module (with `--dist loadgroup`), so the stack starts once
pytestmark = pytest.mark.xdist_group("team_stack")

REPO = Path(__file__).resolve().parents[1]
SMOKE = str(REPO / "configs" / "smoke.yaml")
SPACE = str(REPO / "configs" / "sweep_smoke.yaml")
EXPERIMENT = "smoke"  # train's default: the config's name
SWEEP_EXPERIMENT = "team-sweep"
MODEL = "TernaryVAE"
READER, READER_PASSWORD = "reader", "reader-Pw-7f3c1e9a"


@dataclass
class Command:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    def __str__(self) -> str:
        return (
            f"$ {' '.join(self.args)}\nexit {self.returncode} after {self.seconds:.1f}s\n"
            f"--- stdout ---\n{self.stdout[-3000:]}\n--- stderr ---\n{self.stderr[-3000:]}"
        )


def user_command(cwd: Path, env: dict[str, str], *args: str, timeout: float = 300) -> Command:
    """`python -m <args>` as a user's shell runs it, in its own process group (a sweep's
    worker processes too), killed with it on timeout."""
    argv = [sys.executable, "-m", *args]
    started = time.monotonic()
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        err += f"\n[killed after {timeout:.0f}s]"
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # nothing it started outlives it
    return Command(argv[2:], proc.returncode, out, err, time.monotonic() - started)


@pytest.fixture(scope="module")
def stack():
    with team_stack(with_auth=True) as running:
        yield running


@pytest.fixture(scope="module")
def user(stack):
    """This process as a user's shell: MLFLOW_TRACKING_URI only, in a folder of its own."""
    from conftest import _forget_fluent_state

    home = stack.root / "user"
    home.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        for key in CLIENT_SECRETS_ENV:
            mp.delenv(key, raising=False)
        mp.setenv("MLFLOW_TRACKING_URI", stack.tracking_uri)
        mp.chdir(home)
        _forget_fluent_state()
        mlflow.set_tracking_uri(stack.tracking_uri)
        mlflow.set_registry_uri(stack.tracking_uri)
        try:
            yield home
        finally:
            while mlflow.active_run():
                mlflow.end_run()
            _forget_fluent_state()
            mlflow.set_tracking_uri(None)
            mlflow.set_registry_uri(None)


@pytest.fixture(scope="module")
def client(stack, user) -> MlflowClient:
    return MlflowClient(stack.tracking_uri, registry_uri=stack.tracking_uri)


@pytest.fixture(scope="module")
def trained(stack, user) -> tuple[str, Command]:
    """One smoke training through the stack: (run id, the command)."""
    cmd = user_command(
        user,
        stack.client_env(),
        *("entrypoints.train", "--config", SMOKE, "--epochs", "2", "--device", "cpu"),
    )
    assert cmd.returncode == 0, f"{cmd}\n{stack.logs()}"
    found = re.search(r"^run ([0-9a-f]{32}) FINISHED", cmd.stdout, re.MULTILINE)
    assert found, str(cmd)
    return found.group(1), cmd


def _run_keys(stack, run) -> list[str]:
    """The bucket's keys under the run's artifact folder."""
    return [k for k in stack.bucket_keys() if f"/{run.info.run_id}/artifacts/" in f"/{k}"]


def test_training_run_lands_in_postgres_and_its_files_in_the_bucket(stack, client, trained):
    import torch

    run_id, cmd = trained
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == EXPERIMENT
    assert f"store {stack.tracking_uri}" in cmd.stdout
    assert f"look:     open {stack.tracking_uri} in a browser" in cmd.stdout  # not `mlflow ui`
    missing = [k for k in CPU_CONTRACT_KEYS if k not in run.data.metrics]
    assert not missing, missing
    assert run.data.params["train.epochs"] == "2"
    assert len(client.get_metric_history(run_id, C.TRAIN_LOSS)) == 2
    # clients only ever see the proxy: the run's artifacts live behind mlflow-artifacts:/
    assert run.info.artifact_uri.startswith("mlflow-artifacts:"), run.info.artifact_uri

    keys = _run_keys(stack, run)
    for name in ("checkpoints/last.pt", "checkpoints/best.pt", "config.yaml", "training.log"):
        assert any(k.endswith(f"/{run_id}/artifacts/{name}") for k in keys), (name, keys)
    model_id = run.data.tags[C.MODEL_ID]
    assert any(f"models/{model_id}/artifacts/MLmodel" in k for k in stack.bucket_keys())

    # what a client downloads through the server is the bucket's object, byte for byte
    local = client.download_artifacts(run_id, "checkpoints/last.pt", str(stack.root / "dl"))
    key = next(k for k in keys if k.endswith("checkpoints/last.pt"))
    assert Path(local).read_bytes() == stack.bucket_object(key)
    state = torch.load(local, map_location="cpu", weights_only=True)
    assert state["epoch"] == 2


def test_analyze_tags_the_run_and_promotes_its_model_in_the_registry(stack, client, trained):
    from entrypoints.analyze import main as analyze_main
    from entrypoints.promote import main as promote_main

    run_id, _ = trained
    result = CliRunner().invoke(analyze_main, ["--run-id", run_id, "--min-tier", "None"])
    assert result.exit_code == 0, f"{result.output}\n{stack.logs()}"
    assert "Registry: registered" in result.output, result.output

    tags = client.get_run(run_id).data.tags
    assert tags[C.TIER] in TIER_ORDER
    assert tags[C.GROKKING_EVENTS] == "0" and tags[C.GROKKING_SEVERITY] == "none"
    assert 0 <= float(tags[C.GROKKING_CONFIDENCE]) <= 0.5
    assert int(tags[C.PHASES_COUNT]) >= 1
    analysis = client.get_run(tags[C.ANALYSIS_RUN_ID])
    assert analysis.info.status == "FINISHED"
    assert analysis.data.tags["analysis.source_run_id"] == run_id
    report = client.download_artifacts(run_id, "analysis/report.json", str(stack.root / "dl"))
    written = {k: v for k, v in tags.items() if k in C.ANALYSIS_TAGS and k != C.ANALYSIS_RUN_ID}
    assert json.loads(Path(report).read_text())["tags"] == written
    assert any(k.endswith(f"/{run_id}/artifacts/analysis/report.json") for k in stack.bucket_keys())

    # registry (README "Registry and promotion"): one version, candidate and champion on it
    (version,) = client.search_model_versions(f"name = '{MODEL}' and run_id = '{run_id}'")
    assert version.tags[C.TIER] == tags[C.TIER]
    for alias in ("candidate", "champion"):
        assert client.get_model_version_by_alias(MODEL, alias).version == version.version
    again = CliRunner().invoke(promote_main, ["--version", version.version, "--min-tier", "None"])
    assert again.exit_code == 0, again.output
    assert f"version {version.version} already is champion; nothing changed" in again.output

    # the champion serves through the proxy, no S3 credentials on this side
    import pandas as pd

    model = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
    out = model.predict(pd.DataFrame([[0] * 9, [1, -1, 0, 0, 1, 1, -1, 0, 0]]))
    assert list(out.columns[:2]) == ["radius_A", "radius_B"] and len(out) == 2


def test_compare_over_the_experiment(stack, client, trained, capsys):
    from entrypoints.compare import main as compare_main

    run_id, _ = trained
    compare_main(["--experiment", EXPERIMENT, "--runs", "", "--filter", ""])
    out = capsys.readouterr().out
    assert "Compared 1 run (best first):" in out, out
    name = client.get_run(run_id).data.tags["mlflow.runName"]
    assert re.search(rf"^ 1\. {re.escape(name)} \[", out, re.MULTILINE), out
    compare_id = re.search(r"Logged to run ([0-9a-f]{32})", out).group(1)
    names = {f.path for f in client.list_artifacts(compare_id, "compare")}
    assert {"compare/table.csv", "compare/ranking.txt"} <= names, names
    table = f"/{compare_id}/artifacts/compare/table.csv"
    assert any(k.endswith(table) for k in stack.bucket_keys())


def test_sweep_with_two_workers_shares_one_study_on_postgres(stack, client, user):
    import optuna

    storage = stack.optuna_url()
    cmd = user_command(
        user,
        stack.client_env(MLFLOW_EXPERIMENT_NAME=SWEEP_EXPERIMENT),
        *("entrypoints.sweep", "--space", SPACE, "--config", SMOKE),
        *("--trials", "4", "--seeds", "1", "--workers", "2", "--storage", storage),
        timeout=400,
    )
    assert cmd.returncode == 0, f"{cmd}\n{stack.logs()}"
    assert stack.postgres.password not in cmd.stdout + cmd.stderr

    study = optuna.load_study(study_name="sweep_smoke", storage=storage)
    assert sorted(t.number for t in study.trials) == [0, 1, 2, 3]
    assert all(t.state.name == "COMPLETE" for t in study.trials)

    exp = client.get_experiment_by_name(SWEEP_EXPERIMENT)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    parent_id = parent.info.run_id
    assert parent.info.status == "FINISHED"
    children = [r for r in runs if r.info.run_id != parent_id]
    assert children and all(r.data.tags["mlflow.parentRunId"] == parent_id for r in children)
    training = [r for r in children if C.SWEEP_SEED in r.data.tags]
    assert sorted(r.data.tags[C.SWEEP_TRIAL] for r in training) == ["0", "1", "2", "3"]
    assert all(r.info.status == "FINISHED" and C.MODEL_ID in r.data.tags for r in training)
    for run in training:
        assert _run_keys(stack, run), f"nothing of run {run.info.run_id} in the bucket"

    masked = parent.data.tags[C.SWEEP_STORAGE]
    assert stack.postgres.password not in masked
    assert masked == storage.replace(f":{stack.postgres.password}@", ":***@")
    assert parent.data.tags[C.SWEEP_BEST_TRIAL] == str(study.best_trial.number)


# ------------------------------------------------------------------ basic auth


@pytest.fixture(scope="module")
def reader(stack, client, trained):
    """A user with READ on the training run's experiment only (default_permission is
    NO_PERMISSIONS), made by the admin through MLflow's AuthServiceClient."""
    pytest.importorskip("flask_wtf", reason="MLflow's basic-auth app needs mlflow[auth]")
    from mlflow.server import get_app_client

    auth = stack.auth.wait()
    run_id, _ = trained
    experiment_id = client.get_run(run_id).info.experiment_id
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_USERNAME", auth.admin_username)
        mp.setenv("MLFLOW_TRACKING_PASSWORD", auth.admin_password)
        admin = get_app_client("basic-auth", tracking_uri=auth.url)
        admin.create_user(READER, READER_PASSWORD)
        admin.grant_user_permission(READER, "experiment", experiment_id, "READ")
    stack.secrets.append(READER_PASSWORD)
    return auth, experiment_id


@dataclass
class ReaderAttempts:
    train: Command
    analyze: Command
    runs_before: set[str]
    runs_after: set[str]
    tags_before: dict[str, str]
    tags_after: dict[str, str]


@pytest.fixture(scope="module")
def reader_attempts(stack, client, user, trained, reader) -> ReaderAttempts:
    """As the READ-only user: train into the experiment, and analyze its run."""
    auth, experiment_id = reader
    run_id, _ = trained
    env = stack.client_env(
        auth.url,
        MLFLOW_TRACKING_USERNAME=READER,
        MLFLOW_TRACKING_PASSWORD=READER_PASSWORD,
        MLFLOW_EXPERIMENT_NAME=EXPERIMENT,
    )

    def runs() -> set[str]:
        found = client.search_runs([experiment_id], run_view_type=ViewType.ALL, max_results=1000)
        return {r.info.run_id for r in found}

    # the reader may read: the same run through the auth server, with the reader's password
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_USERNAME", READER)
        mp.setenv("MLFLOW_TRACKING_PASSWORD", READER_PASSWORD)
        assert MlflowClient(auth.url).get_run(run_id).info.status == "FINISHED"

    before, tags_before = runs(), client.get_run(run_id).data.tags
    train = user_command(
        user, env, "entrypoints.train", "--config", SMOKE, "--epochs", "1", "--device", "cpu"
    )
    analyze = user_command(user, env, "entrypoints.analyze", "--run-id", run_id)
    return ReaderAttempts(
        train, analyze, before, runs(), tags_before, client.get_run(run_id).data.tags
    )


def test_a_read_only_user_can_neither_train_nor_analyze_and_writes_nothing(reader_attempts):
    tried = reader_attempts
    assert tried.train.returncode != 0, str(tried.train)
    assert tried.analyze.returncode != 0, str(tried.analyze)
    assert tried.runs_after == tried.runs_before  # no run made, not even a FAILED one
    assert tried.tags_after == tried.tags_before  # analyze tagged nothing
    for cmd in (tried.train, tried.analyze):
        assert READER_PASSWORD not in cmd.stdout + cmd.stderr


def test_a_read_only_user_gets_one_error_line_naming_the_missing_permission(reader_attempts):
    for cmd in (reader_attempts.train, reader_attempts.analyze):
        lines = cmd.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), str(cmd)
        assert "EDIT" in lines[0] and READER in lines[0], lines[0]
        assert "Traceback" not in cmd.stdout + cmd.stderr


def test_no_credential_reaches_any_run_experiment_or_model(stack, client, trained):
    """Database, S3 and MLflow passwords stay with the server and the users: none is in any
    param or tag the tests' commands wrote."""
    secrets = [s for s in stack.secrets if s]
    assert stack.postgres.password in secrets
    values: list[tuple[str, str]] = []
    for exp in client.search_experiments(view_type=ViewType.ALL):
        values += [(f"experiment {exp.name} tag {k}", v) for k, v in exp.tags.items()]
        every = client.search_runs(
            [exp.experiment_id], run_view_type=ViewType.ALL, max_results=1000
        )
        for run in every:
            where = f"run {run.info.run_id}"
            values += [(f"{where} param {k}", v) for k, v in run.data.params.items()]
            values += [(f"{where} tag {k}", v) for k, v in run.data.tags.items()]
    for model in client.search_registered_models():
        values += [(f"model {model.name} tag {k}", v) for k, v in model.tags.items()]
        for mv in client.search_model_versions(f"name = '{model.name}'"):
            values += [(f"{model.name} v{mv.version} tag {k}", v) for k, v in mv.tags.items()]
    assert len(values) > 100  # the flow above ran: runs, params and tags are there
    leaks = [(where, s) for where, v in values for s in secrets if s in v]
    assert not leaks, leaks
