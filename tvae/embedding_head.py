"""The served form of TernaryVAE: one tensor in (N x 9 trits), one tensor out.

A served model is easiest to keep when it is one exported graph (`torch.export`) that needs
none of this package's Python code to load. This head wraps the VAE so that its forward pass is
that graph: trits in, the embedding columns below out, in a fixed order.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

N_TRITS = 9
BASE_COLUMNS = ["radius_A", "radius_B"] + [f"recon_{i}" for i in range(N_TRITS)]


def predict_columns(latent_dim: int) -> list[str]:
    """The head's output columns, in order: radius_A, radius_B, recon_0..8, z_0..z_{L-1}."""
    return BASE_COLUMNS + [f"z_{i}" for i in range(latent_dim)]


class EmbeddingHead(nn.Module):
    """ops [N, 9] in {-1, 0, 1} -> [radius_A, radius_B, recon_0..8, z_0..z_{L-1}] per row.

    `radius_*` are hyperbolic radii of the encoder A/B embeddings, `recon_*` the reconstructed
    trits (deterministic mu path), `z_*` the encoder B embedding.
    """

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, ops: torch.Tensor) -> torch.Tensor:
        out = self.vae.embed(ops.to(torch.float32))
        radius_a = out["radius_A"].reshape(-1, 1).to(torch.float32)
        radius_b = out["radius_B"].reshape(-1, 1).to(torch.float32)
        return torch.cat([radius_a, radius_b, out["recon"], out["z_B"]], dim=1)


def head_from_checkpoint(checkpoint: Path) -> tuple[EmbeddingHead, int]:
    """The head around a checkpoint's model (CPU, fp32, eval mode) and its latent size."""
    from tvae.checkpoint import load_model

    vae, config = load_model(Path(checkpoint))
    return EmbeddingHead(vae.cpu().float()).eval(), config.model.latent_dim


def export_head(head: EmbeddingHead, example: torch.Tensor) -> torch.export.ExportedProgram:
    """The head as a `torch.export` program over float32 [N, 9] input, N free.

    `example` needs more than one row: export fixes a dimension of size 1 to a constant.
    The head's weights are made contiguous first: the trainer keeps the encoders' first weight
    column-major (`tvae.model`), which `torch.export.save` can only store with a warning.
    """
    for param in head.parameters():
        param.data = param.data.contiguous()
    example = example.to(torch.float32)
    batch = torch.export.Dim.AUTO
    with torch.no_grad():
        return torch.export.export(head.eval(), (example,), dynamic_shapes=({0: batch},))
