"""Homeostasis freeze/unfreeze decisions: warmup, patience, hysteresis, state round trip."""

from tvae.config import HomeostasisConfig
from tvae.homeostasis import Homeostasis


def _cfg(**kw):
    base = dict(warmup_epochs=3, hysteresis_epochs=2, patience=2, hierarchy_tolerance=0.01)
    base.update(kw)
    return HomeostasisConfig(**base)


def test_encoder_A_freezes_after_patience_and_unfreezes_below_threshold():
    h = Homeostasis(_cfg())
    assert h.update(1, 1.0, -0.1) == [] and h.update(2, 1.0, -0.2) == []  # warmup
    events = h.update(3, 1.0, -0.3)
    assert [(e["name"], e["encoder"], e["epoch"]) for e in events] == [("freeze", "A", 3)]
    assert h.frozen_A
    assert h.update(4, 0.5, -0.4) == []  # hysteresis: changed at 3, holds until 5
    assert h.frozen_A
    events = h.update(5, 0.5, -0.5)
    assert [(e["name"], e["encoder"]) for e in events] == [("unfreeze", "A")]
    assert not h.frozen_A


def test_coverage_between_thresholds_keeps_state():
    h = Homeostasis(_cfg(warmup_epochs=0, hysteresis_epochs=0, patience=1))
    h.update(1, 0.999, -0.1)
    assert h.frozen_A
    h.update(2, 0.99, -0.2)  # below freeze (0.995) but above unfreeze (0.98)
    assert h.frozen_A


def test_encoder_B_freezes_on_plateau_and_unfreezes_on_regression():
    h = Homeostasis(_cfg(warmup_epochs=0, hysteresis_epochs=0, coverage_freeze=1.0))
    h.update(1, 0.0, -0.50)
    h.update(2, 0.0, -0.70)  # improving
    assert not h.frozen_B
    h.update(3, 0.0, -0.705)  # within tolerance: stale 1
    events = h.update(4, 0.0, -0.704)  # stale 2 = patience
    assert h.frozen_B and events[0]["encoder"] == "B"
    h.update(5, 0.0, -0.695)  # worse by 0.01: not more than tolerance
    assert h.frozen_B
    events = h.update(6, 0.0, -0.60)
    assert not h.frozen_B and events[0]["name"] == "unfreeze"


def test_disabled_never_freezes():
    h = Homeostasis(_cfg(enabled=False, warmup_epochs=0))
    for e in range(1, 20):
        assert h.update(e, 1.0, -0.8) == []
    assert not h.frozen_A and not h.frozen_B


def test_state_round_trip_gives_same_decisions():
    a = Homeostasis(_cfg())
    for e, (c, hb) in enumerate([(1.0, -0.5), (1.0, -0.6), (1.0, -0.6)], start=1):
        a.update(e, c, hb)
    b = Homeostasis(_cfg())
    b.load_state_dict(a.state_dict())
    assert b.state_dict() == a.state_dict()
    for e, (c, hb) in enumerate([(0.5, -0.6), (0.5, -0.6), (1.0, -0.4)], start=4):
        assert a.update(e, c, hb) == b.update(e, c, hb)
