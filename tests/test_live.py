"""The live detector (`tvae.analysis.live`) without MLflow: one source of truth with `analyze`,
the states a grokking run goes through, withdrawal, and what following a run costs."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from corpus import load_run, metric_map
from live_curves import METRIC_MAP, textbook

from tvae import contract as C
from tvae.analysis import Roles, Thresholds, analyze
from tvae.analysis.engine import _clean
from tvae.analysis.live import LiveDetector
from tvae.analysis.live_assess import _detect, same_transition

ROLES = Roles.from_metric_map(METRIC_MAP)
LOSSES = Roles.from_metric_map("loss=train_loss,val_loss=val_loss")  # the two losses only


def follow(frame, roles=ROLES, per_update: int = 1):
    """Feed ``frame`` to a LiveDetector ``per_update`` epochs at a time; (detector, states
    at each change, in order)."""
    det = LiveDetector(roles)
    changes = []
    for i in range(0, len(frame), per_update):
        chunk = frame.iloc[i : i + per_update]
        if per_update == 1:  # as an in-training callback feeds it
            det.add_epoch(int(chunk.index[0]), chunk.iloc[0].dropna().to_dict())
        for key in chunk.columns if per_update > 1 else ():
            rows = chunk[key].dropna()
            det.add(key, rows.index.to_numpy(), rows.to_numpy())
        state = det.update()
        if state.seen_at_step is not None and (
            not changes or changes[-1].change_key() != state.change_key()
        ):
            changes.append(state)
    return det, changes


@pytest.mark.parametrize(
    "name,view",
    [
        ("add53_f40_wd1", "acc+loss"),
        ("add53_f40_step500", "loss-only"),
        ("sub47_f60_cos1000", "val_acc"),
        ("blobs_step35", "train_acc"),
    ],
)
def test_candidates_are_analyze_s_on_every_prefix(name, view):
    """The live path's events are `analyze`'s: the same candidates, verdicts and reasons."""
    frame = load_run(name)
    roles = Roles.from_metric_map(metric_map(view))
    for end in sorted({len(frame) // 3, len(frame) // 2, len(frame)}):
        prefix = frame.iloc[:end]
        full = analyze(prefix, roles)
        live = _detect(_clean(prefix)[0], roles, Thresholds())
        assert [c.to_dict() for c in live.candidates] == [c.to_dict() for c in full.candidates]
        assert live.confidence == full.confidence


def test_textbook_run_goes_none_plateau_breakthrough_confirmed():
    frame = textbook()
    det, changes = follow(frame)
    assert [s.state for s in changes] == ["none", "plateau", "breakthrough", "confirmed"]
    plateau, breakthrough, confirmed = changes[1:]
    assert plateau.since == 1 and "in a plateau since epoch 1" in plateau.detail
    assert plateau.seen_at_step < 151  # seen before the jump
    final = analyze(frame, ROLES).confirmed
    assert confirmed.first_epoch == final[0].breakthrough_epoch == 151
    # confirmed only once the sustain period is over: at the end of the rise + 5 epochs
    need = Thresholds().sustain.epochs
    assert breakthrough.due == final[0].rise_end + need
    assert confirmed.seen_at_step == final[0].rise_end + need
    assert confirmed.events == 1 and confirmed.severity == "major"
    tags = confirmed.tags()
    assert tags[C.GROKKING_LIVE_STATE] == "confirmed"
    assert tags[C.GROKKING_LIVE_FIRST_EPOCH] == "151"
    assert tags[C.GROKKING_LIVE_SEEN_AT_STEP] == str(confirmed.seen_at_step)
    assert set(tags) <= set(C.GROKKING_LIVE_TAGS)
    assert det.update(ended=True).state == "confirmed"


def test_a_breakthrough_that_falls_back_is_withdrawn():
    frame = textbook(fall_back=156)
    det, changes = follow(frame)
    states = [s.state for s in changes]
    assert states[:3] == ["none", "plateau", "breakthrough"] and "confirmed" not in states
    after = changes[3]
    assert after.withdrawn and "breakthrough at epoch 151 withdrawn" in after.withdrawn_reason
    assert "not sustained" in after.withdrawn_reason
    assert after.tags()[C.GROKKING_LIVE_WITHDRAWN] == after.withdrawn_reason
    assert "withdrawn" in after.line()
    end = det.update(ended=True)
    assert end.state == "none" and not analyze(frame, ROLES).confirmed


def test_a_slow_rise_whose_onset_moves_stays_one_event_to_the_end():
    """A validation loss that falls for ~1,800 epochs: each longer history places the onset
    and the end of the rise later, then the whole run earlier again. It is one transition
    throughout, never withdrawn, and the run's end confirms it where analyze does; a
    transition the whole run rejects (an LR restart that it turns out to belong to) is still
    withdrawn."""
    roles = Roles.from_metric_map(metric_map("loss-only"))
    frame = load_run("sub53_f90_wd01_lr1e3")
    det, changes = follow(frame, roles, per_update=25)
    confirmed = [s for s in changes if s.state == "confirmed"]
    assert confirmed and all(s.events == 1 for s in changes if s.state == "confirmed")
    end = det.update(ended=True)
    (event,) = analyze(frame, roles).confirmed
    assert end.state == "confirmed" and end.event_epochs == (event.breakthrough_epoch,)
    assert not end.withdrawn, end.withdrawn_reason
    first = confirmed[0]
    assert first.event_epochs[0] != event.breakthrough_epoch  # the onset did move
    assert same_transition(event, first.event_epochs[0], first.event_rises[0], 0.0)

    frame = load_run("mul53_f50_cos600_s41")
    det, changes = follow(frame, roles, per_update=25)
    assert "confirmed" in [s.state for s in changes] and not analyze(frame, roles).confirmed
    end = det.update(ended=True)
    assert end.state == "none" and end.withdrawn and "withdrawn" in end.withdrawn_reason


def test_a_slow_climb_out_of_a_plateau_is_confirmed_once_the_data_confirm_it():
    """Validation accuracy climbs for ~300 epochs out of a 445-epoch plateau. Each poll's run
    during the climb changes nothing yet; they must not push the next run back (the backoff
    for noise), or the confirmation waits for a late run: it comes at the first poll that
    holds the end of the rise plus its sustain period, as the whole run places them."""
    roles = Roles.from_metric_map(metric_map("acc+loss"))
    frame = load_run("add53_f50_step200")
    (event,) = analyze(frame, roles).confirmed
    t = Thresholds()
    sustain = max(t.sustain.epochs, t.sustain.rise_frac * event.details["rise_epochs"])
    due = event.rise_end + sustain
    det, changes = follow(frame.loc[: due + 200], roles, per_update=25)
    first = next(s for s in changes if s.state == "confirmed")
    assert same_transition(event, first.event_epochs[0], first.event_rises[0], 0.0)
    assert first.seen_at_step <= due + 25, (first.seen_at_step, due)


def test_ended_run_is_confirmed_exactly_when_analyze_confirms():
    """A run that stops mid-jump: live said breakthrough, the end says what analyze says."""
    frame = textbook(n=153)
    det, changes = follow(frame)
    assert changes[-1].state == "breakthrough"
    assert det.update(ended=True).state == "none"
    assert not analyze(frame, ROLES).confirmed


def test_rows_from_many_updates_and_nan_rows():
    """Batches of rows, NaN rows and a key that appears late change nothing of the verdict."""
    frame = textbook()
    frame.loc[40:42, "train_loss"] = np.nan
    frame["late"] = np.where(frame.index >= 100, 1.0, np.nan)
    det, changes = follow(frame, per_update=7)
    assert changes[-1].state == "confirmed"
    assert changes[-1].first_epoch == analyze(frame, ROLES).confirmed[0].breakthrough_epoch
    assert "late" in det.history().columns


def test_a_partly_read_row_waits_for_the_rest():
    """A read between two keys' writes leaves the last row half-empty: it waits."""
    det = LiveDetector(ROLES)
    frame = textbook(n=40)
    for epoch, row in frame.iterrows():
        det.add_epoch(epoch, row.to_dict())
    det.add("train_loss", [41], [0.001])
    assert det._ready_step() == 40


