"""The analysis report: everything found, as a dataclass, JSON, MLflow tags and a summary."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from tvae import contract as C
from tvae.analysis.checks import Check
from tvae.analysis.grokking import SEVERITIES, Candidate
from tvae.analysis.phases import Phase
from tvae.analysis.tiers import TierResult


def _fmt_epoch(x: float) -> str:
    return f"{int(x)}" if float(x).is_integer() else f"{x:g}"


def _jsonable(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


@dataclass
class AnalysisReport:
    candidates: list[Candidate] = field(default_factory=list)
    phases: list[Phase] = field(default_factory=list)
    tier: TierResult | None = None
    tier_best: TierResult | None = None
    checks: list[Check] = field(default_factory=list)
    skipped_roles: dict[str, str] = field(default_factory=dict)
    answers: dict[str, str] = field(default_factory=dict)
    run_status: str | None = None
    n_epochs: int = 0  # logged rows: a run logged every k epochs or by step has fewer or more
    span: tuple[float, float] | None = None  # the first and last position (epoch or step) logged
    notes: list[str] = field(default_factory=list)
    confidence: float = 0.0  # run-level grokking score in [0, 1] (tvae.analysis.confidence)
    #: "step" on a run logged against optimizer steps with its epoch beside them: positions
    #: and lengths are steps, and the tags give the run's own epochs (`boundary_epochs`, each
    #: candidate's ``details["run_epoch"]``)
    x_unit: str = "epoch"
    boundary_epochs: list[float] | None = None

    @property
    def confirmed(self) -> list[Candidate]:
        return [c for c in self.candidates if c.verdict == "confirmed"]

    @property
    def rejected(self) -> list[Candidate]:
        return [c for c in self.candidates if c.verdict == "rejected"]

    @property
    def boundaries(self) -> list[float]:
        return [p.start for p in self.phases[1:]]

    @property
    def severity(self) -> str:
        levels = [SEVERITIES.index(c.severity) for c in self.confirmed]
        return SEVERITIES[max(levels)] if levels else "none"

    def tags(self) -> dict[str, str]:
        """The DESIGN.md tag contract (all but ``analysis.run_id``, which the caller adds)."""
        tags = {
            C.GROKKING_EVENTS: str(len(self.confirmed)),
            C.GROKKING_SEVERITY: self.severity,
            C.GROKKING_REJECTED: str(len(self.rejected)),
            C.GROKKING_CONFIDENCE: f"{self.confidence:.3f}",
            C.PHASES_COUNT: str(len(self.phases)),
            C.PHASES_BOUNDARIES: ",".join(_fmt_epoch(b) for b in self._boundary_epochs),
            C.TIER: self.tier.name if self.tier else "None",
        }
        if self.confirmed:
            tags[C.GROKKING_FIRST_EPOCH] = _fmt_epoch(self.run_epoch(self.confirmed[0]))
        return tags

    def run_epoch(self, c: Candidate) -> float:
        """The run's epoch at candidate ``c``'s onset (its position, on a run by epoch)."""
        return c.details.get("run_epoch", c.breakthrough_epoch)

    @property
    def _boundary_epochs(self) -> list[float]:
        return self.boundaries if self.boundary_epochs is None else self.boundary_epochs

    def _at(self, c: Candidate) -> str:
        """Where ``c`` is, as the user reads it: ``epoch E``, or ``step S (epoch E)``."""
        at = _fmt_epoch(c.breakthrough_epoch)
        if self.x_unit == "epoch":
            return f"epoch {at}"
        return f"step {at} (epoch {_fmt_epoch(self.run_epoch(c))})"

    def _extent(self) -> str:
        """``50 epochs analysed``; where rows and positions differ, both."""
        if self.span is None or (
            self.x_unit == "epoch" and self.span[1] - self.span[0] + 1 == self.n_epochs
        ):
            return f"{self.n_epochs} {self.x_unit}s analysed"
        first, last = (_fmt_epoch(x) for x in self.span)
        return f"{self.n_epochs} logged rows analysed, {self.x_unit}s {first}-{last}"

    def to_dict(self) -> dict:
        return _jsonable(
            {
                "n_epochs": self.n_epochs,
                "span": list(self.span) if self.span else None,
                "x_unit": self.x_unit,
                "run_status": self.run_status,
                "tags": self.tags(),
                "confidence": self.confidence,
                "candidates": [c.to_dict() for c in self.candidates],
                "phases": [p.to_dict() for p in self.phases],
                "tier": self.tier.to_dict() if self.tier else None,
                "tier_best": self.tier_best.to_dict() if self.tier_best else None,
                "checks": [c.to_dict() for c in self.checks],
                "skipped_roles": self.skipped_roles,
                "answers": self.answers,
                "notes": self.notes,
            }
        )

    def summary(self) -> str:
        """A short human summary of what was found."""
        lines = []
        if self.run_status and self.run_status.upper() == "RUNNING":
            lines.append("run still RUNNING: analysis so far")
        lines.append(self._extent())
        if self.confirmed:
            for c in self.confirmed:
                lines.append(f"grokking event at {self._at(c)} ({c.severity}): {c.reason}")
        else:
            lines.append("no grokking event")
        lines.append(f"grokking confidence {self.confidence:.2f} (above 0.5 only with an event)")
        for c in self.rejected:
            lines.append(f"rejected candidate at {self._at(c)}: {c.reason}")
        if self.phases:
            desc = ", ".join(
                f"{_fmt_epoch(p.start)}-{_fmt_epoch(p.end)} {p.character}" for p in self.phases
            )
            unit = "" if self.x_unit == "epoch" else f" (in {self.x_unit}s)"
            lines.append(f"{len(self.phases)} phase(s){unit}: {desc}")
        if self.tier:
            extra = f" (next blocked by {self.tier.blocking})" if self.tier.blocking else ""
            lines.append(f"tier {self.tier.name} on final values{extra}")
            if self.tier.reported:
                shown = ", ".join(f"{k} {v:.4f}" for k, v in self.tier.reported.items())
                lines.append(f"beside the tier (not judged): {shown}")
            if self.tier_best and self.tier_best.name != self.tier.name:
                lines.append(f"tier {self.tier_best.name} on best values")
        else:
            lines.append("tier not judged (coverage/hierarchy/quality roles missing)")
        measured = [c for c in self.checks if c.status != "not measured"]
        if measured:
            lines.append(
                "checks: "
                + ", ".join(
                    f"{c.name} {c.status} ({c.value}, want {c.threshold})" for c in measured
                )
            )
        unmeasured = [c.name for c in self.checks if c.status == "not measured"]
        if unmeasured:
            lines.append("not measured: " + ", ".join(unmeasured))
        if self.skipped_roles:
            lines.append(
                "skipped roles: "
                + ", ".join(f"{r} ({why})" for r, why in self.skipped_roles.items())
            )
        lines.extend(self.notes)
        return "\n".join(lines)
