"""Synthetic training curves for the live-watch tests: a textbook grokking run (the training
loss fits in ~10 epochs, validation accuracy sits at chance, then jumps in a few epochs long
after the fit), and the same run with a jump that falls back (a breakthrough to withdraw)."""

from __future__ import annotations

import numpy as np
import pandas as pd

#: How the curves' keys map to analysis roles (TernaryVAE's own roles unset).
METRIC_MAP = (
    "accuracy=val_acc,loss=train_loss,val_loss=val_loss,lr=lr,hierarchy=,quality=,grad_norm="
)


def textbook(
    n: int = 240, jump: int = 150, rise: int = 3, fall_back: int | None = None, seed: int = 0
) -> pd.DataFrame:
    """Epochs 1..n: train_loss fits by ~epoch 10; val_acc ~0.02 until ``jump``, ~0.98 after
    ``rise`` epochs (back to chance from ``fall_back``, when given); val_loss alike in decades."""
    rng = np.random.default_rng(seed)
    e = np.arange(1, n + 1)
    up = np.clip((e - jump + 1) / rise, 0.0, 1.0)
    if fall_back is not None:
        up[e >= fall_back] = 0.0
    val_acc = 0.02 + 0.96 * up + rng.normal(0, 0.004, n)
    val_loss = 10 ** (0.6 - 1.9 * up + rng.normal(0, 0.01, n))
    train_loss = 2 * np.exp(-e / 5) + 1e-3
    frame = pd.DataFrame(
        {"train_loss": train_loss, "val_acc": val_acc, "val_loss": val_loss, "lr": 1e-3},
        index=pd.Index(e, name="epoch"),
    )
    return frame
