"""Trainer failures and interrupts: each ends the run cleanly with its state on disk.

A logger that fails at the start, Ctrl-C while an epoch is committed or between epochs, a
non-finite weight, and an AMP mode the device cannot run. Smoke config on one CPU thread.
"""

from __future__ import annotations

import signal

import pytest
import torch
from test_trainer import Recorder, smoke

from tvae.branches import ThreadBranchRunner
from tvae.checkpoint import read_checkpoint
from tvae.train import Trainer


def test_a_logger_error_at_start_still_stops_the_worker_thread(tmp_path):
    class Broken(Recorder):
        def on_train_start(self, info):
            raise OSError("store unreachable")

    trainer = Trainer(smoke(**{"train.threads": 2}), tmp_path, Broken(), echo=False)
    with pytest.raises(OSError, match="store unreachable"):
        trainer.fit()
    assert isinstance(trainer.runner, ThreadBranchRunner) and trainer.runner.closed


def test_ctrl_c_while_an_epoch_is_committed_waits_for_the_whole_epoch(tmp_path):
    """A SIGINT between writing best.pt and reporting the epoch's metrics is held until the
    epoch is reported: the final last.pt is never ahead of the reported steps."""

    class InterruptAtCheckpoint(Recorder):
        def on_checkpoint(self, path, epoch, kind):
            super().on_checkpoint(path, epoch, kind)
            if epoch == 2 and len(self.kind("ckpt")) == 2:  # once, at best.pt of epoch 2
                signal.raise_signal(signal.SIGINT)

    rec = InterruptAtCheckpoint()
    result = Trainer(smoke(), tmp_path, rec, echo=False).fit()
    assert result.status == "KILLED" and result.last_epoch == 2
    assert [e[1] for e in rec.kind("epoch")] == [1, 2]
    assert rec.kind("line")[-1][1].startswith("epoch 2/")
    assert read_checkpoint(tmp_path / "checkpoints/last.pt")["epoch"] == 2
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_injected_nan_fails_cleanly_keeping_last_good_state(tmp_path):
    holder: dict = {}

    def poison(epoch):
        if epoch == 1:
            with torch.no_grad():
                holder["t"].model.decoder[0].weight.fill_(float("nan"))

    rec = Recorder(on_epoch=poison)
    holder["t"] = Trainer(smoke(**{"train.checkpoint_every": 10}), tmp_path, rec, echo=False)
    result = holder["t"].fit()
    assert result.status == "FAILED" and "non-finite" in result.reason
    assert result.last_epoch == 1 and [e[1] for e in rec.kind("epoch")] == [1]
    assert any(e[1] == "divergence" for e in rec.kind("event"))
    ckpt = read_checkpoint(result.last_checkpoint)
    # the saved state is the last good epoch (before the poison took effect)
    assert ckpt["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in ckpt["model"].values())
    assert rec.kind("end")[0][1] == "FAILED"


def test_keyboard_interrupt_saves_last_and_reports_killed(tmp_path):
    def interrupt(epoch):
        raise KeyboardInterrupt

    rec = Recorder(on_epoch=interrupt)
    result = Trainer(smoke(), tmp_path, rec, echo=False).fit()
    assert result.status == "KILLED" and result.last_epoch == 1
    assert read_checkpoint(tmp_path / "checkpoints/last.pt")["epoch"] == 1


def test_fp16_on_cpu_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="fp16"):
        Trainer(smoke(**{"train.amp": "fp16"}), tmp_path)
