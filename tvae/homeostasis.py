"""Homeostasis: freeze and unfreeze the two encoder trunks from coverage and hierarchy plateaus.

Encoder A (coverage): frozen once coverage >= coverage_freeze for `patience` consecutive evals,
unfrozen when coverage drops below coverage_unfreeze (the decoder keeps training while A is
frozen, so coverage can move). Encoder B (hierarchy): frozen when hierarchy_B has not improved
by more than hierarchy_tolerance for `patience` evals (protects a plateaued hierarchy from later
loss terms), unfrozen when it worsens by more than hierarchy_tolerance from its best.
No decision before warmup_epochs; after any change an encoder keeps its state for
hysteresis_epochs. Only the trunks freeze; projection heads and the decoder always train.
The whole state is plain data (`state_dict`) so a resumed run decides exactly as before.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from tvae.config import HomeostasisConfig


@dataclass
class HomeostasisState:
    frozen_A: bool = False
    frozen_B: bool = False
    coverage_streak: int = 0
    best_hierarchy: float = float("inf")
    stale_B: int = 0
    last_change_A: int = -(10**9)
    last_change_B: int = -(10**9)


class Homeostasis:
    """Decides, after each eval epoch, which encoder trunks train in the next epoch."""

    def __init__(self, cfg: HomeostasisConfig) -> None:
        self.cfg = cfg
        self.state = HomeostasisState()

    @property
    def frozen_A(self) -> bool:
        return self.state.frozen_A

    @property
    def frozen_B(self) -> bool:
        return self.state.frozen_B

    def update(self, epoch: int, coverage: float, hierarchy_B: float) -> list[dict[str, Any]]:
        """Feed one eval; returns events like {"name": "freeze", "encoder": "A", ...}."""
        cfg, st = self.cfg, self.state
        st.coverage_streak = st.coverage_streak + 1 if coverage >= cfg.coverage_freeze else 0
        if hierarchy_B < st.best_hierarchy - cfg.hierarchy_tolerance:
            st.best_hierarchy = hierarchy_B
            st.stale_B = 0
        else:
            st.best_hierarchy = min(st.best_hierarchy, hierarchy_B)
            st.stale_B += 1
        events: list[dict[str, Any]] = []
        if not cfg.enabled or epoch < cfg.warmup_epochs:
            return events

        def settled(last_change: int) -> bool:
            return epoch - last_change >= cfg.hysteresis_epochs

        if settled(st.last_change_A):
            if not st.frozen_A and st.coverage_streak >= cfg.patience:
                st.frozen_A, st.last_change_A = True, epoch
                events.append({"name": "freeze", "encoder": "A", "coverage": coverage})
            elif st.frozen_A and coverage < cfg.coverage_unfreeze:
                st.frozen_A, st.last_change_A = False, epoch
                events.append({"name": "unfreeze", "encoder": "A", "coverage": coverage})
        if settled(st.last_change_B):
            worse = hierarchy_B > st.best_hierarchy + cfg.hierarchy_tolerance
            if not st.frozen_B and st.stale_B >= cfg.patience and not worse:
                st.frozen_B, st.last_change_B = True, epoch
                events.append({"name": "freeze", "encoder": "B", "hierarchy_B": hierarchy_B})
            elif st.frozen_B and worse:
                st.frozen_B, st.last_change_B = False, epoch
                st.stale_B = 0
                events.append({"name": "unfreeze", "encoder": "B", "hierarchy_B": hierarchy_B})
        for ev in events:
            ev["epoch"] = epoch
        return events

    def state_dict(self) -> dict[str, Any]:
        return asdict(self.state)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.state = HomeostasisState(**state)
