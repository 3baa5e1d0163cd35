"""Runs logged other than once an epoch get the verdicts they get when logged by epoch.

- Against optimizer steps with the epoch beside them (HF Trainer and Lightning log an `epoch`
  metric): the detector's lengths, counted in epochs, count that many steps.
- At log-spaced epochs (for log-x plots): a plateau's level is its median over epochs, not over
  rows, so the dense early rows do not outweigh the rest of it.
- With the accuracy in percent (97.3, not 0.973): it is read as the fraction it is.
- With the evaluation logged at steps of its own (no row holds both losses): the training loss
  is read against the validation loss last logged.
- With a loss logged as exactly 0 after a value below 1e-6 (float32 cross-entropy underflows
  once every margin is wide): it reads as the smallest value the key logged, not as a step the
  key was not logged at; any other 0 is such a step.
- With the accuracy measured on a random sample each time (binomial noise): a noise peak on the
  flank of the rise is part of the rise, not an event of its own.
- Stopped early, once generalised: a `fast` run whose two losses fell together has no fit, so
  no event, though its plateau is all the run holds.
- With the training loss of one batch logged each epoch (scattered by a factor of about 1.6):
  where it got to is read through a running median, not off one low row.
- With the losses logged as perplexities (`val_ppl`, falling to 1, not 0): they are read as
  their logs, the losses they were computed from.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest
from corpus import (
    as_perplexity,
    by_steps,
    eval_every,
    in_percent,
    index,
    last_batch,
    load_run,
    log_spaced,
    metric_map,
    sampled,
    stopped,
)
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from test_live import follow

from mlflow_plugins.analyze_run import analyze_run
from mlflow_plugins.history import load_history
from mlflow_plugins.live_train import LiveTrainFollower
from tvae import contract as C
from tvae.analysis import Roles, analyze
from tvae.analysis.context import RunContext
from tvae.analysis.live_assess import assess
from tvae.analysis.plots import plot_report
from tvae.analysis.series import denoised_loss
from tvae.analysis.steps import steps_per_epoch
from tvae.analysis.thresholds import Thresholds
from tvae.analysis.units import is_perplexity, percent_scale

K = 50  # optimizer steps per epoch
FAST = "digits_a3_step"  # training split, `fast`: its validation accuracy climbs from epoch 1
GROKS = "add53_f40_wd1"  # training split, `grokking`
STEPPED = "add53_f50_step200"  # training split, `grokking` with the LR halved every 200 epochs
FITS_LATE = "par25_k3_n1500_s147"  # training split, `fast`: its loss is 10x below val_loss late
FAST_MB = "add47_f70_mb256_s149"  # training split, `fast`: minibatches, generalises with the fit
NOISY = "add53_f90_wd1"  # training split, `grokking`: a slow start, then the jump
UNDERFLOWS = "add53_f40_step500"  # training split, `grokking`: its loss is ~1e-4 on the plateau
VAL_ACC = Roles.from_metric_map(metric_map("val_acc"))  # accuracy and the training loss only


def stepped(name: str, log_epoch: bool = True) -> pd.DataFrame:
    """Corpus run ``name`` with x = epoch x K, its epoch logged beside it as `epoch`."""
    return by_steps(load_run(name), K, log_epoch, loss_rows=1)


def test_the_runs_used_here_are_training_split_and_labelled_as_assumed():
    runs = index()
    for name, cls in (
        (FAST, "fast"),
        (GROKS, "grokking"),
        (STEPPED, "grokking"),
        (UNDERFLOWS, "grokking"),
        (FITS_LATE, "fast"),
        (FAST_MB, "fast"),
    ):
        assert runs[name]["split"] == "train" and runs[name]["label"]["cls"] == cls


def test_a_fast_run_logged_by_step_gets_its_by_epoch_verdict_when_it_logs_its_epoch():
    assert analyze(load_run(FAST), VAL_ACC).confirmed == []
    # without the epoch, a 100-epoch length is 2 epochs of steps: the climb passes as sudden
    assert analyze(stepped(FAST, log_epoch=False), VAL_ACC).confirmed
    report = analyze(stepped(FAST), VAL_ACC)
    assert report.confirmed == []
    assert any("50 steps per epoch by epoch" in note for note in report.notes)


@pytest.mark.parametrize("view", ["acc+loss", "val_acc", "loss-only"])
def test_a_grokking_run_logged_by_step_has_its_by_epoch_events_in_steps(view):
    roles = Roles.from_metric_map(metric_map(view))
    epochs = analyze(load_run(GROKS), roles).confirmed
    steps = analyze(stepped(GROKS), roles).confirmed
    assert len(epochs) == 1
    assert [(c.breakthrough_epoch, c.severity, c.primary) for c in steps] == [
        (K * c.breakthrough_epoch, c.severity, c.primary) for c in epochs
    ]


def test_the_live_state_on_steps_is_the_by_epoch_state():
    det, changes = follow(stepped(GROKS), roles=VAL_ACC, per_update=25)
    final = det.update(ended=True)
    event = analyze(load_run(GROKS), VAL_ACC).confirmed[0]
    assert final.state == "confirmed"
    assert final.event_epochs == (K * event.breakthrough_epoch,)
    assert final.first_epoch == event.breakthrough_epoch  # the tag: the run's own epoch
    assert final.detail.startswith(f"grokking at step {K * event.breakthrough_epoch:g} ")
    assert [s.state for s in changes][-1] == "confirmed"


def logged_run(client: MlflowClient, frame: pd.DataFrame, nan: dict | None = None) -> str:
    """A FINISHED run holding ``frame``'s finite cells (a NaN cell is a step its key was not
    logged at) and a NaN logged at each ``nan`` key's steps."""
    run_id = client.create_run("0").info.run_id
    ts = int(time.time() * 1000)
    rows = [
        Metric(key, float(v), ts, int(step))
        for key in frame.columns
        for step, v in frame[key].dropna().items()
    ]
    rows += [Metric(key, float("nan"), ts, int(s)) for key, at in (nan or {}).items() for s in at]
    for i in range(0, len(rows), 1000):
        client.log_batch(run_id, metrics=rows[i : i + 1000])
    client.set_terminated(run_id, "FINISHED")
    return run_id


