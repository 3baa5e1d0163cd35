"""A run logged without steps (`mlflow.log_metric(key, value)`: every row at step 0) is read in
the order it was logged, not as its last row."""

from __future__ import annotations

import time

import numpy as np
import pytest
from corpus import load_run, without_steps
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from mlflow_plugins.analyze_run import analyze_run
from mlflow_plugins.history import load_history
from mlflow_plugins.stepless import place_stepless
from tvae import contract as C
from tvae.analysis import Roles, analyze

GROKS = "add53_f40_wd1"  # training split, `grokking`
ROLES = Roles.from_metric_map("accuracy=val_acc,val_loss=val_loss,loss=train_loss,lr=lr")


def _log_without_steps(client: MlflowClient, frame, batches: int = 1) -> str:
    run_id = client.create_run("0").info.run_id
    logged = without_steps(frame, batches, t0=int(time.time() * 1000))
    rows = [
        Metric(key, float(v), int(t), 0)
        for key, (_, values, stamps) in logged.items()
        for v, t in zip(values, stamps, strict=True)
    ]
    for i in range(0, len(rows), 1000):
        client.log_batch(run_id, metrics=rows[i : i + 1000])
    client.set_terminated(run_id, "FINISHED")
    return run_id


@pytest.mark.parametrize("batches", [1, 4])
def test_a_run_logged_without_steps_is_read_in_the_order_logged(tracking_uri, batches):
    """Before, every key read as one row (its last) and the run was tagged `grokking.events=0`."""
    client = MlflowClient()
    frame = load_run(GROKS).loc[:1500]
    run_id = _log_without_steps(client, frame, batches)
    history, _ = load_history(client, run_id)
    assert len(history) == len(frame)
    by_epoch = frame.reset_index(drop=True)  # the n-th row logged is step n
    assert np.allclose(history[list(frame.columns)].to_numpy(), by_epoch.to_numpy(), equal_nan=True)

    outcome = analyze_run(client, run_id, register=False)
    (event,) = analyze(by_epoch, ROLES).confirmed
    tags = client.get_run(run_id).data.tags
    assert tags[C.GROKKING_EVENTS] == "1"
    assert float(tags[C.GROKKING_FIRST_EPOCH]) == event.breakthrough_epoch
    assert any("logged without a step" in note for note in outcome.report.notes)


def _rows(steps, stamps):
    steps, stamps = np.asarray(steps), np.asarray(stamps, dtype=float)
    return steps, np.arange(len(steps), dtype=float), stamps


def test_keys_without_steps_land_on_the_steps_the_others_log():
    """A per-batch loss logged without a step beside a validation accuracy logged by epoch: each
    batch lands on the step of the evaluation that follows it."""
    rows = {
        "val_acc": _rows([1, 2, 3], [10, 20, 30]),
        "loss": _rows([0] * 6, [4, 8, 14, 18, 24, 28]),
    }
    placed, note = place_stepless(rows)
    assert placed["loss"][0].tolist() == [1, 1, 2, 2, 3, 3]
    assert placed["val_acc"] is rows["val_acc"]
    assert note.startswith("loss logged without a step (every row at step 0)")


def test_runs_that_log_steps_are_left_as_they_are():
    """A value logged again for its one step (a resumed run) is not a series: the latest wins."""
    rows = {
        "val_acc": _rows([1, 2, 3], [10, 20, 30]),
        "test_acc": _rows([3, 3], [31, 35]),
        "final_loss": _rows([0], [40]),
    }
    assert place_stepless(rows) == (rows, None)
