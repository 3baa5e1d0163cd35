"""Keep the status the trainer gave its run when `mlflow run` launched it.

MLflow's launcher ends the run after its command exits, FINISHED on exit 0 and FAILED otherwise;
its test for "already ended" compares the status string with enum numbers, so it always
overwrites (a run the trainer ended KILLED on Ctrl-C or SIGTERM reads FAILED). A small detached
process waits for the launcher to exit, then puts the trainer's status back.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil

WAIT_SECONDS = 600  # a launcher still alive after this is left to itself


def launcher_pid() -> int | None:
    """The `mlflow run` process above this one, if any."""
    for proc in psutil.Process().parents():
        try:
            cmd = proc.cmdline()
        except psutil.Error:
            continue
        if any(os.path.basename(c).startswith("mlflow") for c in cmd[:3]) and "run" in cmd:
            return proc.pid
    return None


def restore_after_launcher(run_id: str, status: str) -> bool:
    """Start the detached process that restores `status` once the launcher is gone (a new
    process: the launcher writes after this one has exited). For a run `mlflow run` created;
    False when no launcher is found."""
    pid = launcher_pid()
    if pid is None:
        return False
    subprocess.Popen(
        [sys.executable, "-m", "mlflow_plugins.launcher", str(pid), run_id, status],
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return True


def _restore(pid: int, run_id: str, status: str) -> None:
    from mlflow import MlflowClient

    deadline = time.monotonic() + WAIT_SECONDS
    while psutil.pid_exists(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    client = MlflowClient()
    info = client.get_run(run_id).info
    if info.status != status:
        client.set_terminated(run_id, status, end_time=info.end_time)


if __name__ == "__main__":
    _restore(int(sys.argv[1]), sys.argv[2], sys.argv[3])
