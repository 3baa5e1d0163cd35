"""Checkpoint files: plain dicts of tensors and builtins, loadable with weights_only=True."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from tvae.config import TVAEConfig, config_from_dict
from tvae.model import TernaryVAE

CHECKPOINT_KEYS = (
    "model",
    "optimizer",
    "scaler",
    "homeostasis",
    "rng",
    "epoch",
    "best_q",
    "config",
    "metrics",
)


def save_checkpoint(state: dict[str, Any], path: Path) -> Path:
    """Write atomically (temp file + rename) so a crash never leaves a truncated checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint dict (weights_only) and check it has every expected key."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    state = torch.load(path, map_location=map_location, weights_only=True)
    missing = [k for k in CHECKPOINT_KEYS if k not in state]
    if missing:
        raise ValueError(f"{path}: not a TernaryVAE checkpoint (missing {', '.join(missing)})")
    return state


def check_resumable(state: dict[str, Any], where: str = "checkpoint") -> None:
    """ValueError (one line) unless `state` holds the per-branch optimizer and scaler states
    training continues from; older checkpoints (one optimizer for both branches) still load
    as models (load_model) but cannot be resumed."""
    for key in ("optimizer", "scaler"):
        part = state.get(key)
        if not (isinstance(part, dict) and {"A", "B"} <= part.keys()):
            raise ValueError(
                f"{where}: written before branches A and B had their own optimizers;"
                " it loads as a model but cannot be resumed (start a new run)"
            )


def load_model(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[TernaryVAE, TVAEConfig]:
    """Rebuild the model (eval mode) and its config from a checkpoint file."""
    state = read_checkpoint(path, map_location)
    config = config_from_dict(state["config"], source=str(path))
    model = TernaryVAE.from_config(config.model)
    model.load_state_dict(state["model"])
    model.to(map_location)
    model.eval()
    return model, config
