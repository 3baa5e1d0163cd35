"""Real runs of other trainers (tests/data: their metric rows as the trainers' own MLflow
integrations wrote them, and the scripts that made them) analysed as a user would, with no
metric_map: Lightning's MLFlowLogger and HF Trainer's MLflowCallback (every key on the global
step, the epoch logged beside it), and MLflow's own autologging of Keras and Lightning (on the
epoch; Keras also logs the validation keys again without a step)."""

from __future__ import annotations

import csv
import gzip
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric

from mlflow_plugins.analyze_run import analyze_run
from mlflow_plugins.watch import Watch
from tvae import contract as C

DATA = Path(__file__).parent / "data"
CHANCE = 1 / 53  # both are (a + b) mod 53
RUNS = {  # fixture: (held-out accuracy key, what the guessed map must say)
    "lightning_add53": ("val_acc", ("accuracy=val_acc,", "loss=train_loss_epoch,", "lr=lr-AdamW")),
    # HF's end-of-run `train_loss` (logged once) must lose to its per-log `loss`
    "hf_add53": ("eval_accuracy", ("accuracy=eval_accuracy,", ",loss=loss,", "lr=learning_rate")),
}
AUTOLOGGED = {  # by epoch, no epoch key, no LR
    # `validation_accuracy` (logged again at step 0 each epoch) loses to `val_accuracy`
    "keras_add53": ("val_accuracy", ("accuracy=val_accuracy,val_loss=val_loss,loss=loss,",)),
    "lightning_autolog_add53": ("val_acc", ("accuracy=val_acc,val_loss=val_loss,loss=train_loss",)),
}


def fixture_rows(name: str) -> pd.DataFrame:
    """The run's metric rows (key, step, value, ms since its first row)."""
    with gzip.open(DATA / name / "metrics.csv.gz", "rt", newline="") as f:
        rows = pd.DataFrame(list(csv.DictReader(f)))
    return rows.astype({"step": int, "value": float, "ms": int})


def log_rows(client: MlflowClient, run_id: str, rows: pd.DataFrame, t0: int) -> None:
    """``rows`` logged into ``run_id`` as they were, ``t0`` the first row's time (ms)."""
    metrics = [Metric(k, v, t0 + ms, s) for k, s, v, ms in rows.itertuples(index=False)]
    for i in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[i : i + 1000])


def log_fixture(client: MlflowClient, name: str) -> tuple[str, pd.DataFrame]:
    """The run's rows logged into a new run of this store, ended FINISHED; and the rows."""
    rows = fixture_rows(name)
    run_id = client.create_run("0").info.run_id
    log_rows(client, run_id, rows, int(time.time() * 1000))
    client.set_terminated(run_id, "FINISHED")
    return run_id, rows


def window(rows: pd.DataFrame, key: str) -> tuple[float, float]:
    """The corpus's labelling rule (tests/corpus/label.py) on the run's own epochs: from the
    last near-chance epoch to the first that generalised."""
    acc = rows[rows.key == key].set_index("step").value
    if "epoch" in set(rows.key):
        epochs = rows[rows.key == "epoch"].groupby("step").value.max()
        epoch = epochs.reindex(acc.index, method="ffill").to_numpy()
    else:  # logged by epoch
        epoch = acc.index.to_numpy(dtype=float)
    v = acc.to_numpy()
    top = float(pd.Series(v).rolling(5, center=True).median().max())
    done = int(np.argmax(v >= CHANCE + 0.95 * (top - CHANCE)))
    near = np.nonzero(v[:done] <= CHANCE + 0.10 * (top - CHANCE))[0]
    return float(epoch[near[-1]]), float(epoch[done])


