"""What `model.activation_checkpointing` saves: memory kept for backward in one training step.

    python benchmarks/checkpointing_memory.py [--device cpu|cuda] [--batch-size 512 4096]

For the default config's model, one forward + backward of both branches (the trainer's loss
terms, geodesic on) with checkpointing off and on, at each batch size: the bytes autograd keeps
for backward (counted with saved-tensor hooks, the same on any device), the step's wall time,
and on CUDA the peak memory allocated. Prints each figure and the on/off ratio.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def step(on: bool, batch: int, device: torch.device) -> tuple[int, float, int | None]:
    """(bytes kept for backward, seconds, CUDA peak bytes or None) of one step."""
    from tvae.config import load_config
    from tvae.losses import LossComputer
    from tvae.model import TernaryVAE
    from tvae.ops import ternary_ops, valuations

    cfg = load_config(REPO / "configs" / "v5_12_4_extended_grokking.yaml")
    cfg = cfg.model_copy(
        update={"model": cfg.model.model_copy(update={"activation_checkpointing": on})}
    )
    torch.manual_seed(0)
    model = TernaryVAE.from_config(cfg.model).to(device)
    losses = LossComputer(cfg.loss, device)
    x = ternary_ops()[:batch].to(device).float()
    v = valuations()[:batch].to(device)
    kept = [0]

    def keep(t: torch.Tensor) -> torch.Tensor:
        kept[0] += t.numel() * t.element_size()
        return t

    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        out_A = model.forward_A(x, point=False)
        out_B = model.forward_B(x, point=True)
    target = (x + 1).long()
    terms = losses.branch_A(out_A, x, v, target, 20, True).sum()
    terms = terms + losses.branch_B(out_B, x, v, None, 20, True).sum()
    terms.backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else None
    return kept[0], seconds, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, nargs="+", default=[512, 4096])
    args = parser.parse_args()
    device = torch.device(args.device)
    for batch in args.batch_size:
        step(False, batch, device), step(True, batch, device)  # warm-up
        off, on = step(False, batch, device), step(True, batch, device)
        line = (
            f"batch {batch}: kept for backward {off[0] / 2**20:.2f} MiB off, "
            f"{on[0] / 2**20:.2f} MiB on ({on[0] / off[0]:.2f}x); "
            f"step {off[1] * 1e3:.1f} ms off, {on[1] * 1e3:.1f} ms on"
        )
        if off[2] is not None:
            line += f"; CUDA peak {off[2] / 2**20:.1f} MiB off, {on[2] / 2**20:.1f} MiB on"
        print(line, flush=True)


if __name__ == "__main__":
    main()