def test_cost_grows_with_new_rows_not_history():
    """20,000 epochs, 50 per update: the detector runs a few dozen times, not 400."""
    n = 20_000
    frame = textbook(n=n, jump=12_000, rise=60)
    det, changes = follow(frame, per_update=50)
    assert changes[-1].state == "confirmed"
    assert det.analyses < 60, det.reasons


def test_tvae_live_imports_no_mlflow():
    code = "import sys, tvae.analysis.live; print('mlflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _partial(frame, share: float = 0.3):
    """``frame`` with its validation accuracy's jump cut to ``share`` of its height."""
    frame["val_acc"] = 0.02 + (frame["val_acc"] - 0.02) * share
    return frame


@pytest.mark.parametrize("lr", ["constant", "cosine"])
def test_a_partial_rise_on_a_schedule_waits_until_no_change_can_make_it_the_schedule_s(lr):
    """A jump a third of the way to 1: analyze rejects such a rise when a scheduled change
    comes before its new level has held as long as its plateau and a jump it triggers goes on
    from there. On a schedule it is a breakthrough waiting for that until then, confirmed at
    once after; with a constant LR (or a full jump on the schedule) nothing can, so it is
    confirmed after the sustain period as before."""
    frame = _partial(textbook(n=420))
    if lr == "cosine":
        frame["lr"] = 1e-3 * (0.55 + 0.45 * np.cos(np.pi * frame.index.to_numpy() / 420))
    det, changes = follow(frame)
    (event,) = analyze(frame, ROLES).confirmed
    confirmed = next(s for s in changes if s.state == "confirmed")
    assert confirmed.first_epoch == event.breakthrough_epoch
    waits = [s for s in changes if s.state == "breakthrough"]
    if lr == "constant":
        assert [s.waits_for for s in waits] == ["sustain"]
        assert confirmed.seen_at_step == event.rise_end + Thresholds().sustain.epochs
        return
    assert [s.waits_for for s in waits] == ["sustain", "schedule"]
    held = waits[-1]
    due = event.rise_end + event.plateau_end - event.plateau_start
    assert held.due == due and f"before step {due:g} could still make it the start" in held.detail
    assert "29% of the way to 1 on a schedule" in held.detail
    assert confirmed.seen_at_step == due and not confirmed.withdrawn

    full = textbook(n=420)
    full["lr"] = frame["lr"]
    _, changes = follow(full)
    assert [s.waits_for for s in changes if s.state == "breakthrough"] == ["sustain"]


