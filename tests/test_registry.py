"""Registry rules on a real SQLite registry: candidate/champion aliases, manual promotion."""

from __future__ import annotations

import mlflow
import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient
from test_analyze_cli import assert_one_line_error

from entrypoints.promote import main as promote_main
from mlflow_plugins import registry
from tvae.contract import FAILURE_REASON

NAME = "TernaryVAE"


def _version(client: MlflowClient, q: float, h: float, cov: float, tier: str = "Good") -> str:
    with mlflow.start_run() as run:
        pass
    tags = {"Q": q, "hierarchy_B": h, "coverage": cov, "tier": tier}
    mv = registry.register_version(
        client, NAME, run.info.run_id, f"runs:/{run.info.run_id}/model", tags
    )
    registry.update_aliases(client, NAME, mv)
    return mv.version


def _alias(client: MlflowClient, alias: str) -> str:
    return client.get_model_version_by_alias(NAME, alias).version


@pytest.mark.parametrize(
    ("new", "old", "better"),
    [
        ({"Q": 2.1, "hierarchy_B": -0.7, "coverage": 0.9}, {"Q": 2.0, "hierarchy_B": -0.8}, True),
        ({"Q": 2.0, "hierarchy_B": -0.81, "coverage": 0.9}, {"Q": 2.0, "hierarchy_B": -0.8}, True),
        (
            {"Q": 2.0, "hierarchy_B": -0.8, "coverage": 0.99},
            {"Q": 2.0, "hierarchy_B": -0.8, "coverage": 0.98},
            True,
        ),
        (
            {"Q": 2.0, "hierarchy_B": -0.8, "coverage": 1},
            {"Q": 2.0, "hierarchy_B": -0.8, "coverage": 1},
            False,
        ),
        ({"Q": "nan"}, {"Q": 0.1}, False),
        ({"Q": 0.1}, {}, True),
    ],
)
def test_strictly_better_orders_q_then_hierarchy_then_coverage(new, old, better):
    assert registry.strictly_better(new, old) is better


def test_champion_moves_only_to_strictly_better_and_candidate_to_newest(tracking_uri):
    client = MlflowClient()
    v1 = _version(client, 2.0, -0.80, 0.99)
    assert _alias(client, "champion") == v1 == _alias(client, "candidate")
    v2 = _version(client, 1.9, -0.82, 1.0)  # worse Q: not champion
    assert _alias(client, "candidate") == v2 and _alias(client, "champion") == v1
    assert "alias.champion.refused" in client.get_model_version(NAME, v2).tags
    v3 = _version(client, 2.0, -0.80, 0.99)  # equal: not strictly better
    assert _alias(client, "champion") == v1 and _alias(client, "candidate") == v3
    v4 = _version(client, 2.0, -0.81, 0.95)  # same Q, better hierarchy
    assert _alias(client, "champion") == v4
    tags_v4 = client.get_model_version(NAME, v4).tags
    tags_v1 = client.get_model_version(NAME, v1).tags
    assert "better than version" in tags_v4["alias.champion"]
    assert f"to version {v4}" in tags_v1["alias.champion.lost"]
    assert [mv.version for mv in registry.versions_of_run(client, NAME, "nope")] == []


def test_promote_cli_refuses_low_tier_unless_forced(tracking_uri):
    client = MlflowClient()
    v1 = _version(client, 2.5, -0.82, 1.0, tier="Excellent")
    v2 = _version(client, 0.5, -0.2, 0.5, tier="None")
    runner = CliRunner()
    refused = runner.invoke(promote_main, ["--version", v2, "--min-tier", "Good"])
    assert_one_line_error(refused, "below min_tier Good; pass --force true to promote it anyway")
    assert _alias(client, "champion") == v1
    forced = runner.invoke(promote_main, ["--version", v2, "--force", "true"])
    assert forced.exit_code == 0, forced.output
    assert _alias(client, "champion") == v2
    assert "forced" in client.get_model_version(NAME, v2).tags["alias.champion"]
    assert "alias.champion.lost" in client.get_model_version(NAME, v1).tags


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--version", "99"], "has no version '99'"),
        (["--version", "1", "--model-name", "NoSuchModel"], "no registered model 'NoSuchModel'"),
        (["--version", "abc"], "positive integer"),
        (["--version", "1", "--min-tier", "Great"], "not one of"),
        (["--version", "1", "--force", "maybe"], "not true or false"),
    ],
)
def test_promote_cli_bad_input_is_one_line_error(tracking_uri, args, message):
    _version(MlflowClient(), 2.0, -0.8, 1.0)
    result = CliRunner().invoke(promote_main, args)
    assert_one_line_error(result, message)


