"""TernaryVAE's two branches, A (coverage) and B (hierarchy), and how an epoch runs them.

Branch A (encoder A, projection A, decoder) and branch B (encoder B, projection B) share no
parameters and no activations, and every loss term reads only one of them: the model is two
independent models over the same batches. So each branch has its own AdamW, its own gradient
clipping (grad_clip bounds each branch's norm) and, on fp16, its own GradScaler; an epoch is
one pass of each branch over the same batches.

Why: on a small CPU a training step is mostly many small ops that intra-op threads cannot
spread over cores. `ThreadBranchRunner` runs branch B's loop on a worker thread while the
caller runs branch A's (torch releases the GIL inside ops and runs a CPU backward on the
calling thread), so two cores stay busy and neither loop waits for the other inside an epoch.
`SerialRunner` runs them one after the other (GPU, or one CPU thread). Both compute the same
numbers, so the two modes train bit for bit alike (tested). Only branch A draws random numbers
(its reparameterised sample), so the random stream stays on the calling thread.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import nn

from tvae.config import TrainConfig
from tvae.device import AMP_DTYPES

ResultA = TypeVar("ResultA")
ResultB = TypeVar("ResultB")


@dataclass
class Branch:
    """One branch: its forward, its loss terms, its parameters, optimizer and scaler."""

    name: str
    forward: Callable[..., dict[str, torch.Tensor]]
    # (out, x, v, target classes, epoch, geodesic active, *extra) -> weighted loss terms
    loss: Callable[..., torch.Tensor]
    params: list[nn.Parameter]
    trunk: nn.Module  # the encoder that homeostasis freezes
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    max_norm: float  # gradient clipping bound of this branch
    amp_dtype: torch.dtype | None  # autocast dtype, None for full precision

    def start_epoch(self, lr: float, trunk_frozen: bool) -> None:
        """The epoch's scheduled learning rate and the trunk's homeostasis state."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.freeze_trunk(trunk_frozen)

    def freeze_trunk(self, frozen: bool) -> None:
        """Stop (or restart) the trunk's training: with no gradient, AdamW skips it entirely
        (no moment update, no weight decay)."""
        self.trunk.requires_grad_(not frozen)


def make_branch(
    name: str,
    forward: Callable[..., dict[str, torch.Tensor]],
    loss: Callable[..., torch.Tensor],
    modules: list[nn.Module],
    cfg: TrainConfig,
    device: torch.device,
    amp: str,
) -> Branch:
    """A branch over `modules` (the first is its trunk) with its own stock AdamW (fused on CPU
    and CUDA, where it is the fastest setting; foreach elsewhere) and GradScaler (enabled for
    fp16 only)."""
    params = [p for module in modules for p in module.parameters()]
    fast = {"fused": True} if device.type in ("cpu", "cuda") else {"foreach": True}
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **fast)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    amp_dtype = AMP_DTYPES.get(amp)
    return Branch(name, forward, loss, params, modules[0], opt, scaler, cfg.grad_clip, amp_dtype)


def finite_mean(norms: torch.Tensor) -> torch.Tensor:
    """Mean of the finite entries (fp16 steps with inf/NaN gradients are skipped by the
    scaler, so their norms say nothing about training)."""
    ok = torch.isfinite(norms)
    return torch.where(ok, norms, 0.0).sum() / ok.sum().clamp_min(1)


class SerialRunner:
    """Branch A's epoch, then branch B's, on the calling thread."""

    closed = False

    def run(
        self, job_A: Callable[[], ResultA], job_B: Callable[[], ResultB]
    ) -> tuple[ResultA, ResultB]:
        result_A = job_A()
        return result_A, job_B()

    def all_threads(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def close(self) -> None:
        self.closed = True


class ThreadBranchRunner(SerialRunner):
    """Branch B's epoch on a worker thread while the calling thread runs branch A's; each
    thread gets `threads // 2` intra-op threads."""

    def __init__(self, threads: int) -> None:
        self.threads = threads
        per_branch = max(1, threads // 2)
        torch.set_num_threads(per_branch)  # intra-op thread counts are per thread
        self._pool = ThreadPoolExecutor(
            1,
            thread_name_prefix="tvae-branch-B",
            initializer=torch.set_num_threads,
            initargs=(per_branch,),
        )

    def run(
        self, job_A: Callable[[], ResultA], job_B: Callable[[], ResultB]
    ) -> tuple[ResultA, ResultB]:
        future = self._pool.submit(job_B)
        try:
            result_A = job_A()
        except BaseException:
            future.exception()  # let branch B finish before the error propagates
            raise
        return result_A, future.result()

    @contextlib.contextmanager
    def all_threads(self) -> Iterator[None]:
        """Between epochs the worker is idle: give the caller every thread (evaluation)."""
        torch.set_num_threads(self.threads)
        try:
            yield
        finally:
            torch.set_num_threads(max(1, self.threads // 2))

    def close(self) -> None:
        """Stop the worker and give the caller every thread back."""
        self._pool.shutdown(wait=True)
        torch.set_num_threads(self.threads)
        self.closed = True
