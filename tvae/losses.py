"""The TernaryVAE loss terms, each weighted and scheduled from the config.

Terms (reported as `train/loss_<term>`, already multiplied by their weight, so they sum to
`train/loss`):
  recon       cross-entropy of the 9 trits decoded from encoder A's sample
  kl          beta * KL(q || N(0, I)) of both encoders, linearly warmed up over warmup_epochs
  radial      squared error of each encoder's hyperbolic radius against a per-valuation target,
              linear in hyperbolic distance from outer_radius (v=0) to inner_radius (v=9)
  rank        hinge on in-batch pairs of different valuation: higher v must sit closer by margin
  geodesic    p-adic geodesic term on in-batch pairs of encoder B: hyperbolic distance should be
              scale * 3^-v(i-j), v(i-j) = number of equal leading trits (0 until start_epoch)
  richness    hinge keeping each level's within-batch radius variance above min_spread
  separation  hinge ordering per-level mean radii, margin * (level gap) apart
All geometric terms run in fp32. Pairs are formed inside the (randomly drawn) batch by pairing
element k with element k+s for s = 1..ceil(pairs / batch): at least `pairs` random pairs per
step with no gathers, and no extra random numbers.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from tvae.config import LossConfig
from tvae.geometry import dist
from tvae.ops import N_LEVELS

TERMS = ("recon", "kl", "radial", "rank", "geodesic", "richness", "separation")


def radial_targets(cfg: LossConfig, device: torch.device | str = "cpu") -> torch.Tensor:
    """(10,) target hyperbolic radius per valuation level, evenly spaced in hyperbolic distance."""
    d_out = 2.0 * math.atanh(cfg.radial.outer_radius)
    d_in = 2.0 * math.atanh(cfg.radial.inner_radius)
    levels = torch.arange(N_LEVELS, dtype=torch.float32, device=device)
    return d_out - (d_out - d_in) * levels / (N_LEVELS - 1)


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of KL(N(mu, e^logvar) || N(0, I)) summed over latent dims."""
    mu, logvar = mu.float(), logvar.float()
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1).mean()


def shared_prefix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Number of equal leading trits = 3-adic valuation of i - j (9 when i == j)."""
    return torch.cumprod((a == b).to(torch.float32), dim=1).sum(dim=1)


class LossComputer:
    """Holds the device-side constants; `__call__` returns (total, per-term weighted values)."""

    def __init__(self, cfg: LossConfig, device: torch.device) -> None:
        self.cfg = cfg
        self.targets = radial_targets(cfg, device)
        self.level_ids = torch.arange(N_LEVELS, device=device)
        gap = (self.level_ids.view(1, -1) - self.level_ids.view(-1, 1)).to(torch.float32)
        self.level_gap = gap  # gap[a, b] = b - a
        self.upper = gap > 0

    @staticmethod
    def _rolled(pairs: int, n: int, a: torch.Tensor, b: torch.Tensor):
        """(a, a shifted, b, b shifted) over ceil(pairs / n) shifts: n * shifts pairs."""
        shifts = range(1, min(n - 1, -(-pairs // n)) + 1) if n > 1 else range(0)
        if len(shifts) == 0:
            return a[:0], a[:0], b[:0], b[:0]
        if len(shifts) == 1:
            return a, a.roll(1, 0), b, b.roll(1, 0)
        rep = len(shifts)
        a_rep = a.repeat(rep, *([1] * (a.dim() - 1)))
        b_rep = b.repeat(rep, *([1] * (b.dim() - 1)))
        a_sh = torch.cat([a.roll(k, 0) for k in shifts])
        b_sh = torch.cat([b.roll(k, 0) for k in shifts])
        return a_rep, a_sh, b_rep, b_sh

    def kl_weight(self, epoch: int) -> float:
        kl = self.cfg.kl
        warm = 1.0 if kl.warmup_epochs == 0 else min(1.0, epoch / kl.warmup_epochs)
        return kl.weight * kl.beta * warm

    def __call__(
        self,
        out: dict[str, torch.Tensor],
        x: torch.Tensor,
        target_cls: torch.Tensor,
        v: torch.Tensor,
        epoch: int,
        geodesic_active: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.cfg
        n = x.shape[0]
        recon = F.cross_entropy(out["logits"].float().transpose(1, 2), target_cls)
        kl = kl_divergence(out["mu_A"], out["logvar_A"]) + kl_divergence(
            out["mu_B"], out["logvar_B"]
        )
        r_A, r_B = out["radius_A"], out["radius_B"]
        t = self.targets[v]
        radial = (r_A - t).pow(2).mean() + (r_B - t).pow(2).mean()

        # pairs: the batch is a random sample, so element k paired with element k+s (mod n)
        # for shifts s = 1..S gives random pairs without gathers (rolls are cheap both ways)
        rank_r, rank_rs, rank_v, rank_vs = self._rolled(cfg.rank.pairs, n, r_B, v)
        s = torch.sign((rank_v - rank_vs).to(torch.float32))
        hinge = F.relu(cfg.rank.margin + s * (rank_r - rank_rs)) * s.abs()
        rank = hinge.sum() / s.abs().sum().clamp_min(1.0)

        if geodesic_active and cfg.geodesic.weight > 0:
            z, zs, xa, xs = self._rolled(cfg.geodesic.pairs, n, out["z_B"], x)
            k = shared_prefix(xa, xs)
            target = cfg.geodesic.scale * torch.pow(3.0, -k)
            sq = (dist(z, zs) - target).pow(2)
            geodesic = sq.sum() / max(1, sq.numel())  # a 1-sample batch has no pairs
        else:
            geodesic = r_B.new_zeros(())

        # per-level statistics of B radii in this batch (one-hot matmuls, no host sync)
        onehot = (v.unsqueeze(1) == self.level_ids).to(torch.float32)
        count = onehot.sum(0)
        s1 = r_B @ onehot
        s2 = (r_B * r_B) @ onehot
        mean = s1 / count.clamp_min(1.0)
        var = s2 / count.clamp_min(1.0) - mean * mean
        multi = (count > 1).to(torch.float32)
        richness = (F.relu(cfg.richness.min_spread - var) * multi).sum() / multi.sum().clamp_min(1)
        present = (count > 0).to(torch.float32)
        pair_mask = present.view(-1, 1) * present.view(1, -1) * self.upper
        # level a < level b must have mean_a - mean_b >= margin * (b - a)
        viol = F.relu(
            cfg.separation.margin * self.level_gap - (mean.view(-1, 1) - mean.view(1, -1))
        )
        separation = (viol * pair_mask).sum() / pair_mask.sum().clamp_min(1.0)

        terms = torch.stack(
            [
                cfg.recon.weight * recon,
                self.kl_weight(epoch) * kl,
                cfg.radial.weight * radial,
                cfg.rank.weight * rank,
                cfg.geodesic.weight * geodesic,
                cfg.richness.weight * richness,
                cfg.separation.weight * separation,
            ]
        )
        return terms.sum(), terms
