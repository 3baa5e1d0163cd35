"""One epoch of training data: the whole operation table on the device, sliced into batches.

The 19,683 operations fit in memory many times over, so an epoch is a permutation of row
indices (one gather per epoch) and each batch a contiguous slice of it: no loader, no copies
per step, no host round trip.
"""

from __future__ import annotations

import math

import torch

from tvae.config import DataConfig
from tvae.ops import N_OPS


def epoch_indices(
    cfg: DataConfig, batch_size: int, high_idx: torch.Tensor, device: torch.device
) -> torch.Tensor:
    """One epoch of N_OPS sample indices (a random permutation).

    With cfg.stratified, every batch ends with a cfg.stratified_share slice drawn (with
    replacement) from `high_idx`, the operations of valuation >= stratified_min_valuation,
    which are too rare (1 in 9 at v >= 2) to shape the hierarchy from a plain shuffle.
    """
    perm = torch.randperm(N_OPS, device=device)
    if not cfg.stratified or cfg.stratified_share <= 0:
        return perm
    n_high = min(batch_size, round(batch_size * cfg.stratified_share))
    steps = math.ceil(N_OPS / batch_size)
    high = high_idx[torch.randint(0, high_idx.numel(), (steps, n_high), device=device)]
    n_base = steps * (batch_size - n_high)
    base = perm.repeat(math.ceil(n_base / N_OPS))[:n_base].view(steps, batch_size - n_high)
    return torch.cat([base, high], dim=1).reshape(-1)[:N_OPS]


def epoch_batches(
    idx: torch.Tensor, batch_size: int, *columns: torch.Tensor
) -> list[tuple[torch.Tensor, ...]]:
    """Gather each column (ops, valuations, ...) in epoch order once, then slice per batch."""
    gathered = [c[idx] for c in columns]
    return [
        tuple(c[i : i + batch_size] for c in gathered) for i in range(0, idx.numel(), batch_size)
    ]
