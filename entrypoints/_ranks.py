"""Data-parallel training from the train entry point: launch the ranks (`--nproc N`), join
the group torchrun describes, and train on the ranks other than 0, which log nothing (rank 0
runs the normal entry point with the group; see tvae/distributed.py)."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

from entrypoints._cli import EXIT_FAILED, EXIT_KILLED
from tvae.config import config_from_dict


def join_group() -> Any:
    """This process's DataParallel when torchrun started it with WORLD_SIZE > 1, else None."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from tvae.distributed import DataParallel

    return DataParallel.from_env()


def launch_ranks(nproc: int, device: str) -> int:
    """Run this command as `nproc` ranks on this machine (torch's elastic launcher, what
    torchrun runs, here in-process so that its exit is ours), with NCCL when `device` (the
    config's `train.device`) is a GPU and gloo otherwise, and return rank 0's exit code:
    ranks stop together at an epoch boundary on SIGTERM or Ctrl-C."""
    import logging
    import uuid

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    from tvae.device import resolve_device
    from tvae.distributed import BACKEND_ENV, backend_for

    own, skip = [], False  # the same args without --nproc
    for arg in sys.argv[1:]:
        if not skip and not arg.startswith("--nproc"):
            own.append(arg)
        skip = arg == "--nproc"
    cores = max(1, (os.cpu_count() or 1) // nproc)
    os.environ.setdefault("OMP_NUM_THREADS", str(cores))  # ranks share this machine's cores
    os.environ[BACKEND_ENV] = backend_for(resolve_device(device))
    logging.getLogger("torch.distributed.elastic").setLevel(logging.ERROR)
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=f"tvae-{uuid.uuid4().hex[:8]}",
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        max_restarts=0,
    )
    try:
        elastic_launch(config, sys.executable)("-m", "entrypoints.train", *own)
    except ChildFailedError as err:
        first = err.failures.get(0) or next(iter(err.failures.values()))
        return first.exitcode if first.exitcode > 0 else EXIT_FAILED
    except Exception as err:
        if by_signal(err, SignalException):  # the ranks were stopped and have ended
            return EXIT_KILLED
        raise
    return 0


def by_signal(err: BaseException | None, signal_error: type[BaseException]) -> bool:
    """Whether a stop signal caused `err`: torch's launcher raises `signal_error` from its
    handler, and when that lands inside its own bookkeeping it surfaces as another error
    (an UnboundLocalError in its metrics wrapper) raised while handling the signal."""
    while err is not None:
        if isinstance(err, signal_error):
            return True
        err = err.__cause__ or err.__context__
    return False


def train_other_rank(parallel: Any) -> int:
    """A rank other than 0: trains rank 0's config (and checkpoint) in lockstep, in a
    temporary folder, and logs nothing; SIGTERM or Ctrl-C stop it with the others."""
    import tempfile

    from tvae.callbacks import TrainLogger
    from tvae.train import Trainer

    data, checkpoint = parallel.broadcast(None)
    config = config_from_dict(data, source="rank 0's config")
    with tempfile.TemporaryDirectory(prefix="tvae-rank-") as tmp:
        resume = None
        if checkpoint is not None:
            resume = Path(tmp) / "resume.pt"
            resume.write_bytes(checkpoint)
        trainer = Trainer(config, Path(tmp), TrainLogger(), echo=False, parallel=parallel)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: trainer.request_stop())
        result = trainer.fit(resume_checkpoint=resume)
    parallel.close()
    # how the training ended is rank 0's to say (a run it stops FINISHED ends KILLED here)
    return EXIT_FAILED if result.status == "FAILED" else 0