def test_repromoting_the_champion_is_a_no_op_that_says_so(tracking_uri):
    client = MlflowClient()
    v1 = _version(client, 2.0, -0.8, 1.0)
    before = client.get_model_version(NAME, v1).tags
    result = CliRunner().invoke(promote_main, ["--version", v1])
    assert result.exit_code == 0, result.output
    assert f"version {v1} already is champion; nothing changed" in result.output
    after = client.get_model_version(NAME, v1).tags
    assert after == before and "alias.champion.lost" not in after
    assert _alias(client, "champion") == v1


def test_under_mlflow_run_the_force_hint_is_a_project_parameter(tracking_uri, monkeypatch):
    """`mlflow run` users pass `-P force=true`; their launcher run ends FAILED with why."""
    client = MlflowClient()
    _version(client, 2.5, -0.82, 1.0, tier="Excellent")
    low = _version(client, 0.5, -0.2, 0.5, tier="None")
    with mlflow.start_run() as launcher:
        pass
    client.update_run(launcher.info.run_id, status="RUNNING")
    monkeypatch.setenv("MLFLOW_RUN_ID", launcher.info.run_id)
    refused = CliRunner().invoke(promote_main, ["--version", low])
    assert_one_line_error(refused, "pass -P force=true to promote it anyway")
    run = client.get_run(launcher.info.run_id)
    assert run.info.status == "FAILED" and "below min_tier" in run.data.tags[FAILURE_REASON]
    assert run.info.run_name == launcher.info.run_name  # refused: not renamed either
    with mlflow.start_run() as second:
        pass
    client.update_run(second.info.run_id, status="RUNNING")
    monkeypatch.setenv("MLFLOW_RUN_ID", second.info.run_id)
    done = CliRunner().invoke(promote_main, ["--version", low, "--force", "true"])
    assert done.exit_code == 0, done.output
    assert client.get_run(second.info.run_id).info.run_name == f"promote-{NAME}-v{low}"


def test_an_invalid_model_name_is_refused_by_the_registry_rule(tracking_uri):
    result = CliRunner().invoke(promote_main, ["--version", "1", "--model-name", "a/b"])
    assert_one_line_error(result, "Names cannot contain '/'")


def test_tier_at_least_follows_the_analysis_tier_order():
    assert registry.tier_at_least("Excellent", "Good") and not registry.tier_at_least(
        "None", "Good"
    )


def test_find_model_uri_reads_the_tag_else_the_runs_logged_model_outputs(tracking_uri):
    """Runs of other projects have no `model.uri` tag: their MLflow 3 model outputs count."""

    class Echo(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input):
            return model_input

    client = MlflowClient()
    with mlflow.start_run() as bare:
        pass
    assert registry.find_model_uri(client, bare.info.run_id) is None
    with mlflow.start_run() as other:
        first = mlflow.pyfunc.log_model(name="first", python_model=Echo())
        second = mlflow.pyfunc.log_model(name="second", python_model=Echo())
    assert first.model_uri != second.model_uri
    assert registry.find_model_uri(client, other.info.run_id) == second.model_uri
    client.set_tag(other.info.run_id, "model.uri", first.model_uri)
    assert registry.find_model_uri(client, other.info.run_id) == first.model_uri
