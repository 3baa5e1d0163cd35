"""How the trainer reports: a tiny callback interface, so MLflow plugs in without tvae knowing it.

The MLflow logger (mlflow_plugins.train_logger) is one implementation, `TrainLogger` itself is the
no-op one, and tests may add a recording one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class TrainLogger:
    """Base class and no-op logger. Override what you need."""

    def on_train_start(self, info: dict[str, Any]) -> None:
        """Once, before the first epoch. info: device, device_name, torch, cuda, amp,
        start_epoch (0, or the resumed epoch), config (the TVAEConfig)."""

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        """Once per epoch with every contract metric of that epoch (step = epoch, 1-based)."""

    def on_checkpoint(self, path: Path, epoch: int, kind: str) -> None:
        """A checkpoint file was written; kind is 'last' or 'best'."""

    def on_event(self, name: str, payload: dict[str, Any]) -> None:
        """Something happened (homeostasis freeze/unfreeze, geodesic on, divergence, ...)."""

    def on_log_line(self, line: str) -> None:
        """A line the console progress display printed."""

    def on_train_end(self, status: str, summary: dict[str, Any]) -> None:
        """Once at the end; status is FINISHED, KILLED or FAILED; summary is JSON-able."""