def test_analyze_of_a_step_logged_mlflow_run_reads_its_epoch_metric(tracking_uri):
    """As HF Trainer's MLflow callback logs it: every key against the global step, `epoch` too."""
    client = MlflowClient()
    frame = stepped(GROKS)
    run_id = logged_run(client, frame)
    outcome = analyze_run(client, run_id, metric_map=metric_map("val_acc"), register=False)
    event = analyze(load_run(GROKS), VAL_ACC).confirmed[0]
    tags = client.get_run(run_id).data.tags
    assert tags[C.GROKKING_EVENTS] == "1"
    # found at K x its by-epoch step, and tagged and said with the run's own epoch
    assert float(tags[C.GROKKING_FIRST_EPOCH]) == event.breakthrough_epoch
    bounds = [float(b) for b in tags[C.PHASES_BOUNDARIES].split(",") if b]
    steps = [p.start for p in outcome.report.phases[1:]]
    assert bounds and len(bounds) == len(steps)
    assert bounds == [float(frame.loc[:s, "epoch"].iloc[-1]) for s in steps]  # epochs there
    assert any("steps per epoch" in note for note in outcome.report.notes)
    summary = outcome.report.summary()
    epoch = event.breakthrough_epoch
    assert f"grokking event at step {K * epoch:g} (epoch {epoch:g})" in summary
    assert f"{K * event.details['plateau_epochs']:g}-step plateau" in summary
    figures = plot_report(frame, outcome.report, VAL_ACC)
    assert {fig.axes[-1].get_xlabel() for fig in figures.values()} == {"step"}


