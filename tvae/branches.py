"""TernaryVAE's two branches, A (coverage) and B (hierarchy), each trained by its own loop.

Branch A (encoder A, projection A, decoder) and branch B (encoder B, projection B) share no
parameters and no activations, and every loss term reads only one of them: the model is two
independent models over the same batches. So each branch has its own span of the flat parameter
buffer, its own AdamW, its own gradient clipping (grad_clip bounds each branch's norm) and, on
fp16, its own GradScaler; an epoch is one pass of each branch over the same batches.

Why: on a small CPU a training step is mostly many small ops that intra-op threading cannot
spread over cores. `BranchRunner` runs the two branch loops of an epoch on two threads (torch
releases the GIL inside ops and runs a CPU backward on the calling thread), so two cores stay
busy, the threads never wait for each other inside the epoch, and each branch's weights,
gradients and Adam moments stay in one core's cache. Run one after the other (GPU, 1 thread) the
loops compute the same numbers, so threads=1 and threads=2 train bit for bit alike (tested).
Only branch A draws random numbers (its reparameterised sample), so the RNG stream is shared.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import torch

T = TypeVar("T")


@dataclass
class Branch:
    """One branch: its forward, its loss terms, its gradient span, optimizer and scaler."""

    name: str
    forward: Callable[[torch.Tensor], dict[str, torch.Tensor]]
    # (out, x, v, target classes, epoch, geodesic active) -> weighted loss terms
    loss: Callable[..., torch.Tensor]
    grad: torch.Tensor  # contiguous view of the flat gradient covering the branch
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler


def clip_coef(norm: torch.Tensor, max_norm: float) -> torch.Tensor:
    """Gradient scale that brings a norm down to max_norm (1 when already below); no sync."""
    return (max_norm / (norm + 1e-6)).clamp(max=1.0)


def train_branch_epoch(
    branch: Branch,
    batches: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    epoch: int,
    geodesic_active: bool,
    max_norm: float,
    amp_dtype: torch.dtype | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One pass of `branch` over `batches` (x, v, target classes), updating it every batch.

    Returns (sum over batches of its weighted loss terms, each batch's squared pre-clip
    gradient norm); nothing here waits for the device.
    """
    scaler, opt, grad = branch.scaler, branch.optimizer, branch.grad
    device_type = grad.device.type
    scaled = scaler.is_enabled()
    term_sum = None
    norms_sq = []
    for x, v, tgt in batches:
        grad.zero_()
        if amp_dtype is None:
            out = branch.forward(x)
        else:
            with torch.autocast(device_type, dtype=amp_dtype):
                out = branch.forward(x)
        terms = branch.loss(out, x, v, tgt, epoch, geodesic_active)
        if scaled:  # fp16: unscale before the norm; the scaler skips steps with inf grads
            scaler.scale(terms.sum()).backward()
            scaler.unscale_(opt)
        else:
            terms.sum().backward()
        norm_sq = torch.dot(grad, grad)
        grad.mul_(clip_coef(norm_sq.sqrt(), max_norm))
        if scaled:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        terms = terms.detach()
        term_sum = terms if term_sum is None else term_sum + terms
        norms_sq.append(norm_sq)
    return term_sum, torch.stack(norms_sq)


class BranchRunner:
    """Runs two callables at once: the second on a worker thread, the first on the caller."""

    def __init__(self, threads_per_branch: int) -> None:
        torch.set_num_threads(threads_per_branch)
        # intra-op thread counts are per thread: the worker sets its own on start
        self._pool = ThreadPoolExecutor(
            1,
            thread_name_prefix="tvae-branch-B",
            initializer=torch.set_num_threads,
            initargs=(threads_per_branch,),
        )

    def run(self, job_A: Callable[[], T], job_B: Callable[[], T]) -> tuple[T, T]:
        future = self._pool.submit(job_B)
        try:
            result_A = job_A()
        except BaseException:
            future.exception()  # let branch B finish before the error propagates
            raise
        return result_A, future.result()

    def close(self) -> None:
        self._pool.shutdown(wait=True)
