"""TernaryVAE v5.12.4: two encoders over one operation space, one decoder, hyperbolic heads.

Encoder A is trained for coverage (its sample feeds the decoder), encoder B for hierarchy (its
hyperbolic radius should fall with the 3-adic valuation). Each encoder owns a hyperbolic
projection: a direction net (unit vector) and a radius net (Euclidean norm < max_radius), so the
point in the Poincaré ball is direction * norm and its hyperbolic radius is 2 artanh(norm).
The projection reads mu (not a sample), so training and evaluation see the same geometry.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from tvae.config import ModelConfig
from tvae.geometry import radius_from_norm
from tvae.ops import N_DIGITS

N_CLASSES = 3


ACTIVATIONS = {"silu": nn.SiLU, "relu": nn.ReLU}


def _mlp(sizes: list[int], out: int, act: str = "silu") -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [nn.Linear(a, b), ACTIVATIONS[act]()]
    layers.append(nn.Linear(sizes[-1], out))
    return nn.Sequential(*layers)


def run_mlp(seq: nn.Sequential, x: torch.Tensor, checkpointed: bool = False) -> torch.Tensor:
    """seq(x) without Module.__call__ per layer: on a small CPU step the call machinery is a
    measurable share, and with two branch threads it is time held under the GIL. With
    `checkpointed` (and autograd recording), its activations are recomputed in backward."""
    if checkpointed and torch.is_grad_enabled():
        return checkpoint(run_mlp, seq, x, use_reentrant=False)
    for layer in seq:
        x = layer.forward(x)
    return x


class Encoder(nn.Module):
    """9 trits -> hidden MLP -> (mu, logvar), one linear head producing both halves."""

    def __init__(
        self, hidden: list[int], latent: int, act: str = "silu", checkpointed: bool = False
    ) -> None:
        super().__init__()
        self.net = _mlp([N_DIGITS, *hidden], 2 * latent, act)
        self.latent = latent
        self.checkpointed = checkpointed
        # the first weight is stored column-major: with only 9 inputs, autograd then computes
        # its gradient as x^T @ g (a wide GEMM) instead of g^T @ x with 9 output columns,
        # which CPU BLAS runs several times slower; values and results are unchanged
        first = self.net[0].weight
        first.data = first.data.t().contiguous().t()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = run_mlp(self.net, x, self.checkpointed).chunk(2, dim=-1)
        return mu, logvar.clamp(-10.0, 10.0)


class HyperbolicProjection(nn.Module):
    """mu -> point in the Poincaré ball: direction net (unit vector) x radius net (norm)."""

    def __init__(self, latent: int, hidden: int, max_radius: float, act: str = "silu") -> None:
        super().__init__()
        self.direction = _mlp([latent, hidden], latent, act)
        self.radius = _mlp([latent, hidden], 1, act)
        self.max_radius = max_radius

    def forward(
        self, mu: torch.Tensor, point: bool = True
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Return (point, Euclidean norm of the point), both fp32; with point=False only the
        norm (the radius net alone) and None for the point.

        The direction net runs first: autograd sums mu's gradients in graph order, so the
        order is part of the bit-for-bit results."""
        d = None
        if point:
            d = run_mlp(self.direction, mu).float()
            d = d / d.norm(dim=-1, keepdim=True).clamp_min(1e-6)
        norm = torch.sigmoid(run_mlp(self.radius, mu).float()).squeeze(-1) * self.max_radius
        return (None if d is None else d * norm.unsqueeze(-1)), norm


