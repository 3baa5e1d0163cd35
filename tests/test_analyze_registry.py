"""Registry through `tvae-analyze` on a real (1-epoch smoke) training run and its logged model.

One training serves the whole story, in order: the `tvae` evaluator reproduces the logged eval
metrics; analysis registers the run (candidate + champion); re-analysis does not register it
twice; a second run of equal quality becomes candidate but does not take champion; a run whose
logged metrics disagree with its model is blocked; a tier below min_tier is skipped.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from click.testing import CliRunner
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from entrypoints.analyze import main as analyze_main
from mlflow_plugins.history import load_history
from mlflow_plugins.registry import VALUE_KEYS
from mlflow_plugins.tracking import train_in_run
from tvae.config import load_config
from tvae.ops import ternary_ops

REPO = Path(__file__).resolve().parents[1]
NAME = "TernaryVAE"


def _analyze(run_id: str, *extra: str) -> str:
    result = CliRunner().invoke(
        analyze_main, ["--run-id", run_id, "--min-tier", "None", *extra], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    return result.output


def _twin(client: MlflowClient, source: str, history: pd.DataFrame, shift_q: float) -> str:
    """A run with the source's metric history and the source's model (Q shifted at the step)."""
    src = client.get_run(source)
    run = client.create_run(src.info.experiment_id, run_name="twin")
    step = int(src.data.tags["model.step"])
    ts = int(time.time() * 1000)
    metrics = [
        Metric(
            key, float(v) + (shift_q if key == "eval/Q" and epoch == step else 0.0), ts, int(epoch)
        )
        for key in history.columns
        for epoch, v in history[key].dropna().items()
    ]
    client.log_batch(run.info.run_id, metrics=metrics)
    for tag in ("model.uri", "model.id", "model.step"):
        client.set_tag(run.info.run_id, tag, src.data.tags[tag])
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def _aliases(client: MlflowClient) -> dict[str, str]:
    return {
        a: client.get_model_version_by_alias(NAME, a).version for a in ("candidate", "champion")
    }


def train_smoke_run(client: MlflowClient, work: Path) -> str:
    """A FINISHED 1-epoch CPU smoke training run with its logged model (a few seconds)."""
    config = load_config(
        REPO / "configs/smoke.yaml", {"train.epochs": 1, "train.device": "cpu", "train.amp": "off"}
    )
    exp = client.get_experiment_by_name("Default").experiment_id
    run_id = client.create_run(exp, run_name="smoke").info.run_id
    result = train_in_run(config, run_id, work, client=client)
    client.set_terminated(run_id, result.status)
    assert result.status == "FINISHED" and "model.uri" in client.get_run(run_id).data.tags
    return run_id


@pytest.mark.slow
def test_registry_story_on_real_smoke_training(tracking_uri, tmp_path):
    client = MlflowClient()
    run_id = train_smoke_run(client, tmp_path / "work")
    exp = client.get_run(run_id).info.experiment_id
    tags = client.get_run(run_id).data.tags
    history, _ = load_history(client, run_id)
    step = int(tags["model.step"])

    # the evaluator plugin, as a user calls it, reproduces the training-time metrics
    ops = pd.DataFrame(ternary_ops().numpy(), columns=[f"t{i}" for i in range(9)])
    with mlflow.start_run(experiment_id=exp):
        evaluated = mlflow.models.evaluate(
            tags["model.uri"], ops, model_type="tvae", evaluators=["tvae"]
        ).metrics
    for key in VALUE_KEYS:
        assert math.isclose(evaluated[key], history.loc[step, f"eval/{key}"], abs_tol=1e-6)

    out = _analyze(run_id)
    assert "Registry: registered" in out
    (v1,) = client.search_model_versions(f"name = '{NAME}'")
    assert v1.run_id == run_id and v1.tags["source_run"] == run_id
    assert v1.tags["grokking.events"] == client.get_run(run_id).data.tags["grokking.events"]
    for key in VALUE_KEYS:
        assert math.isclose(float(v1.tags[key]), evaluated[key], rel_tol=1e-5, abs_tol=1e-9)
    assert _aliases(client) == {"candidate": v1.version, "champion": v1.version}

    out = _analyze(run_id)  # re-analysis: no second version
    assert "already_registered" in out
    assert len(client.search_model_versions(f"name = '{NAME}'")) == 1

    equal = _twin(client, run_id, history, shift_q=0.0)
    assert "Registry: registered" in _analyze(equal)
    v2 = client.search_model_versions(f"name = '{NAME}' and run_id = '{equal}'")[0].version
    assert _aliases(client) == {"candidate": v2, "champion": v1.version}  # not strictly better
    assert "alias.champion.refused" in client.get_model_version(NAME, v2).tags

    claims_better = _twin(client, run_id, history, shift_q=0.5)
    out = _analyze(claims_better)
    assert "Registry: blocked" in out and "Q evaluated" in out
    assert client.search_model_versions(f"name = '{NAME}' and run_id = '{claims_better}'") == []
    assert _aliases(client) == {"candidate": v2, "champion": v1.version}

    low = _twin(client, run_id, history, shift_q=0.0)
    out = CliRunner().invoke(analyze_main, ["--run-id", low, "--min-tier", "Exceptional"]).output
    assert "Registry: skipped" in out and "below min_tier Exceptional" in out

    broken = _twin(client, run_id, history, shift_q=0.0)
    client.set_tag(broken, "model.uri", "models:/m-00000000000000000000000000000000")
    out = _analyze(broken)  # an unloadable model blocks registration; the analysis is written
    assert "Registry: blocked" in out and "re-evaluation of" in out
    assert client.get_run(broken).data.tags["tier"] == client.get_run(run_id).data.tags["tier"]
