"""Grokking live inside training (`mlflow_plugins.live_train`): the trainer's own epochs into the
live detector, its state onto the run as tags, and a FINISHED stop after a confirmed event; on a
real temporary SQLite store."""

from __future__ import annotations

from pathlib import Path

import pytest
from live_curves import METRIC_MAP, textbook
from mlflow import MlflowClient
from test_train_tracking import tiny_config

from mlflow_plugins.history import load_history
from mlflow_plugins.live_train import LiveTrainFollower
from mlflow_plugins.tracking import train_in_run
from mlflow_plugins.train_logger import MlflowTrainLogger
from tvae import contract as C
from tvae.analysis import Roles, analyze
from tvae.config import load_config
from tvae.train import Trainer

REPO = Path(__file__).resolve().parents[1]
ROLES = Roles.from_metric_map(METRIC_MAP)


def _new_run(client: MlflowClient) -> str:
    return client.create_run(client.get_experiment_by_name("Default").experiment_id).info.run_id


def test_a_grokking_run_is_confirmed_live_and_stopped_k_epochs_later(tracking_uri, tmp_path):
    """The follower behind the real MLflow logger: plateau, then confirmed after the jump; the
    stop comes exactly `stop_after` epochs after the confirmation, and the final live state is
    what `analyze` says of the same history."""
    client = MlflowClient()
    rid = _new_run(client)
    logger = MlflowTrainLogger(rid, tmp_path, client)
    stops: list[str] = []
    lines: list[str] = []
    follower = LiveTrainFollower(
        logger.write_tags, stop=stops.append, stop_after=5, echo=lines.append, roles=ROLES
    )
    logger.live = follower
    frame = textbook(n=300, jump=150)
    for epoch, row in frame.iterrows():
        logger.on_epoch_end(int(epoch), row.dropna().to_dict())
        if stops:  # the trainer stops at this epoch's boundary
            break
    logger.on_train_end("FINISHED", {})
    logger.close()
    assert follower.confirmed_at is not None and epoch == follower.confirmed_at + 5
    assert 150 <= follower.confirmed_at < 200, follower.confirmed_at
    states = [line.split(":")[1].split()[0] for line in lines]
    assert states[0] in ("none", "plateau") and "plateau" in states and states[-1] == "confirmed"
    tags = client.get_run(rid).data.tags
    assert tags[C.STOP_REASON] == stops[0]
    assert f"confirmed live at epoch {follower.confirmed_at}" in stops[0]
    assert tags[C.GROKKING_LIVE_STATE] == "confirmed" and tags[C.GROKKING_LIVE_EVENTS] == "1"
    assert 145 <= float(tags[C.GROKKING_LIVE_FIRST_EPOCH]) <= 153
    history, _ = load_history(client, rid)
    assert int(history.index.max()) == epoch  # every epoch fed was logged, in order
    final = analyze(history, roles=ROLES)
    assert len(final.confirmed) == 1
    assert float(final.confirmed[0].breakthrough_epoch) == pytest.approx(
        float(tags[C.GROKKING_LIVE_FIRST_EPOCH]), abs=3
    )


def test_no_stop_without_the_config_key_and_none_without_grokking(tracking_uri, tmp_path):
    client = MlflowClient()
    rid = _new_run(client)
    logger = MlflowTrainLogger(rid, tmp_path, client)
    stops: list[str] = []
    logger.live = LiveTrainFollower(logger.write_tags, stop=stops.append, roles=ROLES)
    frame = textbook(n=200, jump=10_000)  # the plateau never ends
    for epoch, row in frame.iterrows():
        logger.on_epoch_end(int(epoch), row.dropna().to_dict())
    logger.on_train_end("FINISHED", {})
    logger.close()
    tags = client.get_run(rid).data.tags
    assert not stops and C.STOP_REASON not in tags
    assert tags[C.GROKKING_LIVE_STATE] == "none" and tags[C.GROKKING_LIVE_EVENTS] == "0"
    assert C.GROKKING_LIVE_FIRST_EPOCH not in tags


def test_a_finishing_stop_ends_the_training_finished_with_its_reason(tmp_path):
    holder: dict = {}

    class StopAtTwo(LiveTrainFollower):
        def on_epoch_end(self, epoch, metrics):
            if epoch == 2:
                holder["t"].request_stop(finished="enough")

    cfg = load_config(REPO / "configs/smoke.yaml", {"train.threads": 1, "train.device": "cpu"})
    holder["t"] = Trainer(cfg, tmp_path, StopAtTwo(lambda *_: None), echo=False)
    result = holder["t"].fit()
    assert (result.status, result.reason, result.last_epoch) == ("FINISHED", "enough", 2)
    assert cfg.train.epochs > 2


def test_training_writes_the_live_state_unless_turned_off(tracking_uri, tmp_path):
    """Our own trainer: a short run ends with the live state `analyze` agrees with (no event
    in three epochs); `train.live: false` writes no live tag."""
    client = MlflowClient()
    for live in (True, False):
        config = load_config(tiny_config(tmp_path / "tiny.yaml"), {"train.live": live})
        rid = _new_run(client)
        result = train_in_run(config, rid, tmp_path / str(live), client=client, log_model=False)
        client.set_terminated(rid, result.status)
        tags = client.get_run(rid).data.tags
        live_tags = {k: v for k, v in tags.items() if k.startswith("grokking.live.")}
        if not live:
            assert live_tags == {}
            continue
        history, _ = load_history(client, rid)
        events = len(analyze(history).confirmed)
        assert live_tags[C.GROKKING_LIVE_STATE] == ("confirmed" if events else "none")
        assert live_tags[C.GROKKING_LIVE_EVENTS] == str(events)
        assert live_tags[C.GROKKING_LIVE_SEEN_AT_STEP] == str(result.last_epoch)
