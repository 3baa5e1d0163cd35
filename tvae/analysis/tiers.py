"""Training success tiers from the seed's table (coverage, hierarchy_B, Q).

Values that are reported beside a tier but never judged (issue 18's eval/dist_corr_latent and
eval/Q_latent) ride along in `TierResult.reported`, so the report shows them with the tier."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from tvae.analysis.thresholds import Thresholds

TIER_ORDER = ["None", "Minimal", "Good", "Excellent", "Exceptional"]
_EPS = 1e-9


@dataclass(frozen=True)
class TierResult:
    """The tier reached, the values judged, and what kept it from the next tier."""

    name: str
    values: dict[str, float]
    blocking: str | None
    basis: str = "final"
    epochs: dict[str, float] = field(default_factory=dict)
    reported: dict[str, float] = field(default_factory=dict)  # shown, not judged

    def at_least(self, name: str) -> bool:
        """True when this tier is ``name`` or better."""
        if name not in TIER_ORDER:
            raise ValueError(f"unknown tier {name!r} (known: {', '.join(TIER_ORDER)})")
        return TIER_ORDER.index(self.name) >= TIER_ORDER.index(name)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "basis": self.basis,
            "values": self.values,
            "epochs": self.epochs,
            "blocking": self.blocking,
            "reported": self.reported,
        }


def _failures(tier: str, cov: float, h: float, q: float, t: Thresholds) -> list[str]:
    bar = getattr(t.tiers, tier.lower())
    need_cov, need_h, need_q = bar.coverage, bar.hierarchy, bar.quality
    out = []
    # the top tier asks for coverage = 100%, the others for coverage strictly above
    cov_ok = cov >= need_cov - _EPS if need_cov >= 1.0 else cov > need_cov
    if not (math.isfinite(cov) and cov_ok):
        op = ">=" if need_cov >= 1.0 else ">"
        out.append(f"coverage {cov:.4g} not {op} {need_cov:g}")
    if not (math.isfinite(h) and h <= need_h + _EPS):
        out.append(f"hierarchy {h:.4g} not <= {need_h:g}")
    if not (math.isfinite(q) and q > need_q):
        out.append(f"Q {q:.4g} not > {need_q:g}")
    return out


def judge_tier(
    coverage: float,
    hierarchy: float,
    quality: float,
    thresholds: Thresholds | None = None,
    *,
    basis: str = "final",
    epochs: dict[str, float] | None = None,
    reported: dict[str, float] | None = None,
) -> TierResult:
    """Highest tier whose three criteria all hold (tiers are cumulative); `reported` values
    are kept with the result, not judged."""
    t = thresholds or Thresholds()
    values = {"coverage": float(coverage), "hierarchy": float(hierarchy), "quality": float(quality)}
    reached = "None"
    blocking: str | None = None
    for tier in TIER_ORDER[1:]:
        fails = _failures(tier, values["coverage"], values["hierarchy"], values["quality"], t)
        if fails:
            blocking = f"{tier}: " + "; ".join(fails)
            break
        reached = tier
    return TierResult(reached, values, blocking, basis, dict(epochs or {}), dict(reported or {}))
