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


def read_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu", resumable: bool = False
) -> dict[str, Any]:
    """Load a checkpoint dict (weights_only) and check it has every expected key (and, with
    resumable=True, what training continues from: check_resumable)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    state = torch.load(path, map_location=map_location, weights_only=True)
    missing = [k for k in CHECKPOINT_KEYS if k not in state]
    if missing:
        raise ValueError(f"{path}: not a TernaryVAE checkpoint (missing {', '.join(missing)})")
    if resumable:
        check_resumable(state, str(path))
    return state


def check_resumable(state: dict[str, Any], where: str = "checkpoint") -> None:
    """ValueError (one line) unless `state` holds the per-branch optimizer and scaler states
    training continues from, one AdamW state per parameter tensor; older checkpoints (one
    optimizer for both branches, or one flat tensor per parameter segment) still load as
    models (load_model) but cannot be resumed."""
    for key in ("optimizer", "scaler"):
        part = state.get(key)
        if not (isinstance(part, dict) and {"A", "B"} <= part.keys()):
            raise ValueError(
                f"{where}: written before branches A and B had their own optimizers;"
                " it loads as a model but cannot be resumed (start a new run)"
            )
    # the flat-buffer trainer gave each branch's optimizer two tensors (trunk, rest); every
    # branch has more parameter tensors than that
    sizes = [sum(len(g["params"]) for g in state["optimizer"][b]["param_groups"]) for b in "AB"]
    if sizes == [2, 2]:
        raise ValueError(
            f"{where}: written by the flat-parameter trainer, whose optimizer state does not map"
            " onto parameters; it loads as a model but cannot be resumed (start a new run)"
        )


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """The random streams training draws from (CPU, and the GPU's), for a checkpoint."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    """Restore what rng_state saved, so a resumed run draws what the uninterrupted one did."""
    torch.set_rng_state(state["cpu"].cpu())
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


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


def trainer_state(trainer: Any, epoch: int, metrics: dict[str, float]) -> dict[str, Any]:
    """What a checkpoint of a tvae.train.Trainer after `epoch` holds: enough to resume it bit
    for bit (model, both branches' optimizers and scalers, homeostasis, RNG, best epoch)."""
    return {
        "model": trainer.model.state_dict(),
        "optimizer": {b.name: b.optimizer.state_dict() for b in trainer.branches},
        "scaler": {b.name: b.scaler.state_dict() for b in trainer.branches},
        "homeostasis": trainer.homeostasis.state_dict(),
        "rng": rng_state(trainer.device),
        "epoch": epoch,
        **trainer.best.state_dict(),
        "last_eval": dict(trainer.last_eval),
        "config": trainer.config.model_dump(mode="json"),
        "metrics": dict(metrics),
    }


def restore_trainer(trainer: Any, path: Path) -> int:
    """Load a resumable checkpoint into a set-up Trainer; returns its epoch."""
    state = read_checkpoint(path, map_location=trainer.device, resumable=True)
    trainer.model.load_state_dict(state["model"])
    for b in trainer.branches:
        b.optimizer.load_state_dict(state["optimizer"][b.name])
        if state["scaler"][b.name]:  # empty when saved without fp16: a new scaler starts
            b.scaler.load_state_dict(state["scaler"][b.name])
    trainer.homeostasis.load_state_dict(state["homeostasis"])
    set_rng_state(state["rng"], trainer.device)
    trainer.best.load_state_dict(state)
    trainer.last_eval = dict(state.get("last_eval", {}))
    trainer.resumed_metrics = dict(state.get("metrics", {}))
    return int(state["epoch"])
