"""TernaryVAE's two branches, A (coverage) and B (hierarchy), each trained by its own loop.

Branch A (encoder A, projection A, decoder) and branch B (encoder B, projection B) share no
parameters and no activations, and every loss term reads only one of them: the model is two
independent models over the same batches. So each branch has its own span of the flat parameter
buffer, its own AdamW, its own gradient clipping (grad_clip bounds each branch's norm) and, on
fp16, its own GradScaler; an epoch is one pass of each branch over the same batches.

Why: on a small CPU a training step is mostly many small ops that intra-op threading cannot
spread over cores. The two branch loops of an epoch run at once, so two cores stay busy, the
loops never wait for each other inside the epoch, and each branch's weights, gradients and Adam
moments stay in one core's cache:
- `ForkedBranchRunner` (the CPU default on Linux, one intra-op thread per branch) runs branch
  B in a forked worker process. The flat parameter buffer and B's optimizer state live in
  shared memory, so the parent evaluates and checkpoints the very tensors the worker updates;
  the batch order, LR and freeze state go over a pipe once per epoch. Two processes means two
  GILs: the Python that dispatches each small op no longer queues behind the other branch's.
- `ThreadBranchRunner` runs branch B on a thread (torch releases the GIL inside ops and runs a
  CPU backward on the calling thread); the fallback everywhere else.
Run one after the other (GPU, 1 thread) the loops compute the same numbers, so every mode
trains bit for bit alike (tested). Only branch A draws random numbers (its reparameterised
sample), so the RNG stream stays in the parent.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, TypeVar

import numpy as np
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
    batches: list[tuple[Any, ...]],
    epoch: int,
    geodesic_active: bool,
    max_norm: float,
    amp_dtype: torch.dtype | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One pass of `branch` over `batches` (x, v, target classes or None where the branch's
    loss does not read them, then any extra arguments of its loss), updating it every batch.

    Returns (sum over batches of its weighted loss terms, each batch's squared pre-clip
    gradient norm); nothing here waits for the device.
    """
    scaler, opt, grad = branch.scaler, branch.optimizer, branch.grad
    device_type = grad.device.type
    scaled = scaler.is_enabled()
    term_sum = None
    norms_sq = []
    for x, v, tgt, *extra in batches:
        grad.zero_()
        if amp_dtype is None:
            out = branch.forward(x)
        else:
            with torch.autocast(device_type, dtype=amp_dtype):
                out = branch.forward(x)
        terms = branch.loss(out, x, v, tgt, epoch, geodesic_active, *extra)
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