@pytest.mark.parametrize(
    "name", ["mul53_f50_cos600_s41", "mul53_f50_cos600_s108", "sub53_f50_cos600_s110"]
)
def test_a_partial_rise_a_warm_restart_finishes_is_never_confirmed_live(name):
    """Cosine warm-restart runs: validation accuracy climbs part of the way while the LR
    anneals, and the jump after the restart takes it to the top, so the whole run rejects it
    as the schedule's. Live it waits for the schedule, then is withdrawn, never confirmed."""
    roles = Roles.from_metric_map(metric_map("acc+loss"))
    frame = load_run(name)
    det, changes = follow(frame, roles, per_update=25)
    assert not analyze(frame, roles).confirmed
    assert "confirmed" not in [s.state for s in changes]
    waited = [s for s in changes if s.waits_for == "schedule"]
    assert waited and waited[0].due > waited[0].seen_at_step
    assert "withdrawn" in det.update(ended=True).withdrawn_reason


def test_a_fall_that_drifts_on_below_its_rise_is_confirmed_on_time():
    """A loss that falls one decade in 3 epochs after a 95-epoch plateau, then drifts down
    slowly for 500 epochs: analyze confirms the fall on every prefix (the drift is another,
    smaller swing), so live confirms it at the first poll after its sustain period, 25 rows a
    poll, though the loss is still at its lowest at every poll."""
    frame = textbook(n=600, jump=100)
    e = frame.index.to_numpy()
    up = np.clip((e - 100 + 1) / 3, 0.0, 1.0)
    frame["val_loss"] = 10 ** (0.6 - 1.0 * up - 0.003 * np.clip(e - 103, 0, None))
    roles = LOSSES
    (event,) = analyze(frame, roles).confirmed
    assert all(analyze(frame.loc[:cut], roles).confirmed for cut in (125, 300, 600))
    _, changes = follow(frame, roles, per_update=25)
    confirmed = next(s for s in changes if s.state == "confirmed")
    assert confirmed.seen_at_step <= event.rise_end + Thresholds().sustain.epochs + 25


