"""Data-parallel training with 2 gloo processes on the CPU (torch's elastic launcher, as
torchrun): one MLflow run logged by rank 0 only, the same numbers as one process training the
same global batches, and SIGTERM stopping every rank at one epoch boundary (KILLED), resumable
with the ranks again.

Cost: ~1 min on 2 cores (three short multi-process trainings, two in-process references).
"""

from __future__ import annotations

import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import yaml
from contract import CPU_CONTRACT_KEYS
from mlflow import MlflowClient

from entrypoints._ranks import by_signal
from tvae import contract as C
from tvae.callbacks import TrainLogger
from tvae.config import TVAEConfig, load_config
from tvae.distributed import backend_for
from tvae.train import Trainer

REPO = Path(__file__).resolve().parents[1]
TIMING = {C.SAMPLES_PER_SEC, C.EPOCH_SECONDS}

pytestmark = pytest.mark.slow


class Recorder(TrainLogger):
    def __init__(self) -> None:
        self.epochs: dict[int, dict[str, float]] = {}

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        self.epochs[epoch] = dict(metrics)


def tiny(tmp_path: Path, epochs: int) -> Path:
    """A small model over batches of 3000 (7 per epoch, the last one uneven: 1683 rows, 842
    and 841 per rank), a checkpoint every epoch."""
    data = yaml.safe_load((REPO / "configs" / "smoke.yaml").read_text())
    data["name"] = "ddp"
    data["model"].update(encoder_hidden=[32], decoder_hidden=[16], latent_dim=4)
    data["train"].update(epochs=epochs, batch_size=3000, checkpoint_every=1, device="cpu")
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def one_process(
    config: TVAEConfig, folder: Path, resume: Path | None = None, stop_at: int | None = None
) -> dict[int, dict[str, float]]:
    """The plain trainer, one process, no MLflow (from `resume`, stopped after `stop_at`):
    the reference."""
    recorder = Recorder()
    trainer = Trainer(config, folder, recorder, echo=False)
    if stop_at is not None:
        recorder.on_epoch_end = lambda epoch, metrics: (
            Recorder.on_epoch_end(recorder, epoch, metrics),
            epoch == stop_at and trainer.request_stop(),
        )
    trainer.fit(resume_checkpoint=resume)
    return recorder.epochs


def history(client: MlflowClient, run_id: str, key: str) -> dict[int, float]:
    return {m.step: m.value for m in client.get_metric_history(run_id, key)}


def assert_same_numbers(client: MlflowClient, run_id: str, reference: dict) -> None:
    """Every logged per-epoch metric of the run equals the reference within fp tolerance."""
    for key in sorted(reference[1]):
        if key in TIMING:
            continue
        logged = history(client, run_id, key)
        assert sorted(logged) == sorted(reference), (key, sorted(logged))
        for epoch, expected in reference.items():
            assert math.isclose(logged[epoch], expected[key], rel_tol=1e-4, abs_tol=1e-6), (
                key,
                epoch,
                logged[epoch],
                expected[key],
            )


def test_mlflow_run_nproc_2_is_one_run_with_the_numbers_of_one_process(store):
    root, env, client = store
    cfg = tiny(root, 3)
    cmd = [sys.executable, "-m", "mlflow", "run", ".", "-e", "train", "--env-manager", "local"]
    cmd += ["-P", f"config={cfg}", "-P", "nproc=2"]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    (run,) = runs  # rank 1 logged nothing, not even a run
    assert run.info.status == "FINISHED"
    assert run.data.params[C.DIST_WORLD_SIZE] == "2" and run.data.params[C.DIST_BACKEND] == "gloo"
    assert set(CPU_CONTRACT_KEYS) <= set(run.data.metrics)
    assert run.data.tags[C.MODEL_ID]
    reference = one_process(load_config(str(cfg)), root / "reference")
    assert_same_numbers(client, run.info.run_id, reference)


def test_sigterm_stops_every_rank_at_one_epoch_and_the_ranks_resume(store):
    root, env, client = store
    cfg = tiny(root, 200)
    train = [sys.executable, "-m", "entrypoints.train", "--nproc", "2"]
    proc = subprocess.Popen(
        [*train, "--config", str(cfg)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 180
        run_id = None
        while time.monotonic() < deadline and proc.poll() is None:
            runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
            if runs and len(history(client, runs[0].info.run_id, C.TRAIN_LOSS)) >= 2:
                run_id = runs[0].info.run_id
                break
            time.sleep(0.3)
        assert run_id, "no epoch logged in time"
        proc.send_signal(signal.SIGTERM)  # to the launcher, which passes it to every rank
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out[-3000:]
    assert f"run {run_id} KILLED" in out
    run = client.get_run(run_id)
    assert run.info.status == "KILLED"
    steps = sorted(history(client, run_id, C.TRAIN_LOSS))
    last = steps[-1]
    assert steps == list(range(1, last + 1)) and last < 200
    ckpt = Path(client.download_artifacts(run_id, "checkpoints/last.pt", str(root)))
    assert torch.load(ckpt, weights_only=True)["epoch"] == last
    before = one_process(load_config(str(cfg)), root / "before", stop_at=last)
    assert_same_numbers(client, run_id, before)  # every rank trained the same epochs

    resumed = subprocess.run(
        [*train, "--resume-from", run_id, "--epochs", str(last + 2)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags[C.RESUMED_FROM_EPOCH] == str(last)
    config = load_config(str(cfg), {"train.epochs": last + 2})
    after = one_process(config, root / "after", resume=ckpt)
    assert_same_numbers(client, run_id, {**before, **after})


def test_the_backend_follows_the_trainings_device_not_the_machine():
    """A CPU training uses gloo even on a GPU machine; a GPU training NCCL where torch has it."""
    assert backend_for(torch.device("cpu")) == "gloo"
    cuda = backend_for(torch.device("cuda", 0))
    assert cuda == ("nccl" if dist.is_nccl_available() else "gloo")


def test_a_stop_signal_that_torchs_launcher_turns_into_another_error_still_reads_as_a_stop():
    """The launcher's handler raises SignalException wherever the main thread is; inside its
    metrics wrapper that surfaces as an UnboundLocalError raised while handling it."""
    from torch.distributed.elastic.multiprocessing.api import SignalException

    def wrapped_error(first: BaseException, then: BaseException) -> BaseException:
        try:
            try:
                raise first
            except type(first):
                raise then  # noqa: B904 (the launcher's own error is raised like this)
        except type(then) as err:
            return err

    stop = SignalException("got signal: 15", sigval=signal.SIGTERM)
    assert by_signal(stop, SignalException)
    assert by_signal(wrapped_error(stop, UnboundLocalError("start")), SignalException)
    assert not by_signal(wrapped_error(ValueError("x"), UnboundLocalError("y")), SignalException)
    assert not by_signal(UnboundLocalError("start"), SignalException)
