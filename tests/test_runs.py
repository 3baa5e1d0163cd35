"""Experiment choice for training runs: one per config, safe under concurrent starts."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from mlflow_plugins.runs import EXPERIMENT_KIND_TAG, ensure_experiment


def test_concurrent_starts_share_one_experiment_tagged_for_model_training(tracking_uri):
    client = MlflowClient()
    with ThreadPoolExecutor(4) as pool:
        ids = list(pool.map(lambda _: ensure_experiment(client, "cfg-a"), range(8)))
    assert len(set(ids)) == 1
    exp = client.get_experiment(ids[0])
    assert exp.name == "cfg-a"
    assert exp.tags[EXPERIMENT_KIND_TAG] == "custom_model_development"


def test_existing_untagged_experiment_is_tagged_and_deleted_one_refused(tracking_uri):
    client = MlflowClient()
    old = client.create_experiment("legacy")
    assert ensure_experiment(client, "legacy") == old
    assert EXPERIMENT_KIND_TAG in client.get_experiment(old).tags
    client.delete_experiment(old)
    with pytest.raises(MlflowException, match="deleted"):
        ensure_experiment(client, "legacy")


class _LosesTheTagRace(MlflowClient):
    """A client whose tag write loses the race seen in CI: another training's create_experiment
    wrote the tag between the read and the write, and the store raised a UNIQUE error."""

    def set_experiment_tag(self, experiment_id, key, value):
        super().set_experiment_tag(experiment_id, key, value)  # the other training's write
        raise MlflowException("UNIQUE constraint failed: experiment_tags.key")


def test_losing_the_experiment_tag_race_to_another_training_is_not_an_error(tracking_uri):
    client = _LosesTheTagRace()
    exp_id = MlflowClient().create_experiment("raced")  # seen untagged, as in the race
    assert ensure_experiment(client, "raced") == exp_id
    assert client.get_experiment(exp_id).tags[EXPERIMENT_KIND_TAG] == "custom_model_development"


def test_a_tag_write_that_really_fails_still_raises(tracking_uri):
    class Refuses(MlflowClient):
        def set_experiment_tag(self, experiment_id, key, value):
            raise MlflowException("store is read-only")

    MlflowClient().create_experiment("read-only")
    with pytest.raises(MlflowException, match="read-only"):
        ensure_experiment(Refuses(), "read-only")


def test_fail_run_says_why_and_leaves_ended_runs_alone(tracking_uri):
    from mlflow_plugins.runs import fail_run
    from tvae.contract import FAILURE_REASON

    client = MlflowClient()
    exp = client.create_experiment("fails")
    running = client.create_run(exp).info.run_id
    assert fail_run(client, running, "bad\ninput:  --lr nan")
    run = client.get_run(running)
    assert run.info.status == "FAILED" and run.data.tags[FAILURE_REASON] == "bad input: --lr nan"
    ended = client.create_run(exp).info.run_id
    client.set_terminated(ended, "FINISHED")
    assert not fail_run(client, ended, "late")
    assert client.get_run(ended).info.status == "FINISHED"
    assert FAILURE_REASON not in client.get_run(ended).data.tags