class TernaryVAE(nn.Module):
    """Dual-encoder hyperbolic VAE over the 3^9 ternary operations."""

    def __init__(
        self,
        encoder_hidden: list[int],
        decoder_hidden: list[int],
        latent_dim: int,
        projection_hidden: int,
        max_radius: float,
        activation: str = "silu",
        activation_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        act, ckpt = activation, activation_checkpointing
        self.checkpointed = ckpt  # the encoders' and the decoder's MLPs
        self.encoder_A = Encoder(encoder_hidden, latent_dim, act, ckpt)
        self.encoder_B = Encoder(encoder_hidden, latent_dim, act, ckpt)
        self.projection_A = HyperbolicProjection(latent_dim, projection_hidden, max_radius, act)
        self.projection_B = HyperbolicProjection(latent_dim, projection_hidden, max_radius, act)
        self.decoder = _mlp([latent_dim, *decoder_hidden], N_DIGITS * N_CLASSES, act)

    @classmethod
    def from_config(cls, model_cfg: ModelConfig) -> TernaryVAE:
        return cls(
            encoder_hidden=list(model_cfg.encoder_hidden),
            decoder_hidden=list(model_cfg.decoder_hidden),
            latent_dim=model_cfg.latent_dim,
            projection_hidden=model_cfg.projection_hidden,
            max_radius=model_cfg.max_radius,
            activation=model_cfg.activation,
            activation_checkpointing=model_cfg.activation_checkpointing,
        )

    def branch_modules(self, name: str) -> list[nn.Module]:
        """Branch A's or B's modules, its encoder (the trunk homeostasis freezes) first."""
        if name == "A":
            return [self.encoder_A, self.projection_A, self.decoder]
        return [self.encoder_B, self.projection_B]

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        """Latent (N, latent) -> logits (N, 9, 3) over the trit values -1, 0, +1."""
        return run_mlp(self.decoder, z, self.checkpointed).view(-1, N_DIGITS, N_CLASSES)

    def forward_A(
        self,
        x: torch.Tensor,
        sample: bool = True,
        point: bool = True,
        noise: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Branch A (coverage): encoder A, its projection, and the decoder fed by z_A's sample.

        The two branches share no parameters and no activations, so each is its own autograd
        graph; the CPU trainer runs them at once (tvae.branches). No loss reads A's point z_A,
        only its radius, so training passes point=False and skips the direction net (about a
        tenth of branch A's step; gradients and results are unchanged). `noise(mu)` draws the
        sample's standard normal noise (default `randn_like`; data parallelism draws the whole
        batch's and slices, tvae.distributed).
        """
        mu_A, logvar_A = self.encoder_A.forward(x)
        if sample:
            eps = noise(mu_A) if noise is not None else torch.randn_like(mu_A)
            z = mu_A + eps * torch.exp(0.5 * logvar_A)
        else:
            z = mu_A
        out = {"logits": self.decode_logits(z), "mu_A": mu_A, "logvar_A": logvar_A}
        return _place(self.projection_A, mu_A, point, "A", out)

    def forward_B(self, x: torch.Tensor, point: bool = True) -> dict[str, torch.Tensor]:
        """Branch B (hierarchy): encoder B and its projection (no sampling, no decoder).

        Only the geodesic loss reads the point z_B; before it switches on, training passes
        point=False and skips the direction net (results unchanged, as for branch A).
        """
        mu_B, logvar_B = self.encoder_B.forward(x)
        out = {"mu_B": mu_B, "logvar_B": logvar_B}
        return _place(self.projection_B, mu_B, point, "B", out)

    def forward(self, x: torch.Tensor, sample: bool = True) -> dict[str, torch.Tensor]:
        """Training pass: sampled z_A feeds the decoder; projections read mu."""
        return {**self.forward_A(x, sample), **self.forward_B(x)}

    @torch.no_grad()
    def embed(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Deterministic (mu path) embeddings, all fp32: z_A, z_B, radius_A, radius_B, recon."""
        out = self.forward(x, sample=False)
        recon = out["logits"].float().argmax(dim=-1).to(torch.float32) - 1.0
        return {
            "z_A": out["z_A"].float(),
            "z_B": out["z_B"].float(),
            "radius_A": out["radius_A"].float(),
            "radius_B": out["radius_B"].float(),
            "recon": recon,
        }


def _place(
    projection: HyperbolicProjection,
    mu: torch.Tensor,
    point: bool,
    name: str,
    out: dict[str, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """Add encoder `name`'s point z_<name> (when asked for) and radius_<name> to `out`."""
    z, norm = projection.forward(mu, point)
    if z is not None:
        out[f"z_{name}"] = z
    out[f"radius_{name}"] = radius_from_norm(norm)
    return out
