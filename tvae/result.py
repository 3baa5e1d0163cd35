"""What a training run ends with: its status, its best and final epochs, its checkpoints."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class TrainResult:
    """What Trainer.fit returns; `summary()` is its JSON-able form."""

    status: str  # FINISHED | KILLED | FAILED
    reason: str | None
    last_epoch: int
    best_epoch: int
    best_metrics: dict[str, float] = field(default_factory=dict)
    final_metrics: dict[str, float] = field(default_factory=dict)
    wall_seconds: float = 0.0
    samples_per_sec: float = 0.0
    last_checkpoint: Path | None = None
    best_checkpoint: Path | None = None

    def summary(self) -> dict[str, Any]:
        """JSON-able view (paths as strings)."""
        out = asdict(self)
        for key in ("last_checkpoint", "best_checkpoint"):
            out[key] = str(out[key]) if out[key] is not None else None
        return out


class Diverged(RuntimeError):
    """A loss or metric became NaN/Inf."""
