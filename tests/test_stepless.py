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
from mlflow_plugins.stepless import LivePlacer, place_stepless
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


def _logged(keys: list[str], epochs: int, cut: int = 0) -> dict:
    """`keys` logged without a step in that order each epoch, 2 ms apart; the last `cut`
    keys of the last epoch not yet logged (a read mid-round)."""
    calls = [(k, e) for e in range(epochs) for k in keys][: epochs * len(keys) - cut]
    return {
        k: _rows([0] * len(es), [2 * i for i, (kk, _) in enumerate(calls) if kk == k])
        for k in keys
        if (es := [e for kk, e in calls if kk == k])
    }


def test_a_round_read_half_logged_moves_no_key():
    """Read after train_loss and val_loss of the newest epoch, before val_acc: each key's
    n-th row is still step n (the clock is the key logged last in a round, not the one with
    the most rows)."""
    placed, note = place_stepless(_logged(["train_loss", "val_loss", "val_acc"], 6, cut=1))
    assert "one step per val_acc row" in note
    assert placed["val_acc"][0].tolist() == [0, 1, 2, 3, 4]
    assert placed["train_loss"][0].tolist() == placed["val_loss"][0].tolist() == list(range(6))


def test_a_first_epoch_logged_twice_is_not_a_run_without_steps():
    rows = {"val_acc": _rows([0, 0], [10, 20]), "loss": _rows([0, 0], [9, 19])}
    assert place_stepless(rows) == (rows, None)


def test_the_watchers_placer_feeds_each_step_once_where_the_whole_run_places_it():
    """Polls that land mid-round: rows wait for the round's last key, each step is fed once
    (its last row), nothing fed is moved after the first rounds (when the keys' counts do not
    yet say which is logged once a round), and what was fed is the whole run's placing."""
    keys = ["train_loss", "train_loss", "val_loss", "val_acc", "lr"]  # the loss twice an epoch
    calls = [(k, 2 * i) for i, k in enumerate(keys * 40)]

    def read(first: int, upto: int) -> dict:
        return {
            k: _rows([0] * len(stamps), stamps)
            for k in dict.fromkeys(keys)
            if (stamps := [t for kk, t in calls[first:upto] if kk == k])
        }

    placer, fed = LivePlacer(), {}
    for at in range(0, len(calls), 7):
        new = read(at, at + 7)
        start = placer.kept is None and placer.needs_all(new)
        rows, again = placer.place(read(0, at + 7) if start else new, start=start)  # as the watcher
        assert start or not again or at < 2 * len(keys)
        fed = {} if again else fed
        for k, (steps, _, _) in rows.items():
            fed.setdefault(k, []).extend(steps.tolist())
    whole, _ = place_stepless(placer.kept)
    for k, steps in fed.items():
        assert steps == sorted(set(steps)) == sorted(set(whole[k][0].tolist()))
    assert fed["val_acc"] == list(range(40))


def test_a_run_logging_training_keys_by_optimizer_step_and_the_rest_by_epoch(tracking_uri):
    """`log_metric("train_loss", l, step=global_step)` beside `log_metric("val_acc", a,
    step=epoch)`: the training keys are placed on the epochs (each epoch's last batch), as the
    run by epoch reads. Before, val_acc's whole history lay within the first epochs' steps."""
    client = MlflowClient()
    frame = load_run(GROKS).loc[:1500]
    run_id = client.create_run("0").info.run_id
    ts, rows, batches = int(time.time() * 1000), [], 4
    for epoch, row in frame.iterrows():
        for b in range(1, batches + 1):  # the epoch's value at its last batch
            step = (epoch - 1) * batches + b
            for key in ("train_loss", "train_acc", "lr"):
                rows.append(Metric(key, float(row[key]) * (1 + (batches - b) / 10), ts, step))
            ts += 2
        for key in ("val_loss", "val_acc"):
            rows.append(Metric(key, float(row[key]), ts, int(epoch)))
            ts += 2
    for i in range(0, len(rows), 1000):
        client.log_batch(run_id, metrics=rows[i : i + 1000])
    client.set_terminated(run_id, "FINISHED")
    history, _ = load_history(client, run_id)
    assert history.index.tolist() == frame.index.tolist()
    assert np.allclose(history[list(frame.columns)].to_numpy(), frame.to_numpy())
    (note,) = history.attrs["notes"]
    assert note.startswith("lr, train_acc, train_loss logged on steps up to 6000 beside")
    (event,) = analyze(history, ROLES).confirmed
    assert event.breakthrough_epoch == analyze(frame, ROLES).confirmed[0].breakthrough_epoch


def _timed(steps, stamps) -> tuple:
    return np.asarray(steps), np.zeros(len(steps)), np.asarray(stamps, dtype=float)


@pytest.mark.parametrize("pace", ["slow first epoch", "a pause", "a counter that starts again"])
def test_keys_on_one_kind_of_step_are_left_alone_whatever_the_pace(pace):
    """Compared over the time both keys were logged, an uneven pace moves both alike: a key
    that stops early beside a slow first epoch or a pause, or a second phase counting its
    steps again, is not another kind of step."""
    epochs = np.arange(100)
    t = np.where(epochs == 0, 0.0, 19.0 + epochs)  # a row at the start, then a 20x first epoch
    if pace == "a pause":
        t = epochs + np.where(epochs > 20, 8 * 3600.0, 0.0)
    if pace == "a counter that starts again":  # 60 pretraining epochs, then 40 slower ones
        t = np.where(epochs < 60, epochs, 60 + 3.0 * (epochs - 60))
        rows = {
            "loss": _timed(np.where(epochs < 60, epochs, epochs - 60), t),
            "lr": _timed(epochs, t),
        }
    else:
        rows = {
            "a": _timed(epochs, t),
            "v": _timed(epochs, t + 0.5),
            "b": _timed(epochs[:46], t[:46]),
        }
    assert place_stepless(rows) == (rows, None)
