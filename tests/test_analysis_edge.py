"""Synthetic edge cases: degenerate histories and each named false positive."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from tvae.analysis import TIER_ORDER, Roles, analyze

ACC = Roles.from_metric_map("accuracy=acc,loss=loss,hierarchy=,quality=,lr=,grad_norm=")


def frame(epochs, **cols) -> pd.DataFrame:
    df = pd.DataFrame(cols, index=pd.Index(np.asarray(epochs), name="epoch"))
    return df


def seed_run(n: int = 50, jump_at: int = 30, rng_seed: int = 0) -> pd.DataFrame:
    """The seed's 50-epoch picture in our keys: learn, long plateau, sudden sustained jump."""
    rng = np.random.default_rng(rng_seed)
    e = np.arange(n)
    cov = np.where(e < 10, 0.06 * e, 0.6) + rng.normal(0, 0.002, n)
    cov[jump_at:] += np.minimum(e[jump_at:] - jump_at + 1, 3) * 0.05  # +15 points in 3 epochs
    loss = np.where(e < 10, 3.0 - 0.2 * e, 1.0 - 1e-6 * e)
    loss[jump_at:] -= 0.3
    h = np.where(e < jump_at, -0.3, -0.6) + rng.normal(0, 0.002, n)
    q = np.where(e < jump_at, 0.8, 1.4) + rng.normal(0, 0.002, n)
    return frame(
        e,
        **{
            "eval/coverage": cov,
            "train/loss": loss,
            "eval/hierarchy_B": h,
            "eval/Q": q,
            "opt/lr": np.full(n, 1e-3),
            "state/lr_phase": np.zeros(n),
        },
    )


def test_seed_style_50_epoch_run_confirmed_in_our_keys():
    rep = analyze(seed_run(), run_status="FINISHED")
    assert len(rep.confirmed) == 1, rep.summary()
    ev = rep.confirmed[0]
    assert 29 <= ev.breakthrough_epoch <= 32
    assert ev.plateau_end - ev.plateau_start >= 15
    assert ev.severity == "standard"  # plateau 15-25 epochs, jump > 8 points
    assert {"eval/coverage", "train/loss", "eval/hierarchy_B", "eval/Q"} <= set(ev.metrics)
    assert rep.tier is not None and rep.tier.name == "None"
    assert "coverage" in rep.tier.blocking


@pytest.mark.parametrize("key", ["state/frozen_encoder_A", "state/geodesic_active", "opt/lr"])
def test_control_change_before_jump_is_confound(key):
    df = seed_run()
    if key == "opt/lr":
        df.loc[29:, key] = 1e-4
    else:
        df[key] = np.where(df.index >= 29, 1.0, 0.0)
    rep = analyze(df)
    assert rep.confirmed == [] and len(rep.rejected) == 1
    assert rep.rejected[0].confound == key and "epoch 29" in rep.rejected[0].reason


def test_control_change_far_from_jump_is_not_a_confound():
    df = seed_run()
    df["state/frozen_encoder_A"] = np.where(df.index >= 12, 1.0, 0.0)
    rep = analyze(df)
    assert len(rep.confirmed) == 1
    assert "Were events near a freeze/unfreeze?" in rep.answers


def test_nan_stretch_before_jump_is_rejected():
    df = seed_run()
    df.loc[27:28, "train/loss"] = np.nan
    rep = analyze(df)
    assert rep.confirmed == [] and rep.rejected[0].confound == "nan"
    assert next(c for c in rep.checks if c.name == "no_nan_inf").status == "fail"


def test_single_epoch_spike_is_rejected():
    rng = np.random.default_rng(1)
    acc = 0.5 + rng.normal(0, 0.003, 80)
    acc[50] = 0.9
    loss = np.full(80, 0.4)
    rep = analyze(frame(np.arange(80), acc=acc, loss=loss), ACC)
    assert rep.confirmed == [] and len(rep.rejected) == 1
    assert rep.rejected[0].confound == "spike" and "epoch 50" in rep.rejected[0].reason


