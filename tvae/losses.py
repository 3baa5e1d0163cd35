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
  latent      ranking hinge on Euclidean distances of B's points z_B: of two in-batch pairs,
              the one with the larger |v_i - v_j| must sit at least margin farther apart (the
              order eval/dist_corr_latent scores); 0 when weight is 0
All geometric terms run in fp32. Pairs are formed inside the (randomly drawn) batch by pairing
element k with element k+s for s = 1..ceil(pairs / batch): at least `pairs` random pairs per
step with no gathers, and no extra random numbers.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from tvae.config import LossConfig
from tvae.geometry import EPS, no_autocast
from tvae.ops import N_LEVELS

TERMS = ("recon", "kl", "radial", "rank", "geodesic", "richness", "separation", "latent")


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
    """Holds the device-side constants; `__call__` returns (total, per-term weighted values).

    The terms split by branch (A: recon and A's kl/radial shares; B: the rest), so each
    branch is its own autograd graph (tvae.branches). The per-step work is written for few
    small ops (they are most of a CPU step): constants such as the 3^-k geodesic targets are
    tables, pairwise terms reuse per-point quantities (|z|^2 is rolled with z), and masks are
    built without autograd.
    """

    def __init__(self, cfg: LossConfig, device: torch.device) -> None:
        self.cfg = cfg
        self.targets = radial_targets(cfg, device)
        self.level_ids = torch.arange(N_LEVELS, device=device)
        gap = (self.level_ids.view(1, -1) - self.level_ids.view(-1, 1)).to(torch.float32)  # b - a
        self.upper = gap > 0
        self.sep_margin = cfg.separation.margin * gap
        # geodesic target by shared prefix k = 0..9: scale * 3^-k
        k = torch.arange(N_LEVELS, dtype=torch.float32, device=device)
        self.geo_target = cfg.geodesic.scale * torch.pow(3.0, -k)

    @staticmethod
    def _shifts(pairs: int, n: int) -> int:
        """Number of roll shifts giving at least `pairs` in-batch pairs (0 without pairs)."""
        return min(n - 1, -(-pairs // n)) if n > 1 else 0

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
        """(total, the 8 weighted terms) of both branches."""
        a = self.branch_A(out, x, v, target_cls, epoch, geodesic_active)
        b = self.branch_B(out, x, v, target_cls, epoch, geodesic_active)
        return a.sum() + b.sum(), self.combine(a, b)

    @staticmethod
    def combine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """The 8 TERMS from branch A's (recon, kl, radial) and branch B's 7 weighted parts."""
        return torch.cat([a[:1], a[1:] + b[:2], b[2:]])

    def _kl(self, mu: torch.Tensor, logvar: torch.Tensor, epoch: int) -> torch.Tensor:
        """One encoder's weighted share of the kl term (the two shares sum to the term)."""
        mu, logvar = mu.float(), logvar.float()
        kl = (mu.square() + logvar.exp() - logvar).sum() * (0.5 / max(mu.shape[0], 1))
        return self.kl_weight(epoch) * (kl - 0.5 * float(mu.shape[-1]))

    def _radial(self, r: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.cfg.radial.weight * (r - target).square().sum() / r.shape[0]

    def branch_A(
        self,
        out: dict[str, torch.Tensor],
        x: torch.Tensor,
        v: torch.Tensor,
        target_cls: torch.Tensor,
        epoch: int,
        geodesic_active: bool,
    ) -> torch.Tensor:
        """Branch A's weighted (recon, kl share, radial share): needs only forward_A's outputs."""
        recon = F.cross_entropy(out["logits"].float().transpose(1, 2), target_cls)
        return torch.stack(
            [
                self.cfg.recon.weight * recon,
                self._kl(out["mu_A"], out["logvar_A"], epoch),
                self._radial(out["radius_A"], self.targets.index_select(0, v)),
            ]
        )

    @torch.no_grad()
    def batch_contexts(self, x: torch.Tensor, v: torch.Tensor) -> dict[str, torch.Tensor]:
        """What branch_B needs that does not depend on the model, for nb batches of n at once.

        x (nb, n, 9) and v (nb, n) -> tensors with a leading nb axis. Computed once per epoch
        for all equal-sized batches (~30 small ops per step saved on branch B's critical
        path); every value is exact (signs, counts, table lookups), so training is unchanged.
        """
        cfg, n = self.cfg, v.shape[1]
        ctx = {"radial_target": self.targets[v]}
        # pairs: the batch is a random sample, so element k paired with element k+s (mod n)
        # for shifts s = 1..S gives random pairs without gathers (rolls are cheap both ways)
        shifts = self._shifts(cfg.rank.pairs, n)
        if shifts:
            v_a, v_s = pair(v, shifts, dim=1)
            sign = torch.sign(v_a - v_s).to(torch.float32)
            used = sign.abs()
            ctx["rank_sign"] = sign
            ctx["rank_margin"] = used * cfg.rank.margin
            ctx["rank_count"] = used.sum(1).clamp_min(1.0)
        shifts = self._shifts(cfg.geodesic.pairs, n)
        if cfg.geodesic.weight > 0 and shifts:
            xa, xs = pair(x, shifts, dim=1)
            k = (xa == xs).to(torch.int32).cumprod(dim=2).sum(dim=2)
            ctx["geo_target"] = self.geo_target[k]
        shifts = self._shifts(cfg.latent.pairs, n)
        if cfg.latent.weight > 0 and shifts:
            # pair p = (k, k+s) against pair p-1 (the pair list rolled by one)
            dv = pair(v, shifts, dim=1)
            dv = (dv[0] - dv[1]).abs()
            sign = torch.sign(dv - dv.roll(1, 1)).to(torch.float32)
            used = sign.abs()
            ctx["latent_sign"] = sign
            ctx["latent_margin"] = used * cfg.latent.margin
            ctx["latent_count"] = used.sum(1).clamp_min(1.0)
        # per-level membership of the batch (one-hot matmuls later, no host sync)
        onehot = (v.unsqueeze(2) == self.level_ids).to(torch.float32)
        count = onehot.sum(1)
        multi = (count > 1).to(torch.float32)
        present = (count > 0).to(torch.float32)
        pair_mask = present.unsqueeze(2) * present.unsqueeze(1) * self.upper
        pair_mask /= pair_mask.sum((1, 2), keepdim=True).clamp_min(1.0)
        ctx["onehot"] = onehot
        ctx["inv_count"] = 1.0 / count.clamp_min(1.0)
        ctx["multi_w"] = multi / multi.sum(1, keepdim=True).clamp_min(1.0)
        ctx["pair_mask"] = pair_mask
        return ctx

    def epoch_contexts(self, batches: list[tuple[torch.Tensor, ...]]) -> list[dict]:
        """batch_contexts for each (x, v, ...) batch: batches of one size in a single pass."""
        by_size: dict[int, list[int]] = {}
        for i, batch in enumerate(batches):
            by_size.setdefault(batch[0].shape[0], []).append(i)
        out: list[dict] = [{} for _ in batches]
        for members in by_size.values():
            x = torch.stack([batches[i][0] for i in members])
            v = torch.stack([batches[i][1] for i in members])
            ctx = self.batch_contexts(x, v)
            for j, i in enumerate(members):
                out[i] = {k: t[j] for k, t in ctx.items()}
        return out

    def branch_B(
        self,
        out: dict[str, torch.Tensor],
        x: torch.Tensor,
        v: torch.Tensor,
        target_cls: torch.Tensor | None,  # not read: B has no decoder
        epoch: int,
        geodesic_active: bool,
        ctx: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Branch B's weighted (kl share, radial share, rank, geodesic, richness, separation,
        latent).

        `ctx` is this batch's `batch_contexts` entry (computed here when not given).
        """
        cfg = self.cfg
        if ctx is None:
            ctx = {k: t[0] for k, t in self.batch_contexts(x[None], v[None]).items()}
        r_B = out["radius_B"]

        if "rank_sign" in ctx:
            rank_r, rank_rs = pair(r_B, self._shifts(cfg.rank.pairs, x.shape[0]))
            # |s| is 0 or 1, so relu(margin*|s| + s*d) is the hinge masked to unequal levels
            hinge = F.relu(torch.addcmul(ctx["rank_margin"], ctx["rank_sign"], rank_r - rank_rs))
            rank = hinge.sum() / ctx["rank_count"]
        else:
            rank = r_B.new_zeros(())

        if geodesic_active and "geo_target" in ctx:
            shifts = self._shifts(cfg.geodesic.pairs, x.shape[0])
            geodesic = self._geodesic(out["z_B"], ctx["geo_target"], shifts)
        else:
            geodesic = r_B.new_zeros(())

        if "latent_sign" in ctx:
            latent = self._latent(out["z_B"], ctx, self._shifts(cfg.latent.pairs, x.shape[0]))
        else:
            latent = r_B.new_zeros(())

        inv_count = ctx["inv_count"]
        s12 = torch.stack([r_B, r_B * r_B]) @ ctx["onehot"]
        mean = s12[0] * inv_count
        var = s12[1] * inv_count - mean * mean
        richness = (F.relu(cfg.richness.min_spread - var) * ctx["multi_w"]).sum()
        # level a < level b must have mean_a - mean_b >= margin * (b - a)
        viol = F.relu(self.sep_margin - (mean.view(-1, 1) - mean.view(1, -1)))
        separation = (viol * ctx["pair_mask"]).sum()

        return torch.stack(
            [
                self._kl(out["mu_B"], out["logvar_B"], epoch),
                self._radial(r_B, ctx["radial_target"]),
                cfg.rank.weight * rank,
                cfg.geodesic.weight * geodesic,
                cfg.richness.weight * richness,
                cfg.separation.weight * separation,
                cfg.latent.weight * latent,
            ]
        )

    @staticmethod
    def _latent(z: torch.Tensor, ctx: dict[str, torch.Tensor], shifts: int) -> torch.Tensor:
        """Mean ranking hinge over compared pairs of unequal |dv| (Euclidean, as the metric)."""
        with no_autocast(z):
            za, zs = pair(z.float(), shifts)
            d = (za - zs).square().sum(-1).clamp_min(1e-12).sqrt()
            # sign = sign(dv_p - dv_q): relu(margin*|sign| - sign*(d_p - d_q))
            hinge = F.relu(torch.addcmul(ctx["latent_margin"], ctx["latent_sign"], d.roll(1) - d))
            return hinge.sum() / ctx["latent_count"]

    def _geodesic(self, z: torch.Tensor, target: torch.Tensor, shifts: int) -> torch.Tensor:
        """Mean squared error of pair distances (Poincaré, as geometry.dist) to `target`
        (scale * 3^-k for each pair's shared prefix k)."""
        with no_autocast(z):
            z = z.float()
            z2 = (z * z).sum(-1).clamp(max=(1.0 - EPS) ** 2)
            za, zs = pair(z, shifts)
            n2a, n2s = pair(z2, shifts)
            diff2 = (za - zs).square().sum(-1)
            q = diff2 / ((1.0 - n2a) * (1.0 - n2s))
            d = 2.0 * torch.asinh(torch.sqrt(q.clamp_min(1e-15)))
            return (d - target).square().mean()


def pair(t: torch.Tensor, shifts: int, dim: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(t repeated, t rolled by 1..shifts) along `dim`: n * shifts pairs."""
    if shifts == 1:
        return t, t.roll(1, dim)
    times = [1] * t.dim()
    times[dim] = shifts
    return t.repeat(*times), torch.cat([t.roll(k, dim) for k in range(1, shifts + 1)], dim)
