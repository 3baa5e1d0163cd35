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
from tvae.geometry import EPS
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


def _kl_sum(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Sum over batch and dims of mu^2 + e^logvar - logvar (the KL without its constant)."""
    mu, logvar = mu.float(), logvar.float()
    return (mu.square() + logvar.exp() - logvar).sum()


class LossComputer:
    """Holds the device-side constants; `__call__` returns (total, per-term weighted values).

    The per-step work is written for few small ops (it is most of a CPU step's overhead):
    constants such as 3^-k targets are tables, pairwise terms reuse per-point quantities
    (|z|^2 is computed once and rolled with z), and masks are built without autograd.
    """

    def __init__(self, cfg: LossConfig, device: torch.device) -> None:
        self.cfg = cfg
        self.targets = radial_targets(cfg, device)
        self.level_ids = torch.arange(N_LEVELS, device=device)
        gap = (self.level_ids.view(1, -1) - self.level_ids.view(-1, 1)).to(torch.float32)
        self.level_gap = gap  # gap[a, b] = b - a
        self.upper = gap > 0
        self.sep_margin = cfg.separation.margin * gap
        # geodesic target by shared prefix k = 0..9: scale * 3^-k
        k = torch.arange(N_LEVELS, dtype=torch.float32, device=device)
        self.geo_target = cfg.geodesic.scale * torch.pow(3.0, -k)

    @staticmethod
    def _shifts(pairs: int, n: int) -> int:
        """Number of roll shifts giving at least `pairs` in-batch pairs (0 without pairs)."""
        return min(n - 1, -(-pairs // n)) if n > 1 else 0

    @staticmethod
    def _pair(t: torch.Tensor, shifts: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(t repeated, t rolled by 1..shifts) along dim 0: n * shifts pairs."""
        if shifts == 1:
            return t, t.roll(1, 0)
        rep = t.repeat(shifts, *([1] * (t.dim() - 1)))
        return rep, torch.cat([t.roll(k, 0) for k in range(1, shifts + 1)])

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
        # KL(q || N(0, I)) of both encoders: 0.5 * mean_n sum_d (mu^2 + e^lv - 1 - lv) each
        latent = out["mu_A"].shape[-1]
        kl_sum = _kl_sum(out["mu_A"], out["logvar_A"]) + _kl_sum(out["mu_B"], out["logvar_B"])
        kl = kl_sum * (0.5 / max(n, 1)) - float(latent)
        r_A, r_B = out["radius_A"], out["radius_B"]
        t = self.targets.index_select(0, v)
        radial = ((r_A - t).square().sum() + (r_B - t).square().sum()) / n

        # pairs: the batch is a random sample, so element k paired with element k+s (mod n)
        # for shifts s = 1..S gives random pairs without gathers (rolls are cheap both ways)
        shifts = self._shifts(cfg.rank.pairs, n)
        if shifts:
            rank_r, rank_rs = self._pair(r_B, shifts)
            with torch.no_grad():
                v_a, v_s = self._pair(v, shifts)
                s = torch.sign(v_a - v_s).to(torch.float32)
                used = s.abs()
            # |s| is 0 or 1, so relu(margin*|s| + s*d) is the hinge masked to unequal levels
            hinge = F.relu(torch.addcmul(used * cfg.rank.margin, s, rank_r - rank_rs))
            rank = hinge.sum() / used.sum().clamp_min(1.0)
        else:
            rank = r_B.new_zeros(())

        shifts = self._shifts(cfg.geodesic.pairs, n)
        if geodesic_active and cfg.geodesic.weight > 0 and shifts:
            geodesic = self._geodesic(out["z_B"], x, shifts)
        else:
            geodesic = r_B.new_zeros(())

        # per-level statistics of B radii in this batch (one-hot matmuls, no host sync)
        with torch.no_grad():
            onehot = (v.unsqueeze(1) == self.level_ids).to(torch.float32)
            count = onehot.sum(0)
            inv_count = 1.0 / count.clamp_min(1.0)
            multi = (count > 1).to(torch.float32)
            multi_w = multi / multi.sum().clamp_min(1.0)
            present = (count > 0).to(torch.float32)
            pair_mask = torch.outer(present, present) * self.upper
            pair_mask /= pair_mask.sum().clamp_min(1.0)
        s12 = torch.stack([r_B, r_B * r_B]) @ onehot
        mean = s12[0] * inv_count
        var = s12[1] * inv_count - mean * mean
        richness = (F.relu(cfg.richness.min_spread - var) * multi_w).sum()
        # level a < level b must have mean_a - mean_b >= margin * (b - a)
        viol = F.relu(self.sep_margin - (mean.view(-1, 1) - mean.view(1, -1)))
        separation = (viol * pair_mask).sum()

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

    def _geodesic(self, z: torch.Tensor, x: torch.Tensor, shifts: int) -> torch.Tensor:
        """Mean squared error of pair distances (Poincaré, as geometry.dist) to scale * 3^-k."""
        with torch.no_grad():
            xa, xs = self._pair(x, shifts)
            k = (xa == xs).to(torch.int32).cumprod(dim=1).sum(dim=1)
            target = self.geo_target[k]
        with torch.autocast(device_type=z.device.type, enabled=False):
            z = z.float()
            z2 = (z * z).sum(-1).clamp(max=(1.0 - EPS) ** 2)
            za, zs = self._pair(z, shifts)
            n2a, n2s = self._pair(z2, shifts)
            diff2 = (za - zs).square().sum(-1)
            q = diff2 / ((1.0 - n2a) * (1.0 - n2s))
            d = 2.0 * torch.asinh(torch.sqrt(q.clamp_min(1e-15)))
            return (d - target).square().mean()