def test_quantised_precision_plateau_is_rejected_but_real_jump_on_grid_is_not():
    rng = np.random.default_rng(2)
    n = 80
    under = np.where(np.arange(n) < 40, 0.70, 0.745) + rng.normal(0, 0.012, n)
    acc = np.round(under / 0.05) * 0.05  # a 20-sample eval set: steps of 0.05
    loss = np.full(n, 0.3)
    rep = analyze(frame(np.arange(n), acc=acc, loss=loss), ACC)
    assert rep.confirmed == []
    assert any(c.confound == "precision" for c in rep.rejected), rep.summary()
    big = np.round(np.where(np.arange(n) < 40, 0.5, 0.9) / 0.05) * 0.05
    # training fitted first (loss 2.0 -> 0.3 in five epochs), and the loss moves with the jump
    loss2 = np.where(np.arange(n) < 40, np.maximum(0.3, 2.0 - 0.4 * np.arange(n)), 0.1)
    rep2 = analyze(frame(np.arange(n), acc=big, loss=loss2), ACC)
    assert len(rep2.confirmed) == 1


def test_smooth_learning_curve_is_not_grokking():
    e = np.arange(300)
    acc = 1 - np.exp(-e / 60)
    loss = np.exp(-e / 60)
    rep = analyze(frame(e, acc=acc, loss=loss), ACC)
    assert rep.confirmed == []


def test_empty_history():
    rep = analyze(pd.DataFrame())
    tags = rep.tags()
    assert tags["grokking.events"] == "0" and tags["phases.count"] == "0"
    assert tags["tier"] == "None" and rep.tier is None
    assert set(rep.skipped_roles) == set(Roles().mapping())
    json.dumps(rep.to_dict())


def test_one_epoch_history_judges_tier_only():
    df = frame(
        [7],
        **{
            "eval/coverage": [1.0],
            "eval/hierarchy_B": [-0.83],
            "eval/Q": [2.5],
            "train/loss": [0.1],
        },
    )
    rep = analyze(df)
    assert rep.candidates == [] and rep.tier.name == "Exceptional" and rep.tier.blocking is None
    assert len(rep.phases) <= 1


def test_all_nan_columns_are_skipped_roles():
    df = frame(np.arange(20), **{"eval/coverage": np.full(20, np.nan), "train/loss": np.ones(20)})
    rep = analyze(df)
    assert "accuracy" in rep.skipped_roles and "no finite" in rep.skipped_roles["accuracy"]
    assert rep.candidates == [] and rep.tier is None
    assert "skipped roles" in rep.summary()


def test_constant_history_is_one_plateau():
    df = frame(np.arange(100), acc=np.full(100, 0.3), loss=np.full(100, 2.0))
    rep = analyze(df, ACC)
    assert rep.candidates == []
    assert [p.character for p in rep.phases] == ["plateau"]


def test_system_columns_ignored_by_detectors_and_used_by_checks():
    df = seed_run()
    df["system/gpu_0_utilization_percentage"] = 95.0
    df["perf/samples_per_sec"] = 1500.0
    rep = analyze(df, run_status="RUNNING")
    checks = {c.name: c for c in rep.checks}
    assert checks["gpu_utilization"].status == "pass"
    assert checks["samples_per_sec"].status == "fail"
    assert checks["peak_vram"].status == "not measured"
    assert checks["run_finished"].status == "fail"
    assert rep.summary().startswith("run still RUNNING: analysis so far")
    assert all(not m.startswith("system/") for c in rep.candidates for m in c.metrics)