def analysed(name: str, accuracy: str, guessed: tuple[str, ...]):
    """The fixture logged and analysed with no map: its map guessed as ``guessed`` says, one
    major event tagged inside the labelling window on the run's own epochs. (outcome, rows,
    that tagged epoch, the window's start, the event)."""
    client = MlflowClient()
    run_id, rows = log_fixture(client, name)
    outcome = analyze_run(client, run_id, register=False)
    notes = " | ".join(outcome.report.notes)
    assert all(part in notes for part in guessed), notes
    tags = client.get_run(run_id).data.tags
    assert tags[C.GROKKING_EVENTS] == "1" and tags[C.GROKKING_SEVERITY] == "major"
    lo, hi = window(rows, accuracy)
    first = float(tags[C.GROKKING_FIRST_EPOCH])
    assert lo <= first <= hi, (lo, first, hi)  # an epoch of the run, not a step
    (event,) = outcome.report.confirmed
    return outcome, rows, first, lo, event


@pytest.mark.parametrize("name", sorted(RUNS))
def test_a_real_run_is_read_by_its_key_names_and_tagged_in_its_own_epochs(tracking_uri, name):
    outcome, rows, first, lo, event = analysed(name, *RUNS[name])
    assert "5 steps per epoch by epoch" in " | ".join(outcome.report.notes)
    assert event.breakthrough_epoch > 5 * lo  # found on the run's own axis: its global steps
    summary = outcome.report.summary()
    logged = rows.step.drop_duplicates()  # the history's rows: every step any key was logged at
    assert summary.splitlines()[0] == (
        f"{len(logged)} logged rows analysed, steps {logged.min()}-{logged.max()}"
    )
    assert f"grokking event at step {event.breakthrough_epoch:g} (epoch {first:g})" in summary
    # the jump is a phase of its own, though the training loss falls steadily all run long
    (jump,) = [p for p in outcome.report.phases if p.start <= event.breakthrough_epoch < p.end]
    assert jump.character == "fast improvement" and outcome.report.phases[0] is not jump
    answers = " ".join(outcome.report.answers.values())
    assert f"step {event.breakthrough_epoch:g}" in answers  # a step is not called an epoch
    assert f"epoch {event.breakthrough_epoch:g}" not in answers


@pytest.mark.parametrize("name", sorted(AUTOLOGGED))
def test_a_run_logged_by_mlflow_autolog_is_read_by_its_key_names(tracking_uri, name):
    outcome, rows, first, _, event = analysed(name, *AUTOLOGGED[name])
    assert first == event.breakthrough_epoch  # by epoch: the position is the epoch
    report = outcome.report
    assert report.x_unit == "epoch"
    assert report.summary().splitlines()[0] == f"{rows.step.max() + 1} epochs analysed"
    (jump,) = [p for p in report.phases if p.start <= event.breakthrough_epoch < p.end]
    assert jump.character == "fast improvement"
    assert report.phases[0].character == "memorisation"


def test_the_watcher_follows_an_autologged_keras_run_as_it_is_logged(tracking_uri):
    """The Keras rows replayed in the order they were logged (the validation keys' second copy
    at step 0 among them) into a RUNNING run, 50 polls: read by its key names, a plateau first,
    then the event confirmed live, and at the end the state the final analysis gives."""
    rows = fixture_rows("keras_add53").sort_values("ms", kind="stable")
    client = MlflowClient()
    run_id = client.create_run("0").info.run_id
    watch = Watch(client, run_id=run_id, roles=None, echo=lambda line: None)
    t0 = int(time.time() * 1000)
    per_poll = -(-len(rows) // 50)
    for i in range(0, len(rows), per_poll):
        log_rows(client, run_id, rows.iloc[i : i + per_poll], t0)
        watch.poll()
    states = [s.state for s in watch.runs[run_id].changes]
    assert "plateau" in states and states.index("plateau") < states.index("confirmed")
    client.set_terminated(run_id, "FINISHED")
    assert watch.poll() is False
    (event,) = analyze_run(client, run_id, register=False).report.confirmed
    tags = client.get_run(run_id).data.tags
    assert tags[C.GROKKING_LIVE_STATE] == "confirmed"
    assert float(tags[C.GROKKING_LIVE_FIRST_EPOCH]) == event.breakthrough_epoch
