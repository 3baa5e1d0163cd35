"""tvae.branches runners: both branches' results, B on its own thread, errors, clean-up."""

from __future__ import annotations

import threading

import pytest
import torch

from tvae.branches import SerialRunner, ThreadBranchRunner


@pytest.mark.parametrize("runner_type", [SerialRunner, ThreadBranchRunner])
def test_run_returns_both_results_and_B_runs_on_the_worker_thread(runner_type):
    runner = runner_type() if runner_type is SerialRunner else runner_type(2)
    caller = threading.get_ident()
    try:
        for step in (1, 2):
            a, b = runner.run(lambda: ("A", threading.get_ident()), lambda s=step: s)
            assert a == ("A", caller) and b == step
        _, worker = runner.run(lambda: None, threading.get_ident)
        assert (worker != caller) == (runner_type is ThreadBranchRunner)
    finally:
        runner.close()
    assert runner.closed


def test_the_two_branches_overlap_in_time():
    """B's job starts before A's ends: A waits here for B to signal that it is running."""
    started_B = threading.Event()
    runner = ThreadBranchRunner(2)
    try:
        seen, _ = runner.run(lambda: started_B.wait(timeout=10), started_B.set)
    finally:
        runner.close()
    assert seen


def test_an_error_in_A_waits_for_B_then_propagates():
    done = torch.zeros(1)
    release = threading.Event()

    def job_B():
        release.wait(timeout=10)
        done.fill_(1.0)

    def job_A():
        release.set()
        raise KeyboardInterrupt

    runner = ThreadBranchRunner(2)
    try:
        with pytest.raises(KeyboardInterrupt):
            runner.run(job_A, job_B)
        assert done.item() == 1.0  # B's epoch finished before the interrupt surfaced
        assert runner.run(lambda: "A", lambda: "B") == ("A", "B")  # and it still serves
    finally:
        runner.close()


def test_an_error_in_B_reaches_the_caller():
    def job_B():
        raise ValueError("bad batch")

    runner = ThreadBranchRunner(2)
    try:
        with pytest.raises(ValueError, match="bad batch"):
            runner.run(lambda: None, job_B)
    finally:
        runner.close()


def test_threads_are_split_per_branch_and_whole_for_evaluation():
    before = torch.get_num_threads()
    runner = ThreadBranchRunner(2)
    try:
        _, worker_threads = runner.run(lambda: None, torch.get_num_threads)
        assert worker_threads == 1 and torch.get_num_threads() == 1
        with runner.all_threads():
            assert torch.get_num_threads() == 2
        assert torch.get_num_threads() == 1
    finally:
        runner.close()
    assert torch.get_num_threads() == 2  # the caller has both threads again
    torch.set_num_threads(before)