def _losses(e: np.ndarray, train: np.ndarray, val: np.ndarray) -> pd.DataFrame:
    """A run that logs only its two losses, one row an epoch."""
    index = pd.Index(e.astype(int), name="epoch")
    return pd.DataFrame({"train_loss": train, "val_loss": val}, index=index)


def test_a_loss_fall_that_starts_before_twice_the_fit_is_confirmed_while_training():
    """Grokking seen in the losses only: the training loss fits by epoch ~100, 10x below the
    validation loss, which drops 0.7 decades from epoch 150 (before twice the fit) and falls
    1.5 more over 300 epochs. The fit cannot move once the gap is open, so live confirms the
    event analyze confirms while the run trains."""
    n = 2000
    e = np.arange(1, n + 1, dtype=float)
    rng = np.random.default_rng(0)
    drop = 0.5 - 0.5 * np.cos(np.pi * np.clip((e - 150) / 35, 0, 1))
    tail = np.clip((e - 185) / 315, 0, 1) ** 0.7
    frame = _losses(
        e,
        (4 * np.exp(-e / 45) + 2e-4) * np.exp(rng.normal(0, 0.02, n)),
        10 ** (0.65 - 0.7 * drop - 1.5 * tail + rng.normal(0, 0.01, n)),
    )
    roles = LOSSES
    (event,) = analyze(frame, roles).confirmed
    assert event.breakthrough_epoch < 2 * event.details["fit_epoch"] < event.rise_end
    _, changes = follow(frame, roles, per_update=25)
    assert "confirmed" in [s.state for s in changes]


def test_an_event_over_a_training_loss_on_a_floor_is_confirmed_while_training():
    """Label smoothing puts a floor under the training loss (0.8 here), so it never gets 10x
    below the validation loss (6 on the plateau) and the fit cannot move: the event analyze
    confirms is confirmed live while the run trains."""
    n = 2000
    e = np.arange(1, n + 1, dtype=float)
    rng = np.random.default_rng(0)
    drop = 0.5 - 0.5 * np.cos(np.pi * np.clip((e - 1200) / 200, 0, 1))
    val = np.interp(e, [1, 150], [4.6, 6.0]) - 5.1 * drop
    frame = _losses(
        e,
        (0.8 + 3.8 * np.exp(-e / 30)) * np.exp(rng.normal(0, 0.02, n)),
        val * np.exp(rng.normal(0, 0.02, n)),
    )
    roles = LOSSES
    assert (frame["val_loss"] / frame["train_loss"]).max() < Thresholds().delay.fit_gap
    (event,) = analyze(frame, roles).confirmed
    _, changes = follow(frame, roles, per_update=25)
    confirmed = next(s for s in changes if s.state == "confirmed")
    assert confirmed.seen_at_step <= event.rise_end + Thresholds().sustain.epochs + 25


@pytest.mark.parametrize("falls_at", [1450, 1700])
def test_a_training_loss_that_falls_again_after_its_floor_keeps_the_event(falls_at):
    """No 10x gap, the training loss settled on its floor over the plateau, and it falls 3x
    more after the jump: the fit is judged by the plateau alone (no later row), so
    the event confirmed while the run trains is the final analysis's."""
    n = 2000
    e = np.arange(1, n + 1, dtype=float)
    rng = np.random.default_rng(0)
    drop = 0.5 - 0.5 * np.cos(np.pi * np.clip((e - 1200) / 200, 0, 1))
    val = np.interp(e, [1, 150], [4.6, 6.0]) - 5.1 * drop
    train = (0.8 + 3.8 * np.exp(-e / 30)) * np.where(e >= falls_at, 1 / 3, 1.0)
    frame = _losses(e, train * np.exp(rng.normal(0, 0.02, n)), val * np.exp(rng.normal(0, 0.02, n)))
    assert (frame["val_loss"] / frame["train_loss"]).max() < Thresholds().delay.fit_gap
    (event,) = analyze(frame, LOSSES).confirmed
    det, changes = follow(frame, LOSSES, per_update=25)
    assert det.update(ended=True).state == "confirmed"
    assert "confirmed" in [s.state for s in changes]
    assert event.breakthrough_epoch > 1200
