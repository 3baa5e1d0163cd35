"""Multi-phase LR: phase boundaries scale with the epoch count; shape of each phase."""

import pytest

from tvae.config import ScheduleConfig
from tvae.schedule import lr_scale, phase_bounds, phase_index


def test_phases_for_50_epochs():
    cfg = ScheduleConfig()  # 0.4 exploration, 0.3 search, 2 restarts
    assert phase_bounds(50, cfg) == (20, 35)
    phases = [phase_index(e, 50, cfg) for e in range(1, 51)]
    assert phases == [0] * 20 + [1] * 15 + [2] * 15


def test_phases_scale_with_epochs():
    cfg = ScheduleConfig()
    assert phase_bounds(500, cfg) == (200, 350)
    assert phase_index(201, 500, cfg) == 1 and phase_index(351, 500, cfg) == 2


def test_lr_shape():
    cfg = ScheduleConfig()
    s = [lr_scale(e, 50, cfg) for e in range(1, 51)]
    assert s[0] == 1.0 and s[10] == 1.0  # warm restart at epoch 11
    assert s[9] == pytest.approx(cfg.min_lr_scale)  # end of first cosine cycle
    assert all(a > b for a, b in zip(s[:9], s[1:10], strict=True))  # cosine decreasing
    assert set(s[20:35]) == {cfg.search_lr_scale}  # constant search phase
    assert all(a > b for a, b in zip(s[35:], s[36:], strict=False))  # linear decay
    assert s[-1] == pytest.approx(cfg.final_lr_scale)


def test_tiny_runs_are_valid():
    cfg = ScheduleConfig()
    for total in (1, 2, 3, 4):
        for e in range(1, total + 1):
            assert 0.0 <= lr_scale(e, total, cfg) <= 1.0
            assert phase_index(e, total, cfg) in (0, 1, 2)
