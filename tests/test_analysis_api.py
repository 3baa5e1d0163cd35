"""Roles, thresholds, tiers and plots: the API other modules code against."""

from __future__ import annotations

import pandas as pd
import pytest

from tvae.analysis import TIER_ORDER, Roles, Thresholds, analyze, judge_tier, load_thresholds
from tvae.analysis.plots import plot_report


def test_metric_map_overrides_defaults_and_rejects_bad_text():
    r = Roles.from_metric_map("accuracy=val_acc, loss=train_loss,lr=lr,controls=a|b/*")
    assert (r.accuracy, r.loss, r.lr, r.controls) == ("val_acc", "train_loss", "lr", ("a", "b/*"))
    assert r.hierarchy == Roles().hierarchy
    assert r.missing(["val_acc", "train_loss"]) == ["hierarchy", "quality", "grad_norm", "lr"]
    assert r.control_columns(["lr", "b/x", "c", "system/b/y"]) == ["lr", "b/x"]
    for bad in ("accuracy", "speed=x", "loss=a,loss=b"):
        with pytest.raises(ValueError) as exc:
            Roles.from_metric_map(bad)
        assert "\n" not in str(exc.value)


def test_load_thresholds_partial_and_unknown(tmp_path):
    p = tmp_path / "t.yaml"
    p.write_text("breakthrough: {points: 0.05}\ntiers: {good: {quality: 1.7}}\n")
    t = load_thresholds(p)
    assert t.breakthrough.points == 0.05 and t.tiers.good.quality == 1.7
    assert t.tiers.good.coverage == Thresholds().tiers.good.coverage  # a single value overridden
    assert t.breakthrough.epochs == Thresholds().breakthrough.epochs
    assert t.sustain == Thresholds().sustain
    for bad, named in (
        ("bogus: 1\n", "bogus: unknown threshold"),
        ("plateau: {bogus_key: 1}\n", "plateau.bogus_key: unknown threshold"),
        ("sustain: {epochs: lots}\n", "sustain.epochs"),
        ("- 1\n", "must hold a mapping"),
    ):
        p.write_text(bad)
        with pytest.raises(ValueError, match=named) as exc:
            load_thresholds(p)
        assert "\n" not in str(exc.value)
    with pytest.raises(ValueError, match="not found"):
        load_thresholds(tmp_path / "missing.yaml")


@pytest.mark.parametrize(
    ("cov", "h", "q", "tier", "blocker"),
    [
        (0.80, -0.9, 3.0, "None", "coverage"),  # Minimal needs coverage strictly above 80%
        (0.81, -0.5, 1.01, "Minimal", "Good"),  # hierarchy "at or below" -0.5 holds
        (0.96, -0.69, 1.6, "Minimal", "hierarchy"),
        (0.995, -0.81, 2.1, "Excellent", "Exceptional"),
        (1.0, -0.83, 2.21, "Exceptional", None),
        (1.0, -0.83, 2.2, "Excellent", "Q"),  # Q must be strictly above 2.2
    ],
)
def test_judge_tier_table(cov, h, q, tier, blocker):
    res = judge_tier(cov, h, q)
    assert res.name == tier
    if blocker is None:
        assert res.blocking is None
    else:
        assert blocker in res.blocking
    assert res.at_least("None") and res.at_least(tier)
    nxt = TIER_ORDER.index(tier) + 1
    if nxt < len(TIER_ORDER):
        assert not res.at_least(TIER_ORDER[nxt])


def test_tier_thresholds_are_configurable():
    assert judge_tier(0.9, -0.6, 1.2).name == "Minimal"
    assert (
        judge_tier(
            0.9,
            -0.6,
            1.2,
            Thresholds(tiers={"minimal": {"coverage": 0.95, "hierarchy": -0.5, "quality": 1.0}}),
        ).name
        == "None"
    )


def test_plots_have_trajectories_and_phases():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from test_analysis_edge import seed_run

    df = seed_run()
    df["state/frozen_encoder_A"] = (df.index >= 12).astype(float)
    rep = analyze(df)
    figs = plot_report(df, rep, Roles())
    assert set(figs) == {"trajectories.png", "phases.png"}
    traj = figs["trajectories.png"]
    assert len(traj.axes) == 4  # loss, coverage, hierarchy_B, Q
    assert [a.get_ylabel() for a in traj.axes] == [
        "train/loss",
        "eval/coverage",
        "eval/hierarchy_B",
        "eval/Q",
    ]
    empty = plot_report(pd.DataFrame(), analyze(pd.DataFrame()))
    assert set(empty) == {"trajectories.png", "phases.png"}
