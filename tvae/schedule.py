"""Multi-phase learning rate, scaled to the run's epoch count (pure functions of the epoch).

Phase 0, exploration: the first round(epochs * exploration_frac) epochs, cosine annealing from
1.0 to min_lr_scale with `restarts` equal warm-restart cycles. Phase 1, grokking search: the
next round(epochs * search_frac) epochs at the constant search_lr_scale. Phase 2, fine tuning:
the rest, linear decay from search_lr_scale to final_lr_scale (reached at the last epoch).
Epochs are 1-based. Being stateless, the schedule needs nothing in the checkpoint.
"""

from __future__ import annotations

import math

from tvae.config import ScheduleConfig

PHASE_NAMES = ("exploration", "grokking_search", "fine_tuning")


def phase_bounds(total_epochs: int, cfg: ScheduleConfig) -> tuple[int, int]:
    """Last epoch of exploration and last epoch of search (1-based, inclusive)."""
    explore = max(1, round(total_epochs * cfg.exploration_frac))
    search = round(total_epochs * cfg.search_frac)
    explore = min(explore, total_epochs)
    return explore, min(explore + search, total_epochs)


def phase_index(epoch: int, total_epochs: int, cfg: ScheduleConfig) -> int:
    """0 exploration, 1 grokking search, 2 fine tuning."""
    end_explore, end_search = phase_bounds(total_epochs, cfg)
    if epoch <= end_explore:
        return 0
    return 1 if epoch <= end_search else 2


def lr_scale(epoch: int, total_epochs: int, cfg: ScheduleConfig) -> float:
    """Multiplier on the base learning rate for this (1-based) epoch."""
    end_explore, end_search = phase_bounds(total_epochs, cfg)
    if epoch <= end_explore:
        cycle = max(1, math.ceil(end_explore / cfg.restarts))
        pos = (epoch - 1) % cycle
        cos = 0.5 * (1.0 + math.cos(math.pi * pos / max(1, cycle - 1))) if cycle > 1 else 1.0
        return cfg.min_lr_scale + (1.0 - cfg.min_lr_scale) * cos
    if epoch <= end_search:
        return cfg.search_lr_scale
    span = total_epochs - end_search
    frac = (epoch - end_search) / span
    return cfg.search_lr_scale + (cfg.final_lr_scale - cfg.search_lr_scale) * frac
