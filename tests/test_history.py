"""load_history against a real SQLite store: every key, every step, NaN/inf kept, system split."""

from __future__ import annotations

import math
import time

import mlflow
import numpy as np
import pandas as pd
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from mlflow_plugins.history import MetricReader, load_history
from tvae.analysis.confounds import LOGGED_NAN, history_frame, logged_rows, nonfinite_stretches


def _log(client: MlflowClient, run_id: str, metrics: list[Metric]) -> None:
    for i in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[i : i + 1000])


def test_every_key_every_step_with_nan_inf_duplicates_and_system(tracking_uri):
    client = MlflowClient()
    ts = int(time.time() * 1000)
    loss = {e: 1.0 / e for e in range(1, 31)}
    metrics = [Metric("train/loss", v, ts + e, e) for e, v in loss.items()]
    metrics += [Metric("eval/coverage", 0.5, ts, 10), Metric("eval/coverage", 0.75, ts + 5, 10)]
    metrics += [Metric("eval/Q", math.nan, ts, 3), Metric("eval/Q", math.inf, ts, 4)]
    metrics += [
        Metric("eval/Q", -math.inf, ts, 5),
        Metric("system/cpu_utilization_percentage", 12.5, ts, 0),
    ]
    with mlflow.start_run() as run:
        _log(client, run.info.run_id, metrics)
    history, system = load_history(client, run.info.run_id)

    assert sorted(history.columns) == ["eval/Q", "eval/coverage", "train/loss"]
    assert list(system.columns) == ["system/cpu_utilization_percentage"]
    assert history.index.name == "epoch" and list(history.index) == list(range(1, 31))
    assert np.allclose(history["train/loss"].to_numpy(), list(loss.values()))
    assert history.loc[10, "eval/coverage"] == 0.75  # the later of two values at one step
    assert history["eval/coverage"].notna().sum() == 1
    assert math.isnan(history.loc[3, "eval/Q"])
    assert history.loc[4, "eval/Q"] == math.inf and history.loc[5, "eval/Q"] == -math.inf
    # of the frame's NaN cells, the one logged as NaN (the others are steps a key was not at)
    assert history.attrs[LOGGED_NAN] == {"eval/Q": ((3, 3),)}
    assert nonfinite_stretches(history, history.attrs[LOGGED_NAN]) == {"eval/Q": [(3.0, 5.0)]}
    assert system.loc[0, "system/cpu_utilization_percentage"] == 12.5


def test_fast_path_equals_public_client_path_across_pages(tracking_uri):
    """25,200 steps: more than one 25,000-row page of get_metric_history."""
    client = MlflowClient()
    ts = int(time.time() * 1000)
    rng = np.random.default_rng(0)
    values = rng.normal(size=25_200)
    metrics = [Metric("a", float(v), ts, s) for s, v in enumerate(values)]
    metrics += [Metric("b", float(s), ts, s) for s in range(0, 25_200, 7)]
    with mlflow.start_run() as run:
        _log(client, run.info.run_id, metrics)
    fast, _ = load_history(client, run.info.run_id)
    slow, _ = load_history(client, run.info.run_id, fast=False)
    pd.testing.assert_frame_equal(fast, slow)
    assert len(fast) == 25_200 and np.array_equal(fast["a"].to_numpy(), values)
    assert fast["b"].notna().sum() == len(range(0, 25_200, 7))


def test_run_without_metrics_gives_empty_frames(tracking_uri):
    with mlflow.start_run() as run:
        pass
    history, system = load_history(MlflowClient(), run.info.run_id)
    assert history.empty and system.empty


def test_the_reader_returns_rows_after_the_last_one_read_a_step_logged_again_included(
    tracking_uri,
):
    """A value logged again for the last step read (a resumed run) is read, and only once."""
    client = MlflowClient()
    run_id = client.create_run("0").info.run_id
    ts = int(time.time() * 1000)
    _log(client, run_id, [Metric("acc", 0.1 * e, ts + e, e) for e in range(1, 4)])
    reader = MetricReader(client, run_id)
    _, new = reader.poll()
    assert new["acc"][0].tolist() == [1, 2, 3]
    assert reader.poll()[1] == {}
    _log(client, run_id, [Metric("acc", 0.9, ts + 10, 3), Metric("acc", 0.4, ts + 11, 4)])
    _, new = reader.poll()
    assert new["acc"][0].tolist() == [3, 4] and new["acc"][1].tolist() == [0.9, 0.4]
    assert reader.poll()[1] == {}


def test_logged_nan_ranges_and_the_rows_that_keep_them():
    """A key logged every 10th step (NaN at 10-30 and from 60) beside one logged every step:
    the ranges cover the NaN it logged over its own rows, give the stretches, and the rows
    kept for a rebuilt frame (a stretch's two ends) give the same ranges, inventing no row."""
    nan = math.nan
    a = pd.Series([1.0, nan, nan, nan, 5.0, 6.0, nan, nan], index=range(0, 80, 10))
    frame = history_frame({"a": a, "b": pd.Series(np.arange(71.0))})
    assert frame.attrs[LOGGED_NAN] == {"a": ((10, 30), (60, 70))}
    stretches = {"a": [(10.0, 30.0), (60.0, 70.0)]}
    assert nonfinite_stretches(frame, frame.attrs[LOGGED_NAN]) == stretches
    assert nonfinite_stretches(frame) == {}  # the frame alone: a sparse key's NaN is unlogged
    kept = logged_rows(frame, "a")
    assert list(kept.index) == [0, 10, 30, 40, 50, 60, 70]
    rebuilt = history_frame({"a": kept, "b": frame["b"]})
    assert rebuilt.attrs == frame.attrs
    assert list(logged_rows(frame, "b").index) == list(range(71))
