"""The served form of TernaryVAE: one tensor in (N x 9 trits), one tensor out.

MLflow's pytorch flavour wants a module mapping a single float tensor to a single tensor, so
this head concatenates what `model.embed` returns in the fixed column order documented in
`mlflow_plugins.model_logging.PREDICT_COLUMNS`. No MLflow import here: the module is traced by
`torch.export`, and the exported graph needs no Python code to load.
"""

from __future__ import annotations

import torch
from torch import nn


class EmbeddingHead(nn.Module):
    """ops [N, 9] in {-1, 0, 1} -> [radius_A, radius_B, recon_0..8, z_0..z_{L-1}] per row.

    Takes any float dtype (the logged signature says float64, what pandas gives).
    """

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, ops: torch.Tensor) -> torch.Tensor:
        out = self.vae.embed(ops.to(torch.float32))
        radius_a = out["radius_A"].reshape(-1, 1).to(torch.float32)
        radius_b = out["radius_B"].reshape(-1, 1).to(torch.float32)
        recon = out["recon"].to(torch.float32)
        z_b = out["z_B"].to(torch.float32)
        return torch.cat([radius_a, radius_b, recon, z_b], dim=1)
