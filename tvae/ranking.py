"""How epochs compare when picking best.pt: first the tier reached, then eval/Q."""

from __future__ import annotations

import math
from typing import Any

from tvae import contract as C
from tvae.analysis.tiers import TIER_ORDER, judge_tier


def tier_rank(metrics: dict[str, float]) -> int:
    """Index in TIER_ORDER of the tier an epoch's eval metrics reach (DESIGN.md thresholds).

    Q alone ignores coverage: an early high-Q epoch that cannot yet reconstruct would be a
    model nobody can promote, so the tier comes first.
    """
    tier = judge_tier(metrics[C.COVERAGE], metrics[C.HIERARCHY_B], metrics[C.QUALITY])
    return TIER_ORDER.index(tier.name)


def best_key(metrics: dict[str, float]) -> tuple[int, float]:
    """Sort key of an evaluated epoch: higher is the better checkpoint."""
    return tier_rank(metrics), metrics[C.QUALITY]


class BestEpoch:
    """The evaluated epoch best.pt holds: highest tier, then highest eval/Q."""

    def __init__(self) -> None:
        self.epoch = 0
        self.metrics: dict[str, float] = {}
        self.key: tuple[int, float] = (-1, -math.inf)

    def offer(self, epoch: int, metrics: dict[str, float]) -> bool:
        """Keep `metrics` if they beat the best so far; True when they did."""
        if best_key(metrics) <= self.key:
            return False
        self.epoch, self.metrics, self.key = epoch, dict(metrics), best_key(metrics)
        return True

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint's best_q, best_epoch and best_metrics."""
        return {"best_q": self.key[1], "best_epoch": self.epoch, "best_metrics": dict(self.metrics)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = int(state.get("best_epoch", 0))
        self.metrics = dict(state.get("best_metrics", {}))
        rank = tier_rank(self.metrics) if C.COVERAGE in self.metrics else -1
        self.key = (rank, float(state["best_q"]))
