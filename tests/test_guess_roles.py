"""A run from another trainer, analysed without a metric_map, is read by its key names; one
with nothing to read is refused in one line before anything is written."""

from __future__ import annotations

import time

import pytest
from corpus import load_run
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from mlflow_plugins.analyze_run import AnalyzeInputError, analyze_run
from tvae import contract as C
from tvae.analysis import Roles, analyze
from tvae.analysis.guess_roles import guess_roles


@pytest.mark.parametrize(
    "keys,want",
    [
        (  # HF Trainer's MLflowCallback
            ["eval_accuracy", "eval_loss", "loss", "learning_rate", "epoch", "eval_runtime"],
            "accuracy=eval_accuracy,val_loss=eval_loss,loss=loss,lr=learning_rate",
        ),
        (  # Keras: `accuracy` and `loss` are the training ones
            ["accuracy", "loss", "val_accuracy", "val_loss", "lr"],
            "accuracy=val_accuracy,val_loss=val_loss,loss=loss,lr=lr",
        ),
        (  # Lightning, logged with slashes, LearningRateMonitor's key
            ["train/loss", "val/acc", "val/loss", "lr-AdamW", "epoch", "system/cpu_percent"],
            "accuracy=val/acc,val_loss=val/loss,loss=train/loss,lr=lr-AdamW",
        ),
        (  # Lightning, a metric logged on step and on epoch
            ["train_loss_step", "train_loss_epoch", "val_acc", "epoch"],
            "accuracy=val_acc,val_loss=,loss=train_loss_epoch,lr=",
        ),
        (  # a plain script: validation before test, the shortest of several
            ["train_loss", "val_acc", "val_acc_top5", "test_acc", "valid_loss"],
            "accuracy=val_acc,val_loss=valid_loss,loss=train_loss,lr=",
        ),
        (  # TensorBoard-style names
            ["epoch_loss", "epoch_accuracy", "epoch_val_loss", "epoch_val_accuracy"],
            "accuracy=epoch_val_accuracy,val_loss=epoch_val_loss,loss=epoch_loss,lr=",
        ),
        (  # a loss named for what it is; a loss word after `loss` loses to it
            ["train_mse", "val_mse", "test_mse", "val_mae"],
            "accuracy=,val_loss=val_mse,loss=train_mse,lr=",
        ),
        (["nll", "val_nll", "val_ppl"], "accuracy=,val_loss=val_nll,loss=nll,lr="),
        (  # a key naming an accuracy and a loss is neither; an LR key naming a loss is no LR
            ["val_acc", "val_acc_ce", "train_loss", "lr_loss", "lr"],
            "accuracy=val_acc,val_loss=,loss=train_loss,lr=lr",
        ),
        (  # an error rate falls as accuracy rises: neither an accuracy nor a loss
            ["train_loss", "top1_err", "val_top1_err", "val_loss", "val_error"],
            "accuracy=,val_loss=val_loss,loss=train_loss,lr=",
        ),
        (
            ["loss", "mse", "val_loss", "val_mse", "test_accuracy"],
            "accuracy=test_accuracy,val_loss=val_loss,loss=loss,lr=",
        ),
    ],
)
def test_common_key_names_map_to_roles(keys, want):
    roles, text = guess_roles(keys)
    assert text == want + ",hierarchy=,quality=,grad_norm="
    assert roles == Roles.from_metric_map(text)


def test_a_key_logged_once_loses_to_a_series_once_the_rows_are_known():
    """HF Trainer logs `loss` at every logging step and `train_loss` once, at the end."""
    keys = ["eval_accuracy", "eval_loss", "loss", "learning_rate", "train_loss", "train_runtime"]
    assert "loss=train_loss," in guess_roles(keys)[1]  # by the names alone
    rows = {k: 1 if k.startswith("train_") else 2500 for k in keys}
    assert ",loss=loss," in guess_roles(keys, rows)[1]


def test_no_held_out_metric_is_no_guess():
    assert guess_roles(["train_loss", "lr", "system/gpu_utilization_percentage"]) is None
    assert guess_roles(["loss", "val_error", "train_error"]) is None  # an error rate is neither


def _log(client: MlflowClient, frame) -> str:
    run_id = client.create_run("0").info.run_id
    ts = int(time.time() * 1000)
    rows = [Metric(k, float(v), ts, int(e)) for k in frame for e, v in frame[k].dropna().items()]
    for i in range(0, len(rows), 1000):
        client.log_batch(run_id, metrics=rows[i : i + 1000])
    client.set_terminated(run_id, "FINISHED")
    return run_id


def test_a_foreign_run_without_a_metric_map_is_read_by_its_key_names(tracking_uri):
    """Before, it was analysed with TernaryVAE's roles, found none of them, and was tagged
    `grokking.events = 0` without having been looked at."""
    client = MlflowClient()
    frame = load_run("add53_f40_wd1").loc[:1500]
    run_id = _log(client, frame)
    outcome = analyze_run(client, run_id, register=False)
    roles = Roles.from_metric_map("accuracy=val_acc,val_loss=val_loss,loss=train_loss,lr=lr")
    (event,) = analyze(frame, roles).confirmed
    tags = client.get_run(run_id).data.tags
    assert tags[C.GROKKING_EVENTS] == "1"
    assert float(tags[C.GROKKING_FIRST_EPOCH]) == event.breakthrough_epoch
    assert outcome.report.notes[0].startswith("no metric_map given")
    assert (
        'metric_map="accuracy=val_acc,val_loss=val_loss,loss=train_loss,lr=lr,'
        in (outcome.report.notes[0])
    )


def test_a_foreign_run_with_nothing_held_out_is_refused_and_nothing_written(tracking_uri):
    client = MlflowClient()
    run_id = _log(client, load_run("add53_f40_wd1").loc[:50, ["train_loss", "lr"]])
    with pytest.raises(AnalyzeInputError) as err:
        analyze_run(client, run_id, register=False)
    assert "\n" not in str(err.value)
    assert "no key named like a held-out accuracy or loss (lr, train_loss)" in str(err.value)
    assert not any(
        k.startswith(("grokking.", "analysis.")) for k in client.get_run(run_id).data.tags
    )
    assert len(client.search_runs(["0"])) == 1  # no analyze run
