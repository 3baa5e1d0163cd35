"""tvae.branches runners: results, shared memory, errors and clean-up of the forked worker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from tvae.branches import ForkedBranchRunner, ThreadBranchRunner, share_branch_state

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def _runner(kind, target):
    return ForkedBranchRunner(target) if kind == "process" else ThreadBranchRunner(target, 1)


@pytest.mark.parametrize("kind", ["process", "thread"])
def test_branch_B_updates_shared_tensors_the_caller_then_reads(kind):
    shared = torch.zeros(4)
    shared.share_memory_()

    def target(step, idx):
        shared[idx] += step  # the worker's write must land in the caller's tensor
        return shared.clone(), torch.tensor([float(os.getpid())])

    runner = _runner(kind, target)
    try:
        ran_A = []
        for step in (1.0, 2.0):
            job_A = lambda: ran_A.append(1) or "A"  # noqa: E731
            a, (values, pid) = runner.run(job_A, (step, torch.tensor([1, 3])))
            assert a == "A"
            assert torch.equal(values, shared)  # the result is what the caller sees too
        assert shared.tolist() == [0.0, 3.0, 0.0, 3.0] and len(ran_A) == 2
        assert (int(pid.item()) != os.getpid()) == (kind == "process")
    finally:
        runner.close()
    assert runner.closed


def test_worker_error_is_one_line_and_the_worker_keeps_serving():
    def target(fail):
        if fail:
            raise ValueError("bad batch")
        return torch.ones(2), torch.zeros(1)

    runner = ForkedBranchRunner(target)
    try:
        with pytest.raises(RuntimeError, match="branch B worker: ValueError: bad batch"):
            runner.run(lambda: None, (True,))
        _, (ones, _) = runner.run(lambda: None, (False,))
        assert ones.tolist() == [1.0, 1.0]
    finally:
        runner.close()


def test_error_in_branch_A_waits_for_branch_B_then_propagates():
    shared = torch.zeros(1)
    shared.share_memory_()

    def target(value):
        shared.fill_(value)
        return shared.clone(), shared.clone()

    def job_A():
        raise KeyboardInterrupt

    runner = ForkedBranchRunner(target)
    try:
        with pytest.raises(KeyboardInterrupt):
            runner.run(job_A, (5.0,))
        assert shared.item() == 5.0  # B's epoch finished before the interrupt surfaced
        _, (again, _) = runner.run(lambda: None, (6.0,))  # and its answer was consumed
        assert again.item() == 6.0
    finally:
        runner.close()


def test_a_dead_worker_is_a_clear_error_and_close_reaps_it():
    runner = ForkedBranchRunner(lambda: os._exit(3))
    pid = runner.pid
    with pytest.raises(RuntimeError, match="exited unexpectedly"):
        runner.run(lambda: None, ())
    runner.close()
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # already reaped: no zombie left behind
    with pytest.raises(RuntimeError, match="closed"):
        runner.run(lambda: None, ())


def test_share_branch_state_creates_adamw_initial_state_in_shared_memory():
    flat = torch.randn(10)
    params = [torch.nn.Parameter(flat[:6]), torch.nn.Parameter(flat[6:])]
    opt = torch.optim.AdamW(params, lr=1e-3, fused=True)
    share_branch_state(flat, opt)
    assert flat.is_shared() and params[0].is_shared()
    # the same structure and values AdamW creates lazily on its first step
    twin = [torch.nn.Parameter(p.detach().clone()) for p in params]
    ref = torch.optim.AdamW(twin, lr=1e-3, fused=True)
    for p, t in zip(params, twin, strict=True):
        p.grad = torch.ones_like(p)
        t.grad = torch.ones_like(t)
    opt.step()
    ref.step()
    for p, t in zip(params, twin, strict=True):
        assert torch.equal(p, t)
        mine, theirs = opt.state[p], ref.state[t]
        assert mine.keys() == theirs.keys()
        for k in theirs:
            assert torch.equal(mine[k], theirs[k]) and mine[k].dtype == theirs[k].dtype
            assert mine[k].is_shared()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split()[2] == "Z")


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux")
def test_a_busy_worker_dies_with_its_killed_parent():
    """SIGKILL on the trainer while the worker is inside an epoch (not reading the pipe, so it
    would not see EOF): the worker must not be left running."""
    script = textwrap.dedent(
        """
        import threading, time
        from tvae.branches import ForkedBranchRunner
        runner = ForkedBranchRunner(lambda: time.sleep(120))
        print(runner.pid, flush=True)
        runner.run(lambda: time.sleep(120), ())
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        worker = int(parent.stdout.readline())
        time.sleep(0.5)  # the worker is now sleeping inside its "epoch"
        assert _alive(worker)
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.time() + 10
        while _alive(worker) and time.time() < deadline:
            time.sleep(0.1)
        assert not _alive(worker)
    finally:
        parent.kill()
