"""The `eval/*` metrics of DESIGN.md, computed on the device over all 19,683 operations.

Spearman correlations are Pearson correlations of average ranks (ties share the mean of their
positions), in float64, so they match scipy.stats.spearmanr to ~1e-12 even with the heavy ties
of the valuation levels. Because of those ties the best hierarchy is -0.83205, not -1.

`eval/dist_corr_latent` is the research code's distance correlation, which sees B's latent
geometry and not only its radii: Spearman between the Euclidean distances of B's Poincaré
points z_B and |v_i - v_j| over all 499,500 pairs of a fixed draw of LATENT_SAMPLE operations
(`latent_sample()`: torch.randperm(19683) under seed LATENT_SEED, first 1,000; the pairs
i < j in scipy.spatial.distance.pdist's order). Its ceiling, from the ties of |dv|, is ~0.92.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from tvae.contract import EVAL_KEYS, LATENT_EVAL_KEYS
from tvae.ops import N_LEVELS, N_OPS
from tvae.ops import valuations as valuations_table

DIST_CORR_PAIRS = 50_000
DIST_CORR_SEED = 12345
LATENT_SAMPLE = 1_000
LATENT_SEED = 18


def average_ranks(x: torch.Tensor) -> torch.Tensor:
    """1-based ranks of a 1-D tensor, ties replaced by their average rank (float64).

    No data-dependent shapes (a tie group's first and last position come from running max/min
    over the sorted values), so nothing here waits for the device."""
    x = x.reshape(-1)
    n = x.numel()
    ordered, order = torch.sort(x)
    pos = torch.arange(1, n + 1, dtype=torch.float64, device=x.device)
    first = torch.ones(n, dtype=torch.bool, device=x.device)
    first[1:] = ordered[1:] != ordered[:-1]
    last = torch.ones_like(first)
    last[:-1] = first[1:]
    start = torch.where(first, pos, 0.0).cummax(0).values
    end = torch.where(last, pos, float(n + 1)).flip(0).cummin(0).values.flip(0)
    ranks = torch.empty(n, dtype=torch.float64, device=x.device)
    ranks[order] = (start + end) * 0.5
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
def _pair_sample(n: int, count: int, seed: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Drawn on the CPU (the same pairs on every device), kept on `device`: no upload per eval."""
    gen = torch.Generator().manual_seed(seed)
    i = torch.randint(0, n, (count,), generator=gen)
    j = torch.randint(0, n, (count,), generator=gen)
    return i.to(device), j.to(device)


def dist_corr(radius: torch.Tensor, valuations: torch.Tensor) -> torch.Tensor:
    """Spearman(|r_i - r_j|, |v_i - v_j|) over a fixed-seed sample of uniform (i, j) pairs."""
    i, j = _pair_sample(radius.numel(), DIST_CORR_PAIRS, DIST_CORR_SEED, str(radius.device))
    dr = (radius[i] - radius[j]).abs()
    dv = (valuations[i] - valuations[j]).abs()
    return spearman(dr, dv)


@lru_cache(maxsize=1)
def latent_sample() -> torch.Tensor:
    """The fixed operations (indices into the op table) `dist_corr_latent` is computed on."""
    gen = torch.Generator().manual_seed(LATENT_SEED)
    return torch.randperm(N_OPS, generator=gen)[:LATENT_SAMPLE]


def _sq_dists(z: torch.Tensor, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances of the pairs (i, j) of z's rows, from a float64 Gram matrix
    (exact enough to rank like scipy's pdist; squares rank like distances, no sqrt needed)."""
    z = z.to(torch.float64)
    n2 = (z * z).sum(-1)
    return (n2[i] + n2[j] - 2.0 * (z @ z.T)[i, j]).clamp_min(0.0)


def dist_corr_latent(z: torch.Tensor, valuations: torch.Tensor) -> torch.Tensor:
    """Spearman(Euclidean |z_i - z_j|, |v_i - v_j|) over all pairs i < j of the rows given."""
    i, j = torch.triu_indices(z.shape[0], z.shape[0], 1, device=z.device)
    v = valuations.to(z.device, torch.float64)
    return spearman(_sq_dists(z, i, j), (v[i] - v[j]).abs())


@lru_cache(maxsize=4)
def _latent_reference(device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The sample's rows, its pairs (i < j) and the ranks of their |dv|: the same every eval."""
    rows = latent_sample().to(device)
    i, j = torch.triu_indices(rows.numel(), rows.numel(), 1, device=device)
    v = valuations_table().to(device, torch.float64)[rows]
    return rows, torch.stack([i, j]), average_ranks((v[i] - v[j]).abs())


def latent_sample_dist_corr(z_B: torch.Tensor) -> torch.Tensor:
    """`eval/dist_corr_latent` of B's points for all 19,683 operations in table order."""
    if z_B.shape[0] != N_OPS:
        raise ValueError(f"dist_corr_latent needs all {N_OPS} operations, got {z_B.shape[0]}")
    rows, (i, j), dv_ranks = _latent_reference(str(z_B.device))
    return pearson(average_ranks(_sq_dists(z_B[rows], i, j)), dv_ranks)


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


def level_mean(values: torch.Tensor, levels: torch.Tensor, level: int) -> torch.Tensor:
    """Mean of `values` at one valuation level, as a masked sum: a boolean index would make the
    host wait for the device to learn the selection's size."""
    mask = (levels == level).to(values.dtype)
    return (values * mask).sum() / mask.sum()


def compute_eval_metrics(
    ops: torch.Tensor,
    valuations: torch.Tensor,
    recon: torch.Tensor,
    radius_A: torch.Tensor,
    radius_B: torch.Tensor,
    z_B: torch.Tensor | None = None,
) -> dict[str, float]:
    """Every DESIGN.md `eval/*` key as a python float (one host sync at the end); with B's
    latent points `z_B` (all operations, table order) the LATENT_EVAL_KEYS too."""
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
            level_mean(rb, v, 0),
            level_mean(rb, v, N_LEVELS - 1),
        ]
    )
    keys = EVAL_KEYS
    if z_B is not None:
        dcl = latent_sample_dist_corr(z_B)
        values = torch.cat([values, torch.stack([dcl, dcl + 1.5 * h_B.abs()])])
        keys = EVAL_KEYS + LATENT_EVAL_KEYS
    return dict(zip(keys, values.cpu().tolist(), strict=True))


@torch.no_grad()
def evaluate_model(
    model: torch.nn.Module, ops: torch.Tensor, valuations: torch.Tensor
) -> dict[str, float]:
    """Embed all operations deterministically in fp32 and compute every eval metric."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    with torch.autocast(device_type=device.type, enabled=False):
        emb = model.embed(ops.to(device))
    model.train(was_training)
    recon, r_A, r_B = emb["recon"], emb["radius_A"], emb["radius_B"]
    return compute_eval_metrics(ops, valuations, recon, r_A, r_B, emb["z_B"])