def test_tags_and_json_follow_contract():
    rep = analyze(seed_run())
    tags = rep.tags()
    assert set(tags) == {
        "grokking.events",
        "grokking.first_epoch",
        "grokking.severity",
        "grokking.rejected",
        "grokking.confidence",
        "phases.count",
        "phases.boundaries",
        "tier",
    }
    assert tags["tier"] in TIER_ORDER
    assert all(isinstance(v, str) for v in tags.values())
    assert 0.5 < float(tags["grokking.confidence"]) <= 1.0  # a confirmed event scores above 0.5
    bounds = [float(b) for b in tags["phases.boundaries"].split(",") if b]
    assert len(bounds) == int(tags["phases.count"]) - 1 and bounds == sorted(bounds)
    d = json.loads(json.dumps(rep.to_dict()))
    assert d["candidates"][0]["verdict"] == "confirmed" and d["tier"]["name"] == "None"
    assert d["confidence"] == rep.confidence
    assert "Did grokking occur?" in rep.answers


def test_missing_training_steps_fail_the_steps_check():
    """A step lost to a crash or an unreachable store is named, not silently skipped."""
    df = seed_run()
    assert "train/loss" in df.columns
    full = {c.name: c for c in analyze(df).checks}["steps_complete"]
    assert full.status == "pass" and full.value == 0
    gap = df.drop(index=df.index[[10, 11, 30]])
    lost = {c.name: c for c in analyze(gap).checks}["steps_complete"]
    assert lost.status == "fail" and lost.value == 3
    assert lost.note == ", ".join(f"{e:g}" for e in df.index[[10, 11, 30]])


def test_an_accuracy_that_rises_part_of_the_way_scores_below_one_that_rises_all_the_way():
    """Same plateau, delay and speed of rise; one stops at 20 %, the other reaches 98 %."""
    e = np.arange(1, 601)
    rng = np.random.default_rng(3)
    loss = np.maximum(2.0 * np.exp(-e / 8), 1e-3)
    up = np.clip((e - 300) / 20, 0, 1)
    scores = {}
    for top in (0.20, 0.98):
        acc = 0.02 + (top - 0.02) * up + rng.normal(0, 0.002, len(e))
        (event,) = analyze(frame(e, acc=acc, loss=loss), ACC).confirmed
        assert 295 <= event.breakthrough_epoch <= 320
        scores[top] = event.confidence
    assert 0.5 < scores[0.20] < scores[0.98] - 0.1


def test_a_run_without_a_training_loss_says_its_fit_was_not_checked():
    """The fit and the delay after it are what tell grokking from a late start; without a
    training loss neither is checked, and the report says so beside whatever it found."""
    run = seed_run()
    with_loss = analyze(run)
    without = analyze(run.drop(columns=["train/loss"]))
    assert with_loss.confirmed and without.confirmed
    assert not any("no training loss" in n for n in with_loss.notes)
    assert [n for n in without.notes if n.startswith("no training loss (the loss role)")]
    unmapped = analyze(run, Roles.from_metric_map("loss="))
    assert any(n.startswith("no training loss") for n in unmapped.notes)


def test_a_run_without_an_lr_says_a_schedule_was_not_ruled_out():
    run = seed_run()
    assert not any("no learning rate" in n for n in analyze(run).notes)
    without = analyze(run.drop(columns=["opt/lr"]))
    assert [n for n in without.notes if n.startswith("no learning rate (the lr role)")]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("at", [40, 120, 180])
def test_a_spike_on_the_plateau_after_an_early_rise_is_rejected_as_a_spike(at, seed):
    """On a noisy plateau after a rise the median's swing runs on to the plateau's last
    wiggle; a spike there is still a candidate, and rejected with its reason."""
    rng = np.random.default_rng(seed)
    e = np.arange(200)
    acc = np.where(e < 10, 0.1 + 0.04 * e, 0.5) + rng.normal(0, 0.003, len(e))
    acc[at] = 0.9
    loss = np.where(e < 10, 2.0 - 0.19 * e, 0.1)
    report = analyze(frame(e, acc=acc, loss=loss), ACC)
    assert report.confirmed == []
    assert [c.criterion for c in report.candidates if c.breakthrough_epoch == at] == ["spike"]
