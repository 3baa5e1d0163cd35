"""Verdicts on real small trainings (tests/fixtures/*.csv, from make_fixtures.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tvae.analysis import Roles, analyze

FIX = Path(__file__).resolve().parent / "fixtures"
ROLES = Roles.from_metric_map(
    "accuracy=val_acc,loss=train_loss,val_loss=val_loss,lr=lr,grad_norm=grad_norm,"
    "hierarchy=,quality="
)


def load(name: str) -> pd.DataFrame:
    return pd.read_csv(FIX / name, index_col="epoch")


def crossing(df: pd.DataFrame, key: str, level: float) -> float:
    """First epoch where ``key`` reaches ``level``: the data's own answer to 'when'."""
    return float(df.index[np.argmax(df[key].to_numpy() >= level)])


@pytest.mark.parametrize("name", ["modadd_grok_wd1.csv", "modadd_grok_slingshot.csv"])
def test_real_grokking_is_one_confirmed_major_event(name):
    df = load(name)
    rep = analyze(df, ROLES)
    assert len(rep.confirmed) == 1, rep.summary()
    ev = rep.confirmed[0]
    half = crossing(df, "val_acc", 0.5)
    assert abs(ev.breakthrough_epoch - half) <= 0.05 * len(df)
    assert ev.severity == "major"
    # the plateau ends before the rise and starts after memorisation began
    assert ev.plateau_start < ev.plateau_end < ev.breakthrough_epoch <= ev.rise_end
    assert ev.plateau_end - ev.plateau_start > ev.rise_end - ev.plateau_end
    assert "val_loss" in ev.metrics  # val loss and val acc moved together
    tags = rep.tags()
    assert tags["grokking.events"] == "1"
    assert tags["grokking.first_epoch"] == f"{int(ev.breakthrough_epoch)}"


def test_slingshot_collapse_after_generalising_is_not_a_new_event():
    df = load("modadd_grok_slingshot.csv")
    rep = analyze(df, ROLES)
    # the fixture really collapses after generalising (val acc drops > 10 points, recovers)
    after = df.loc[crossing(df, "val_acc", 0.95) :, "val_acc"]
    assert after.min() < 0.9 and after.iloc[-1] > 0.95
    assert len(rep.confirmed) == 1
    assert all(c.breakthrough_epoch > after.idxmin() for c in rep.rejected)
    assert all(c.confound == "recovery" for c in rep.rejected)


def test_memorising_run_has_no_event():
    rep = analyze(load("modadd_memorise_wd0.csv"), ROLES)
    assert rep.confirmed == [] and rep.tags()["grokking.severity"] == "none"
    assert "grokking.first_epoch" not in rep.tags()


def test_lr_drop_jump_is_rejected_as_confound():
    df = load("lr_drop_classifier.csv")
    drop = float(df.index[np.argmax(df["lr"].to_numpy() < df["lr"].iloc[0])])
    rep = analyze(df, ROLES)
    assert rep.confirmed == []
    assert len(rep.rejected) == 1, rep.summary()
    c = rep.rejected[0]
    assert c.confound == "lr" and f"epoch {int(drop)}" in c.reason
    assert rep.tags()["grokking.rejected"] == "1"


def test_loss_only_run_detects_val_loss_breakthrough():
    df = load("modadd_grok_wd1.csv")
    rep = analyze(df, Roles.from_metric_map("accuracy=", ROLES))
    assert len(rep.confirmed) == 1
    ev = rep.confirmed[0]
    assert ev.size_unit == "log10" and ev.size > 2
    # between the val loss starting to fall for good and reaching its final decade
    assert crossing(df, "val_acc", 0.05) <= ev.breakthrough_epoch <= crossing(df, "val_acc", 1.0)


def test_irregular_gappy_logging_still_finds_the_event():
    df = load("modadd_grok_wd1.csv")
    rng = np.random.default_rng(0)
    keep = np.sort(rng.choice(len(df), size=len(df) // 8, replace=False))
    sub = df.iloc[keep]
    rep = analyze(sub, ROLES)
    assert len(rep.confirmed) == 1
    assert abs(rep.confirmed[0].breakthrough_epoch - crossing(df, "val_acc", 0.5)) < 0.05 * len(df)
    assert all(b in set(sub.index) for b in rep.boundaries)


def test_phases_separate_memorisation_plateau_and_grokking():
    df = load("modadd_grok_wd1.csv")
    rep = analyze(df, ROLES)
    assert 3 <= len(rep.phases) <= 8
    ev = rep.confirmed[0]
    fast = [p for p in rep.phases if p.character == "fast improvement"]
    assert fast[0].start == df.index[0]  # memorisation: loss falls fast at once
    assert any(p.start <= ev.breakthrough_epoch <= p.end for p in fast[1:])
    assert rep.tags()["phases.count"] == str(len(rep.phases))