def test_steps_per_epoch_from_hf_fractions_lightning_integers_or_a_mapped_key():
    steps = np.arange(10, 10_001, 10)
    hf = pd.DataFrame({"epoch": steps / 250.0}, index=steps)  # fraction of epochs done
    assert steps_per_epoch(hf, "epoch") == pytest.approx(250.0)
    lightning = pd.DataFrame({"trainer/epoch": (steps - 1) // 250}, index=steps)
    assert steps_per_epoch(lightning, "trainer/epoch") == pytest.approx(250.0)
    short = np.arange(1, 261)  # one epoch and a bit: integer epochs must not halve it
    early = pd.DataFrame({"trainer/epoch": (short - 1) // 250}, index=short)
    assert steps_per_epoch(early, "trainer/epoch") == pytest.approx(250.0)
    roles = Roles.from_metric_map("accuracy=val_acc,epoch=trainer/epoch")
    assert roles.epoch == "trainer/epoch"
    assert Roles.from_metric_map("epoch=").epoch is None


def test_no_scaling_when_the_axis_is_epochs_or_the_epoch_metric_is_not_one():
    steps = np.arange(1, 501)
    assert steps_per_epoch(pd.DataFrame({"epoch": steps}, index=steps), "epoch") is None
    backwards = pd.DataFrame({"epoch": np.r_[steps[:250], steps[:250]]}, index=steps * 4)
    assert steps_per_epoch(backwards, "epoch") is None
    still = pd.DataFrame({"epoch": np.zeros(500)}, index=steps)
    assert steps_per_epoch(still, "epoch") is None
    assert steps_per_epoch(pd.DataFrame({"loss": steps}, index=steps), "epoch") is None
    report = analyze(load_run(FAST), VAL_ACC)
    assert not any("steps per epoch" in note for note in report.notes)


def test_a_run_logged_at_log_spaced_epochs_keeps_its_event_clear_of_an_earlier_lr_step():
    """Half the rows lie before the LR step at epoch 201; weighed by rows, the plateau's
    level sat below its later part, the rise seemed to leave it at epoch 206, and the step
    just before was taken for its cause."""
    roles = Roles.from_metric_map(metric_map("acc+loss"))
    frame = log_spaced(load_run(STEPPED), 300)
    assert (frame.index <= 201).mean() >= 0.5
    lo, hi = index()[STEPPED]["label"]["window"]
    events = analyze(frame, roles).confirmed
    assert len(events) == 1 and lo <= events[0].breakthrough_epoch <= hi


def test_a_plateau_level_is_its_median_over_epochs():
    from tvae.analysis.series import spans, weighted_median

    e = np.array([1.0, 2, 3, 4, 5, 6, 10, 100, 200])
    v = np.array([0.0, 0, 0, 0, 0, 0, 1, 1, 1])
    assert np.median(v) == 0.0  # six of the nine rows
    assert weighted_median(v, spans(e)) == 1.0  # 195 of the 200 epochs
    even = np.arange(1.0, 11)
    assert weighted_median(even[::-1], spans(even)) == np.median(even)


def test_a_partial_rise_that_a_warm_restart_completes_is_the_restart_s():
    """Evaluated every 10 epochs, this run's slow rise to 14 % during the first cosine cycle
    stands apart from the jump to 100 % after the restart at epoch 601 (by epoch the two read
    as one transition, which the restart confounds): it is that jump's start, not an event."""
    name = "mul53_f50_cos600_s108"
    assert index()[name]["split"] == "train" and index()[name]["label"]["cls"] == "lr_confound"
    roles = Roles.from_metric_map(metric_map("acc+loss"))
    report = analyze(eval_every(load_run(name), 10), roles)
    assert report.confirmed == []
    early = [c for c in report.candidates if c.breakthrough_epoch < 601 and c.primary == "val_acc"]
    assert early and early[0].criterion == "control" and early[0].reason.startswith("partial:")
    assert early[0].size < 20
    # a rise that went the whole way in its cycle stays an event after a later restart
    lo, hi = index()["sub47_f60_cos1000"]["label"]["window"]
    events = analyze(eval_every(load_run("sub47_f60_cos1000"), 10), roles).confirmed
    assert len(events) == 1 and lo - 10 <= events[0].breakthrough_epoch <= hi + 10


@pytest.mark.parametrize("name", ["add47_f70_mb256_s149", "par25_k3_n1500_s147", GROKS])
@pytest.mark.parametrize("last_shared", [False, True])
def test_evaluation_logged_at_steps_of_its_own_reads_the_fit_as_logged_together(name, last_shared):
    """Validation keys on every 2nd row, training keys on the others (and, as a final
    evaluation at the last training step, both on the last row). The training loss is read
    against the validation loss last logged, so the fit is where it is by epoch, and the fast
    runs (training split) stay without an event (read on shared rows only, the fit would fall
    back to the training loss's bend, or to the last row, and the verdicts would change)."""
    roles = Roles.from_metric_map(metric_map("loss-only"))
    whole, apart = load_run(name), eval_every(load_run(name), 2, apart=True)
    if last_shared:
        apart.iloc[-1] = whole.iloc[-1]
    shared = apart[["train_loss", "val_loss"]].notna().all(axis=1)
    assert shared.sum() == last_shared
    by_epoch, split = analyze(whole, roles), analyze(apart, roles)
    fits = [[c.details["fit_epoch"] for c in r.candidates] for r in (by_epoch, split)]
    assert fits[0] and len(fits[0]) == len(fits[1])
    assert all(abs(a - b) <= 1 for a, b in zip(*fits, strict=True))
    assert len(split.confirmed) == len(by_epoch.confirmed) == (name == GROKS)


def test_a_run_without_the_tier_s_metrics_is_not_registered_for_a_tier(tracking_uri):
    """Another trainer's run logs no coverage, hierarchy or quality: its tier is not judged,
    and the registry step says so (not that tier None is below min_tier)."""
    client = MlflowClient()
    run_id = logged_run(client, load_run(FAST).loc[:60])
    outcome = analyze_run(client, run_id, metric_map=metric_map("val_acc"))
    assert outcome.report.tier is None
    assert "Registry: skipped - tier not judged" in outcome.summary()
    assert client.search_registered_models() == []


def test_steps_a_key_was_not_logged_at_are_not_logged_nans(tracking_uri):
    """Training keys on 9 rows in 10 and the evaluation on the 10th, at steps of its own (a
    trainer logging every n steps and validating between them). The training keys, finite on
    90 % of the rows, read as logged every row, so in the frame alone each evaluation row looks
    like a NaN they logged and every candidate is rejected on `nan`. The reader knows which
    steps a key logged NaN at: the run keeps its by-epoch event and passes `no_nan_inf`, live
    too, and a NaN it did log still rejects the event."""
    client = MlflowClient()
    view = metric_map("acc+loss")
    roles = Roles.from_metric_map(view)
    apart = eval_every(load_run(GROKS), 10, apart=True)
    assert apart["train_loss"].notna().mean() == pytest.approx(0.9, abs=0.01)
    assert analyze(apart, roles).confirmed == []  # the frame alone
    outcome = analyze_run(client, logged_run(client, apart), metric_map=view, register=False)
    lo, hi = index()[GROKS]["label"]["window"]
    event = outcome.report.confirmed
    assert len(event) == 1 and lo <= event[0].breakthrough_epoch <= hi
    assert next(c for c in outcome.report.checks if c.name == "no_nan_inf").status == "pass"
    det, changes = follow(apart, roles, per_update=25)  # rows fed as logged: no NaN among them
    assert changes[-1].state == "confirmed"
    assert det.update(ended=True).first_epoch == event[0].breakthrough_epoch

    at = event[0].breakthrough_epoch
    nan_at = [s for s in apart.index[apart["train_loss"].notna()] if at - 5 <= s < at]
    apart.loc[nan_at, "train_loss"] = np.nan
    logged_nan = logged_run(client, apart, nan={"train_loss": nan_at})
    report = analyze_run(client, logged_nan, metric_map=view, register=False).report
    assert report.confirmed == [] and report.rejected[0].confound == "nan"
    assert next(c for c in report.checks if c.name == "no_nan_inf").status == "fail"
    # live, from the history a resumed training re-reads: the logged NaN go in, as rows
    resumed = load_history(client, logged_nan)[0]
    follower = LiveTrainFollower(lambda *_: None, history=resumed, roles=roles)
    assert follower.detector.update(ended=True).state == "none"
    assert follower.detector.assessment.report.rejected[0].confound == "nan"


def test_an_event_that_a_later_lr_drop_lifts_further_stays_an_event():
    """+35 points after a 400-epoch plateau, held 800 epochs; then an LR drop lifts the
    accuracy to 95 %. The drop's jump starts from the event's new level, not from its plateau:
    the event is not that jump's start."""
    rng = np.random.default_rng(0)
    e = np.arange(1, 1501)
    frame = pd.DataFrame(
        {
            "train_loss": np.maximum(2.0 * np.exp(-e / 3.0), 1e-3)
            * (1 + rng.normal(0, 0.01, 1500)),
            "val_acc": np.select([e < 400, e < 1200], [0.10, 0.45], 0.95)
            + rng.normal(0, 0.005, 1500),
            "lr": np.where(e < 1200, 1e-3, 1e-4),
        },
        index=e,
    )
    report = analyze(
        frame, Roles.from_metric_map("accuracy=val_acc,loss=train_loss,val_loss=,lr=lr")
    )
    assert [c.breakthrough_epoch for c in report.confirmed] == [400.0]
    assert [c.criterion for c in report.candidates if c.verdict == "rejected"] == ["control"]


@pytest.mark.parametrize("name", [GROKS, STEPPED, "par30_k3_n1000_wd0_s94", "s4_f60_wd1_s103"])
def test_an_accuracy_logged_in_percent_gets_the_verdicts_of_the_fraction(name):
    """Read as logged, every point of wobble in a percent accuracy was a rise of 100 points:
    the `none` parity run had 21 events and the S4 run 25. Read as a percent, the events are
    the fraction's, and the report says how it was read."""
    roles = Roles.from_metric_map(metric_map("acc+loss"))
    frame = load_run(name)
    want = analyze(frame, roles)
    got = analyze(in_percent(frame.copy()), roles)
    assert [(c.breakthrough_epoch, c.severity) for c in got.confirmed] == [
        (c.breakthrough_epoch, c.severity) for c in want.confirmed
    ]
    assert got.confidence == pytest.approx(want.confidence, abs=1e-6)
    assert any(n.startswith("val_acc read as a percent (largest value") for n in got.notes)
    assert not any("percent" in n for n in want.notes)


def test_the_live_state_of_a_percent_accuracy_is_the_fraction_s():
    """The follower watches the values as logged, so its flat tolerance is in percent too."""
    roles = Roles.from_metric_map(metric_map("acc+loss"))
    frame = load_run(STEPPED)
    _, fraction = follow(frame, roles, per_update=25)
    det, percent = follow(in_percent(frame.copy()), roles, per_update=25)
    assert [(s.state, s.seen_at_step, s.event_epochs) for s in percent] == [
        (s.state, s.seen_at_step, s.event_epochs) for s in fraction
    ]
    bands = assess(frame, roles).bands
    assert det.assessment.bands["val_acc"] == pytest.approx(100 * bands["val_acc"], rel=0.05)


@pytest.mark.parametrize(
    "values,scale",
    [([0.02, 0.5, 0.97], 1.0), ([2.0, 50.0, 97.3], 0.01), ([0.2, 0.9], 1.0), ([5, 150], 1.0)],
)
def test_which_accuracies_are_read_as_percent(values, scale):
    """In [0, 100] with a value above 1; one that never passes 1 % reads as a fraction."""
    assert percent_scale(pd.DataFrame({"acc": values}), "acc") == scale


def underflowed(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame``'s run with a training loss 1000x smaller (as without weight decay), logged as
    float32 logs it: 0.0 wherever it falls below 1e-8 (every example underflowed)."""
    loss = frame["train_loss"] * 1e-3
    return frame.assign(train_loss=loss.where(loss >= 1e-8, 0.0))


def test_a_loss_logged_as_zero_reads_as_its_smallest_value():
    """Zeros over the whole plateau's training loss are its smallest value, not gaps that
    leave the fit unknown ("fitted never"): the event is the one the run has without them."""
    frame = load_run(UNDERFLOWS)
    assert (underflowed(frame)["train_loss"] == 0).mean() > 0.5
    want = analyze(frame.assign(train_loss=frame["train_loss"] * 1e-3), VAL_ACC).confirmed
    got = analyze(underflowed(frame), VAL_ACC).confirmed
    assert len(want) == 1
    assert [(c.breakthrough_epoch, c.severity) for c in got] == [
        (c.breakthrough_epoch, c.severity) for c in want
    ]


def test_a_zero_beside_no_small_loss_is_a_placeholder_not_a_loss():
    """A script that logs `val_loss` 0.0 on the epochs it does not evaluate: its zeros are
    steps without a value, for they follow losses far above where float32 underflows."""
    roles = Roles.from_metric_map(metric_map("loss-only"))
    gaps = eval_every(load_run(GROKS), 10)
    zeros = gaps.fillna({"val_loss": 0.0, "val_acc": 0.0})
    want = analyze(gaps, roles).confirmed
    assert len(want) == 1
    assert [c.breakthrough_epoch for c in analyze(zeros, roles).confirmed] == [
        c.breakthrough_epoch for c in want
    ]


def test_a_training_loss_logged_only_as_zero_is_no_training_loss():
    frame = load_run(UNDERFLOWS).assign(train_loss=0.0)
    report = analyze(frame, VAL_ACC)
    assert any(n.startswith("no training loss") for n in report.notes)
    assert report.candidates
    assert all(c.details.get("fit_epoch") is None for c in report.candidates)


def test_the_gap_fit_reads_a_zero_training_loss_as_its_smallest_value():
    """0 is not 10x below a validation loss of 5e-8 when the training loss's smallest logged
    value is 1e-8: the zero is an underflow from about there, not a loss of nothing."""
    e = np.arange(40)
    frame = pd.DataFrame(
        {
            "train_loss": np.where(e < 10, 1.0, np.where(e < 12, 1e-8, 0.0)),
            "val_loss": np.where(e < 12, 1.0, 5e-8),
        },
        index=e,
    )
    roles = Roles.from_metric_map("accuracy=,loss=train_loss,val_loss=val_loss,lr=")
    ctx = RunContext(frame, roles, frozenset(frame.columns), Thresholds(), (), {})
    assert ctx.gap_fit == 10.0
    later = frame.assign(val_loss=np.where(e < 12, 1e-8, 5e-8))  # read as 0, 0 <= 5e-8 fits
    assert RunContext(later, roles, frozenset(frame.columns), Thresholds(), (), {}).gap_fit is None


def test_the_live_state_of_a_loss_logged_as_zero_is_the_loss_s():
    det, changes = follow(underflowed(load_run(UNDERFLOWS)), roles=VAL_ACC, per_update=25)
    final = det.update(ended=True)
    event = analyze(load_run(UNDERFLOWS), VAL_ACC).confirmed[0]
    assert final.state == "confirmed"
    assert final.event_epochs == (event.breakthrough_epoch,)
    assert "confirmed" in [s.state for s in changes]


@pytest.mark.parametrize("view", ["acc+loss", "val_acc"])
def test_a_noise_peak_on_the_flank_of_the_rise_is_no_event_of_its_own(view):
    """The accuracy climbs a few points before the jump; on 2,000 examples drawn afresh, one
    evaluation there peaks two points over the median around it. The peak is part of the
    rise, not a spike candidate that the climb then holds: one event, in the window."""
    roles = Roles.from_metric_map(metric_map(view))
    lo, hi = index()[NOISY]["label"]["window"]
    got = analyze(sampled(load_run(NOISY), 2000), roles).confirmed
    assert len(got) == 1 and lo <= got[0].breakthrough_epoch <= hi
    det, _ = follow(sampled(load_run(NOISY), 2000), roles=roles, per_update=25)
    final = det.update(ended=True)
    assert final.state == "confirmed"
    assert final.event_epochs == (got[0].breakthrough_epoch,)


@pytest.mark.parametrize("view", ["acc+loss", "loss-only"])
def test_a_run_stopped_early_once_generalised_keeps_its_verdict(view):
    """Cut 30 epochs after it generalised, the `fast` run ends before its training loss is
    ever 10x below its validation loss, and that loss went on falling past its plateau level:
    no fit, rather than one mid-fall that would make the validation loss's fall a delayed one.
    The grokking run keeps its event."""
    roles = Roles.from_metric_map(metric_map(view))
    runs = index()
    fast = stopped(load_run(FITS_LATE), runs[FITS_LATE]["label"], 30)
    assert analyze(fast, roles).confirmed == []
    lo, hi = runs[GROKS]["label"]["window"]
    groks = analyze(stopped(load_run(GROKS), runs[GROKS]["label"], 30), roles).confirmed
    assert len(groks) == 1 and lo <= groks[0].breakthrough_epoch <= hi


@pytest.mark.parametrize("view", ["loss-only", "acc+loss"])
def test_losses_logged_as_perplexities_get_the_verdicts_of_the_losses(view):
    """Read as losses, perplexities that fall from 100 to 1.0001 have lost the decades the
    loss fell over: the loss-only view found no event in this run."""
    want = analyze(load_run(STEPPED), Roles.from_metric_map(metric_map(view))).confirmed
    roles = Roles.from_metric_map(metric_map(view, perplexity=True))
    got = analyze(as_perplexity(load_run(STEPPED)), roles)
    assert len(want) == 1
    assert [(c.breakthrough_epoch, c.severity) for c in got.confirmed] == [
        (c.breakthrough_epoch, c.severity) for c in want
    ]
    assert "train_ppl, val_ppl read as perplexities: their logs (cross-entropies) analysed" in (
        got.notes
    )
    phases = got.answers["How did each LR phase move the key metrics?"]
    assert "log(train_ppl) " in phases and " train_ppl " not in phases


def test_a_perplexity_logged_as_zero_between_evaluations_is_a_step_without_one():
    """A script that logs `val_ppl` 0.0 on the epochs it does not evaluate: its zeros are
    gaps, as a loss's are, not a log of 0 (-inf, a non-finite stretch)."""
    roles = Roles.from_metric_map(metric_map("loss-only", perplexity=True))
    gaps = as_perplexity(eval_every(load_run(STEPPED), 2))
    want = analyze(gaps, roles)
    got = analyze(gaps.fillna({"val_ppl": 0.0}), roles)
    assert len(want.confirmed) == 1
    assert [c.breakthrough_epoch for c in got.confirmed] == [
        c.breakthrough_epoch for c in want.confirmed
    ]
    assert [(c.name, c.status) for c in got.checks] == [(c.name, c.status) for c in want.checks]


def test_the_live_state_of_perplexities_is_the_losses_s():
    """The follower watches a perplexity's log, as the detector reads it."""
    _, losses = follow(load_run(STEPPED), Roles.from_metric_map(metric_map("loss-only")), 25)
    roles = Roles.from_metric_map(metric_map("loss-only", perplexity=True))
    _, ppl = follow(as_perplexity(load_run(STEPPED)), roles, per_update=25)
    assert "confirmed" in [s.state for s in losses]
    assert [(s.state, s.seen_at_step, s.event_epochs) for s in ppl] == [
        (s.state, s.seen_at_step, s.event_epochs) for s in losses
    ]
    plateau = [s.detail for s in ppl if s.state == "plateau"]
    assert plateau and all(": log(val_ppl) flat at " in d for d in plateau)


@pytest.mark.parametrize(
    "key,named",
    [
        ("val_ppl", True),
        ("eval/perplexity", True),
        ("PPL", True),
        ("val_loss", False),
        ("val_log_ppl", False),  # a perplexity's log is the cross-entropy
        ("eval/log_perplexity", False),
        ("ppl_loss", False),
    ],
)
def test_which_keys_name_a_perplexity(key, named):
    assert is_perplexity(key) is named


@pytest.mark.parametrize("view", ["acc+loss", "loss-only"])
@pytest.mark.parametrize("name", [FAST_MB, FITS_LATE])
def test_a_fast_run_logging_one_batch_s_loss_keeps_its_verdict(name, view):
    """A training loss scattered by a lognormal factor (sd 0.5) each epoch: read row by row,
    one low row early in its fall placed the fit there, and the accuracy's rise with the fit
    read as delayed (an event for every seed). Read through a running median: none."""
    roles = Roles.from_metric_map(metric_map(view))
    assert analyze(load_run(name), roles).confirmed == []
    for seed in range(4):
        assert analyze(last_batch(load_run(name), 0.5, seed), roles).confirmed == [], seed


def test_the_running_median_leaves_a_smooth_loss_and_each_end_as_logged():
    """One row per epoch of a mean loss (smooth) is read as logged; a scattered one is read
    within about 0.05 decades of its level (the median row), and its first and last rows keep
    their place: a steep first fall is not pulled down to the middle of a one-sided window."""
    e = np.arange(400.0)
    smooth = 10 ** (2 - 4 * (1 - np.exp(-e / 30)))  # 100 falling to 0.01
    assert np.array_equal(denoised_loss(smooth), smooth)
    scattered = smooth * np.exp(np.random.default_rng(0).normal(0, 0.5, len(e)))
    read = denoised_loss(scattered)
    assert read[0] == scattered[0] and read[-1] == scattered[-1]
    off = np.abs(np.log10(read / smooth))[20:-20]
    assert np.median(off) < 0.05 and off.max() < 0.3
    assert np.median(np.abs(np.log10(scattered / smooth))[20:-20]) > 0.1