def share_branch_state(params: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
    """Move `params` (the flat buffer) and every AdamW state tensor of `optimizer` to shared
    memory, creating AdamW's initial state (step 0, zero moments) where none exists yet.

    The state is created here, not lazily by the first step, because a tensor the worker
    allocated after the fork would be invisible to the parent's checkpoints. AdamW's own lazy
    initialisation is exactly these zeros, so training is unchanged (tested bit for bit).
    """
    params.share_memory_()
    for group in optimizer.param_groups:
        step_dtype = torch.float32 if group.get("fused") or group.get("capturable") else None
        for p in group["params"]:
            state = optimizer.state[p]
            if not state:
                step = torch.zeros((), dtype=step_dtype or torch.get_default_dtype())
                state.update(
                    step=step.to(p.device) if step_dtype else step,
                    exp_avg=torch.zeros_like(p),
                    exp_avg_sq=torch.zeros_like(p),
                )
                if group.get("amsgrad"):
                    state["max_exp_avg_sq"] = torch.zeros_like(p)
            for value in state.values():
                if torch.is_tensor(value):
                    value.share_memory_()


Result = tuple[torch.Tensor, torch.Tensor]


class ThreadBranchRunner:
    """Runs `target_B(*args)` on a worker thread while the caller runs branch A's job."""

    def __init__(self, target_B: Callable[..., Result], threads_per_branch: int) -> None:
        torch.set_num_threads(threads_per_branch)
        self.target_B = target_B
        self.closed = False
        # intra-op thread counts are per thread: the worker sets its own on start
        self._pool = ThreadPoolExecutor(
            1,
            thread_name_prefix="tvae-branch-B",
            initializer=torch.set_num_threads,
            initargs=(threads_per_branch,),
        )

    def run(self, job_A: Callable[[], T], args_B: tuple) -> tuple[T, Result]:
        future = self._pool.submit(self.target_B, *args_B)
        try:
            result_A = job_A()
        except BaseException:
            future.exception()  # let branch B finish before the error propagates
            raise
        return result_A, future.result()

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self.closed = True


def _to_wire(value: Any) -> Any:
    """Tensors cross the pipe as numpy arrays (plain pickle; torch's own reducer would set up
    shared memory per message)."""
    return value.numpy() if torch.is_tensor(value) else value


def _from_wire(value: Any) -> Any:
    return torch.from_numpy(value) if isinstance(value, np.ndarray) else value


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when the parent dies (prctl PR_SET_PDEATHSIG), so a
    worker stuck in an op is not orphaned; best effort."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _serve(conn: Connection, target: Callable[..., Result]) -> None:
    """The worker's loop: one message per epoch, answered with the branch's results."""
    # Ctrl-C and a group SIGTERM reach the parent too; it finishes or stops the epoch, and the
    # worker ends when the parent closes the pipe (or dies: the pipe then reads EOF)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _die_with_parent()
    torch.set_num_threads(1)
    while True:
        try:
            args = conn.recv()
        except (EOFError, OSError):
            return
        if args is None:
            return
        try:
            result = target(*(_from_wire(a) for a in args))
            conn.send(("ok", tuple(_to_wire(r.detach().cpu()) for r in result)))
        except Exception as err:  # noqa: BLE001 - reported by the parent
            conn.send(("error", f"{type(err).__name__}: {err}"))


class ForkedBranchRunner:
    """Runs `target_B(*args)` in a forked worker process while the caller runs branch A's job.

    Call `share_branch_state` first: the fork copies everything else, so only tensors in
    shared memory are seen by both sides. Between `run` calls the worker is idle, so the parent
    may read (evaluate, checkpoint) and write (resume, poison in tests) the shared tensors.

    Each side runs one intra-op thread: GNU OpenMP is not fork-safe, and a forked child that
    enters a parallel region after its parent used one hangs (seen with 2 threads per branch).
    With a single thread torch never enters one, as in DataLoader workers.
    """

    def __init__(self, target_B: Callable[..., Result]) -> None:
        torch.set_num_threads(1)
        parent, child = multiprocessing.Pipe()
        pid = os.fork()
        if pid == 0:  # the worker: never returns into the caller's code
            code = 0
            try:
                parent.close()
                _serve(child, target_B)
            except BaseException:  # noqa: BLE001 - nothing to report to; the parent sees EOF
                code = 1
            finally:
                os._exit(code)
        child.close()
        self.pid: int | None = pid
        self.conn: Connection | None = parent

    def run(self, job_A: Callable[[], T], args_B: tuple) -> tuple[T, Result]:
        if self.conn is None:
            raise RuntimeError("branch B worker is closed")
        self.conn.send(tuple(_to_wire(a) for a in args_B))
        try:
            result_A = job_A()
        except BaseException:
            try:  # let branch B finish its epoch before the error propagates
                self._receive()
            except Exception:  # noqa: BLE001 - the first error is the one to report
                pass
            raise
        return result_A, self._receive()

    def _receive(self) -> Result:
        try:
            kind, value = self.conn.recv()
        except (EOFError, OSError):
            raise RuntimeError("branch B worker process exited unexpectedly") from None
        if kind == "error":
            raise RuntimeError(f"branch B worker: {value}")
        return tuple(_from_wire(v) for v in value)

    def close(self) -> None:
        """Stop the worker and reap it."""
        if self.conn is None:
            return
        try:
            self.conn.send(None)
        except OSError:
            pass
        self.conn.close()
        self.conn = None
        os.waitpid(self.pid, 0)
        self.pid = None

    @property
    def closed(self) -> bool:
        return self.conn is None
