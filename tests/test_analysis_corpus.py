"""Grokking detection on real training runs (tests/corpus): each failure mode of the detection
issue, on a run of the corpus's training split, judged against the run's label."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from corpus import VIEWS, index, load_run, metric_map

from tvae.analysis import Roles, Thresholds, analyze

RUNS = index()
GROKS = "add53_f40_wd1"  # modular addition, weight decay: memorises by ~18, groks at ~900
OMNIGROK = "digits_a10_wd01_100k"  # digits, MSE, init x10: val loss falls for 90,000 epochs
RESTART = "sub59_f40_cos800_s30"  # cosine warm restarts every 800 epochs; generalises after one
SLOW = "sub59_f45_step300_s40"  # validation loss falls steadily for the last 1,700 epochs


def roles(view: str) -> Roles:
    return Roles.from_metric_map(metric_map(view))


def window(name: str) -> tuple[float, float]:
    lo, hi = RUNS[name]["label"]["window"]
    return lo, hi


def test_the_runs_used_here_are_training_split_and_labelled_as_assumed():
    used = {
        GROKS: "grokking",
        "tf_add43_f50_lr3e3": "grokking",
        "add53_f80_wd1": "grokking",
        "add47_f50_adam": "none",
        "digits_a1": "fast",
        "digits_a1_n500": "fast",
        "blobs_step35": "none",
        "add53_f40_cos400": "lr_confound",
        "mul53_f50_cos250": "lr_confound",
        "tf_add43_f50_lr1e3": "none",
        "tf_sub37_f50_adam": "none",
        "add97_f30_wd1": "none",
        "digits_a10_wd01_100k": "grokking",
        "mul53_f50_warmup": "grokking",
    }
    for name, cls in used.items():
        assert RUNS[name]["split"] == "train" and RUNS[name]["label"]["cls"] == cls, name
    # a held-out run, used here after it was scored (its split was looked at)
    assert RUNS[RESTART]["split"] == "test3" and RUNS[RESTART]["label"]["cls"] == "lr_confound"
    assert RUNS[SLOW]["split"] == "test4" and RUNS[SLOW]["label"]["cls"] == "grokking"


@pytest.mark.parametrize("view", ["loss-only", "val_acc", "acc+loss", "train_acc"])
def test_grokking_is_one_event_with_its_onset_in_the_window_in_every_view(view):
    """Loss-only runs, val_acc + train_loss, and the training accuracy mapped as `accuracy`:
    no view needs a second metric to move, and each finds the one transition in time."""
    rep = analyze(load_run(GROKS), roles(view))
    lo, hi = window(GROKS)
    assert len(rep.confirmed) == 1, rep.summary()
    assert lo <= rep.confirmed[0].breakthrough_epoch <= hi
    assert float(rep.tags()["grokking.first_epoch"]) == rep.confirmed[0].breakthrough_epoch
    assert rep.confidence > 0.5


def test_the_readme_foreign_run_mapping_finds_the_event():
    rep = analyze(load_run(GROKS), Roles.from_metric_map("accuracy=val_acc,loss=train_loss"))
    lo, hi = window(GROKS)
    assert len(rep.confirmed) == 1 and lo <= rep.confirmed[0].breakthrough_epoch <= hi


def test_the_memorisation_hump_is_the_signature_not_a_collapse_and_recovery():
    df = load_run(GROKS)
    lab = RUNS[GROKS]["label"]
    chance_loss = math.log(RUNS[GROKS]["classes"])
    hump = df.loc[lab["fit"] : lab["last_near_chance"], "val_loss"]
    assert hump.max() > 2 * chance_loss  # the data: val loss rose far above chance, then fell
    assert df["val_loss"].iloc[-1] < chance_loss / 1000
    rep = analyze(df, roles("loss-only"))
    lo, hi = window(GROKS)
    assert len(rep.confirmed) == 1 and lo <= rep.confirmed[0].breakthrough_epoch <= hi
    assert not [c for c in rep.rejected if c.confound == "recovery" and lo <= c.rise_end <= hi]


@pytest.mark.parametrize("name", ["mul67_f40_wd05", "add53_f80_wd1", "add59_f50_mb256"])
def test_onset_on_losses_is_placed_in_the_window_not_in_the_later_decades_of_the_drop(name):
    df = load_run(name)
    lo, hi = window(name)
    assert df["val_loss"].iloc[-1] < df.loc[hi, "val_loss"] / 10  # the drop goes on after it
    rep = analyze(df, roles("loss-only"))
    assert len(rep.confirmed) == 1, rep.summary()
    assert lo <= rep.confirmed[0].breakthrough_epoch <= hi


def _spikes(loss: pd.Series) -> int:
    """Times the training loss jumps 100-fold above its running minimum (slingshots)."""
    floor = loss.cummin()
    up = (loss > 100 * floor).to_numpy()
    return int(np.sum(up[1:] & ~up[:-1]))


@pytest.mark.parametrize("view", list(VIEWS))
def test_slingshot_cycles_without_generalising_raise_no_event(view):
    df = load_run("add47_f50_adam")  # Adam, no weight decay, 8,000 epochs
    assert _spikes(df["train_loss"]) >= 3
    below = (df["train_acc"] < 0.99).to_numpy() & (
        df.index > 2 * RUNS["add47_f50_adam"]["label"]["fit"]
    )
    assert np.sum(below[1:] & ~below[:-1]) >= 3  # training accuracy dips, recovers, again
    rep = analyze(df, roles(view))
    assert rep.confirmed == [], rep.summary()


@pytest.mark.parametrize("view", list(VIEWS))
def test_grokking_amid_slingshot_cycles_is_one_event(view):
    name = "tf_add43_f50_lr3e3"  # one-layer transformer: dips to chance during and after
    df = load_run(name)
    assert _spikes(df["train_loss"]) >= 3
    after = df.loc[window(name)[1] :, "val_acc"]
    assert after.min() < 0.5 and after.max() > 0.95  # val accuracy collapses and recovers
    rep = analyze(df, roles(view))
    lo, hi = window(name)
    assert len(rep.confirmed) == 1, rep.summary()
    assert lo <= rep.confirmed[0].breakthrough_epoch <= hi


# digits: plain MLPs; tf_add43_f50_lr1e3: a transformer that stalls at chance, then fits and
# reaches 50% validation accuracy together (no delay after the fit)
@pytest.mark.parametrize("name", ["digits_a1", "digits_a1_n500", "tf_add43_f50_lr1e3"])
@pytest.mark.parametrize("view", list(VIEWS))
def test_generalising_while_fitting_is_not_grokking(name, view):
    assert analyze(load_run(name), roles(view)).confirmed == []


@pytest.mark.parametrize("view", list(VIEWS))
def test_a_rise_still_under_way_when_the_run_ends_is_not_yet_an_event(view):
    df = load_run("add97_f30_wd1")  # validation accuracy leaves chance in the last 400 epochs
    tail = df["val_acc"].iloc[-len(df) // 10 :]
    assert tail.iloc[-1] >= df["val_acc"].max() - 0.01 and tail.iloc[-1] > tail.iloc[0] + 0.05
    rep = analyze(df, roles(view))
    assert rep.confirmed == []
    late = [c for c in rep.rejected if c.breakthrough_epoch > 0.8 * df.index[-1]]
    assert all(c.criterion == "sustained" for c in late)


def test_the_delay_factor_is_a_threshold():
    name = "add53_f80_wd1"  # generalised at about 6x the fit
    df = load_run(name)
    assert len(analyze(df, roles("acc+loss")).confirmed) == 1
    strict = Thresholds(delay={"factor": 20})
    rep = analyze(df, roles("acc+loss"), strict)
    assert rep.confirmed == [] and rep.rejected[0].criterion == "delayed"
    assert "20x" in rep.rejected[0].reason


@pytest.mark.parametrize("name", [GROKS, "tf_sub37_f50_adam"])
def test_the_training_accuracy_rise_is_not_reported(name):
    """With the training accuracy mapped to `accuracy`, its rise is the fit itself; grokking
    in the validation loss is still found."""
    df = load_run(name)
    lab = RUNS[name]["label"]
    rep = analyze(df, roles("train_acc"))
    assert all(c.primary == "val_loss" for c in rep.confirmed)
    assert all(c.breakthrough_epoch > 2 * lab["fit"] for c in rep.confirmed)
    assert len(rep.confirmed) == (lab["cls"] == "grokking")


def test_lr_drop_jump_is_rejected_as_confound():
    df = load_run("blobs_step35")  # Adam at a too-high LR; LR / 20 at epoch 35
    drop = float(df.index[np.argmax(df["lr"].to_numpy() < df["lr"].iloc[0])])
    assert df.loc[drop:, "train_acc"].iloc[:3].min() > df.loc[: drop - 1, "train_acc"].max()
    reports = [analyze(df, roles(view)) for view in VIEWS]
    assert all(rep.confirmed == [] for rep in reports)
    rejected = [c for rep in reports for c in rep.rejected]
    assert rejected and all(c.confound == "lr" for c in rejected)
    assert all(f"epoch {int(drop)}" in c.reason for c in rejected)


@pytest.mark.parametrize("name", ["add53_f40_cos400", "mul53_f50_cos250"])
@pytest.mark.parametrize("view", list(VIEWS))
def test_warm_restarts_inside_the_transition_are_confounds(name, view):
    rep = analyze(load_run(name), roles(view))
    assert rep.confirmed == [], rep.summary()
    assert any(c.confound == "lr" for c in rep.rejected)


def test_irregular_gappy_logging_still_finds_the_event():
    df = load_run(GROKS)
    rng = np.random.default_rng(0)
    sub = df.iloc[np.sort(rng.choice(len(df), size=len(df) // 8, replace=False))]
    rep = analyze(sub, roles("acc+loss"))
    lo, hi = window(GROKS)
    assert len(rep.confirmed) == 1 and lo <= rep.confirmed[0].breakthrough_epoch <= hi
    assert all(b in set(sub.index) for b in rep.boundaries)
    span = f"{sub.index[0]:g}-{sub.index[-1]:g}"
    assert rep.summary().splitlines()[0] == f"{len(sub)} logged rows analysed, epochs {span}"
    assert analyze(df, roles("acc+loss")).summary().splitlines()[0] == f"{len(df)} epochs analysed"


def test_phases_separate_memorisation_plateau_and_grokking():
    df = load_run(GROKS)
    rep = analyze(df, roles("acc+loss"))
    assert 3 <= len(rep.phases) <= 8
    ev = rep.confirmed[0]
    first = rep.phases[0]  # the training loss falls fast at once, the held-out metrics do not
    assert first.character == "memorisation" and first.start == df.index[0]
    assert first.end <= RUNS[GROKS]["label"]["fit"] * 3
    (jump,) = [p for p in rep.phases if p.start <= ev.breakthrough_epoch <= p.end]
    assert jump.character == "fast improvement"
    plateau = (RUNS[GROKS]["label"]["fit"] + RUNS[GROKS]["label"]["last_near_chance"]) / 2
    (middle,) = [p for p in rep.phases if p.start <= plateau <= p.end]
    assert middle.character != "fast improvement"
    assert rep.tags()["phases.count"] == str(len(rep.phases))


def test_an_event_seen_in_two_metrics_is_one_major_event_with_both_named():
    rep = analyze(load_run(GROKS), roles("acc+loss"))
    (ev,) = rep.confirmed
    assert ev.severity == "major" and ev.primary == "val_acc"
    assert {"val_acc", "val_loss"} <= set(ev.metrics)
    assert sorted(ev.details["seen_in"]) == ["val_acc", "val_loss"]
    assert ev.plateau_start < ev.plateau_end < ev.breakthrough_epoch <= ev.rise_end
    one_metric = analyze(load_run(GROKS), roles("val_acc")).confirmed[0]
    assert ev.confidence > one_metric.confidence  # a second metric raises confidence


@pytest.mark.parametrize("view", ["loss-only", "train_acc"])
def test_a_slow_collapse_of_the_validation_loss_long_after_the_fit_is_grokking(view):
    """Omnigrok: no plateau and no sudden jump in the losses (the validation loss falls
    log-linearly for tens of thousands of epochs), yet generalisation comes long after the fit."""
    df = load_run(OMNIGROK)
    lab = RUNS[OMNIGROK]["label"]
    fell = np.log10(df["val_loss"].loc[lab["fit"] :]).diff().rolling(50).sum().dropna()
    assert fell.max() < 0.1  # the data: the validation loss never rises over 50 logged rows
    rep = analyze(df, roles(view))
    lo, hi = window(OMNIGROK)
    assert len(rep.confirmed) == 1, rep.summary()
    (ev,) = rep.confirmed
    assert ev.details["shape"] == "collapse" and ev.primary == "val_loss"
    assert lo <= ev.breakthrough_epoch <= hi
    assert ev.details["fit_epoch"] <= lab["fit"] < ev.plateau_end
    deeper = Thresholds(collapse={"min_log10": 3})
    assert analyze(df, roles(view), deeper).confirmed == []


@pytest.mark.parametrize("view", list(VIEWS))
def test_a_rise_inside_a_warm_restart_cycle_is_a_confound(view):
    """The LR jumped back up at a restart after the fit, and the metric improves while it
    anneals: the schedule moved it, however long before the rise the restart was."""
    df = load_run(RESTART)
    rep = analyze(df, roles(view))
    assert rep.confirmed == [], rep.summary()
    assert any(c.confound == "lr" and "epoch 801 " in c.reason for c in rep.rejected)


@pytest.mark.parametrize("view", list(VIEWS))
def test_warmup_before_the_fit_is_no_confound(view):
    """Warmup raises the LR too, but before the training set is fitted: grokking is found."""
    name = "mul53_f50_warmup"
    rep = analyze(load_run(name), roles(view))
    lo, hi = window(name)
    assert len(rep.confirmed) == 1 and lo <= rep.confirmed[0].breakthrough_epoch <= hi


@pytest.mark.parametrize("view", ["loss-only", "train_acc"])
def test_a_slow_steady_fall_is_one_rise_not_pieces_too_small_to_count(view):
    """The validation loss sits on its memorisation plateau, then falls 0.7 decades at an
    even pace until the run ends. Cut at every stretch that moves less than the swing's
    tolerance, it left no piece as large as a transition; whole, it is the event."""
    df = load_run(SLOW)
    late = np.log10(df["val_loss"].loc[1300:])
    assert late.iloc[0] - late.iloc[-1] > 0.5 and late.diff().rolling(100).sum().max() < 0
    rep = analyze(df, roles(view))
    lo, hi = window(SLOW)
    assert len(rep.confirmed) == 1, rep.summary()
    assert lo <= rep.confirmed[0].breakthrough_epoch <= hi
