"""Data-parallel training over torch.distributed, one process per device (launched by torchrun).

Every rank walks the same global batches (same seed, same permutation) and forwards only its
shard of each; the shards' outputs are gathered with autograd, so every rank computes the loss
of the whole batch exactly as one process would, in-batch pairs and per-level statistics
included. Each rank's backward then holds its shard's part of the gradient, and one all-reduce
(sum) per branch and step makes the whole-batch gradient on every rank; identical optimizers
keep identical parameters. Branch A's noise is drawn for the whole batch on every rank and
sliced, so the random stream is the one-process stream too.

Why not `DistributedDataParallel`: the model trains as two independent branches, each with its
own optimizer and forward method (not `Module.forward`), and the pairwise loss terms need the
whole batch's outputs anyway, which DDP's per-shard loss does not give.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

# torch >= 2.13 names them *_single; older releases only have the *_tensor spelling
_all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_reduce_scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
# the backend our launcher chose from the training's device, for ranks that join the group
# before they know the config (gloo for a CPU training on a GPU machine); unset: NCCL with CUDA
BACKEND_ENV = "TVAE_DIST_BACKEND"


def backend_for(device: torch.device) -> str:
    """NCCL for a training on GPUs (where torch has it), gloo for one on the CPU."""
    return "nccl" if device.type == "cuda" and dist.is_nccl_available() else "gloo"


class _AllGather(torch.autograd.Function):
    """Every rank's equal-shaped tensor stacked along dim 0; the backward hands each rank the
    sum over ranks of the gradient of its own rows."""

    @staticmethod
    def forward(ctx: Any, value: torch.Tensor) -> torch.Tensor:
        world = dist.get_world_size()
        out = value.new_empty((world * value.shape[0], *value.shape[1:]))
        _all_gather(out, value.contiguous())
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        part = grad.new_empty((grad.shape[0] // dist.get_world_size(), *grad.shape[1:]))
        _reduce_scatter(part, grad)
        return part


@dataclass(frozen=True)
class DataParallel:
    """This process's place in the group: rank (0 logs), world size and backend."""

    rank: int
    world: int
    local_rank: int
    backend: str

    @classmethod
    def from_env(cls) -> DataParallel | None:
        """Join the group torchrun describes (WORLD_SIZE > 1), else None: one process."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return None
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        here = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        backend = os.environ.get(BACKEND_ENV) or backend_for(here)
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        if not dist.is_initialized():
            dist.init_process_group(backend)
        return cls(dist.get_rank(), dist.get_world_size(), local_rank, backend)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """A CUDA rank uses its own GPU (LOCAL_RANK); CPU ranks share the CPU."""
        if device.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return device

    def shards(self, n: int) -> list[slice]:
        """Each rank's contiguous rows of an n-row batch (the first ranks take one more)."""
        base, extra = divmod(n, self.world)
        starts = [r * base + min(r, extra) for r in range(self.world)]
        return [slice(a, a + base + (r < extra)) for r, a in enumerate(starts)]

    def shard(self, n: int) -> slice:
        """This rank's rows of an n-row batch."""
        return self.shards(n)[self.rank]

    def gather(self, out: dict[str, torch.Tensor], n: int) -> dict[str, torch.Tensor]:
        """Every rank's shard outputs, concatenated in rank order into n rows, with autograd
        (all_gather needs equal shapes: shards are padded to the largest, then cut back)."""
        shards, width = self.shards(n), -(-n // self.world)
        whole: dict[str, torch.Tensor] = {}
        for key, value in out.items():
            pad = width - value.shape[0]
            if pad:
                value = torch.cat([value, value.new_zeros((pad, *value.shape[1:]))])
            parts = _AllGather.apply(value).split(width)
            whole[key] = torch.cat(
                [part[: s.stop - s.start] for part, s in zip(parts, shards, strict=True)]
            )
        return whole

    def forward(
        self, forward: Callable[..., dict[str, torch.Tensor]], x: torch.Tensor, **kwargs: Any
    ) -> dict[str, torch.Tensor]:
        """`forward` on this rank's shard of x, gathered to the whole batch."""
        return self.gather(forward(x[self.shard(x.shape[0])], **kwargs), x.shape[0])

    def sum_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """Sum the parameters' gradients over ranks, in one flat all-reduce (frozen ones, with
        no gradient, are skipped: every rank freezes the same)."""
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        for grad, part in zip(grads, flat.split([g.numel() for g in grads]), strict=True):
            grad.copy_(part.view_as(grad))

    def any(self, flag: bool, device: torch.device) -> bool:
        """Whether `flag` is set on any rank (each rank must ask at the same point)."""
        value = torch.tensor([1.0 if flag else 0.0], device=device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank."""
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        """Leave the group together: each rank waits for the others (rank 0 may still be
        logging its run) before the group is torn down; a rank tearing it down alone can abort
        its peer."""
        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


def shard_forwards(
    model: torch.nn.Module, parallel: DataParallel, point_B: bool
) -> tuple[Callable[..., dict[str, torch.Tensor]], Callable[..., dict[str, torch.Tensor]]]:
    """Branch A's and B's training forwards for this rank: its shard of the batch in, the whole
    batch's outputs out. A's reparameterisation noise is drawn for the whole batch (as one
    process draws it, `randn_like` of the batch's mu) and sliced."""

    def forward_A(x: torch.Tensor) -> dict[str, torch.Tensor]:
        rows = parallel.shard(x.shape[0])

        def noise(mu: torch.Tensor) -> torch.Tensor:
            whole = torch.randn((x.shape[0], *mu.shape[1:]), dtype=mu.dtype, device=mu.device)
            return whole[rows]

        return parallel.forward(model.forward_A, x, point=False, noise=noise)

    def forward_B(x: torch.Tensor) -> dict[str, torch.Tensor]:
        return parallel.forward(model.forward_B, x, point=point_B)

    return forward_A, forward_B
