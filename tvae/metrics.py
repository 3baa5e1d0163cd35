"""The `eval/*` metrics of DESIGN.md, computed on the device over all 19,683 operations.

Spearman correlations are Pearson correlations of average ranks (ties share the mean of their
positions), in float64, so they match scipy.stats.spearmanr to ~1e-12 even with the heavy ties
of the valuation levels. Because of those ties the best hierarchy is -0.83205, not -1.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from tvae.contract import EVAL_KEYS
from tvae.ops import N_LEVELS

DIST_CORR_PAIRS = 50_000
DIST_CORR_SEED = 12345


def average_ranks(x: torch.Tensor) -> torch.Tensor:
    """1-based ranks of a 1-D tensor, ties replaced by their average rank (float64)."""
    x = x.reshape(-1)
    order = torch.argsort(x, stable=True)
    _, inverse, counts = torch.unique_consecutive(x[order], return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).to(torch.float64)  # 1-based last position of each tie group
    group_rank = ends - (counts.to(torch.float64) - 1.0) / 2.0
    ranks = torch.empty(x.numel(), dtype=torch.float64, device=x.device)
    ranks[order] = group_rank[inverse]
    return ranks


def pearson(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Pearson correlation in float64 (0-d tensor); NaN when either side is constant."""
    x = x.reshape(-1).to(torch.float64)
    y = y.reshape(-1).to(torch.float64)
    x = x - x.mean()
    y = y - y.mean()
    return (x * y).sum() / torch.sqrt((x * x).sum() * (y * y).sum())


def spearman(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation on the tensors' device (0-d float64 tensor), ties averaged."""
    if x.numel() != y.numel():
        raise ValueError(f"spearman: sizes differ ({x.numel()} vs {y.numel()})")
    return pearson(average_ranks(x.float()), average_ranks(y.float()))


@lru_cache(maxsize=4)
def _pair_sample(n: int, count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    i = torch.randint(0, n, (count,), generator=gen)
    j = torch.randint(0, n, (count,), generator=gen)
    return i, j


def dist_corr(radius: torch.Tensor, valuations: torch.Tensor) -> torch.Tensor:
    """Spearman(|r_i - r_j|, |v_i - v_j|) over a fixed-seed sample of uniform (i, j) pairs."""
    i, j = _pair_sample(radius.numel(), DIST_CORR_PAIRS, DIST_CORR_SEED)
    i, j = i.to(radius.device), j.to(radius.device)
    dr = (radius[i] - radius[j]).abs()
    dv = (valuations[i] - valuations[j]).abs()
    return spearman(dr, dv)


def richness(radius: torch.Tensor, valuations: torch.Tensor) -> torch.Tensor:
    """Sum of within-level population variances of radii (levels with >1 member) divided by 10."""
    r = radius.to(torch.float64)
    v = valuations.to(radius.device)
    count = torch.zeros(N_LEVELS, dtype=torch.float64, device=r.device).index_add_(
        0, v, torch.ones_like(r)
    )
    s1 = torch.zeros_like(count).index_add_(0, v, r)
    s2 = torch.zeros_like(count).index_add_(0, v, r * r)
    mean = s1 / count.clamp_min(1.0)
    var = (s2 / count.clamp_min(1.0) - mean * mean).clamp_min(0.0)
    return torch.where(count > 1, var, torch.zeros_like(var)).sum() / N_LEVELS


def compute_eval_metrics(
    ops: torch.Tensor,
    valuations: torch.Tensor,
    recon: torch.Tensor,
    radius_A: torch.Tensor,
    radius_B: torch.Tensor,
) -> dict[str, float]:
    """Every DESIGN.md `eval/*` key as a python float (one host sync at the end)."""
    v = valuations.to(radius_B.device)
    coverage = (recon == ops.to(recon.device)).all(dim=1).to(torch.float64).mean()
    h_A = spearman(v, radius_A)
    h_B = spearman(v, radius_B)
    dc = dist_corr(radius_B, v)
    rb = radius_B.to(torch.float64)
    values = torch.stack(
        [
            coverage,
            h_A,
            h_B,
            dc,
            richness(radius_B, v),
            dc + 1.5 * h_B.abs(),
            rb[v == 0].mean(),
            rb[v == N_LEVELS - 1].mean(),
        ]
    )
    return dict(zip(EVAL_KEYS, values.cpu().tolist(), strict=True))


@torch.no_grad()
def evaluate_model(
    model: torch.nn.Module, ops: torch.Tensor, valuations: torch.Tensor
) -> dict[str, float]:
    """Embed all operations deterministically in fp32 and compute the eval metrics."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    with torch.autocast(device_type=device.type, enabled=False):
        emb = model.embed(ops.to(device))
    model.train(was_training)
    return compute_eval_metrics(ops, valuations, emb["recon"], emb["radius_A"], emb["radius_B"])
