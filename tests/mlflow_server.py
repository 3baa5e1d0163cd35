"""Start and stop a real `mlflow server` on 127.0.0.1 for tests where the network path matters.

A real server exercises what an in-process SQLite store cannot: REST clients, proxied artifact
upload/download (`mlflow-artifacts:/`), and the React UI that a browser renders.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


@functools.cache
def migrated_sqlite_db() -> Path:
    """An empty MLflow SQLite DB with every migration applied, built once per process: a fresh
    store spends seconds migrating. Experiment 0 keeps its artifacts where a server with proxied
    artifacts puts them (`mlflow-artifacts:/0`)."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    folder = Path(tempfile.mkdtemp(prefix="mlflow-template-"))
    atexit.register(shutil.rmtree, folder, True)
    SqlAlchemyStore(f"sqlite:///{folder / 'mlflow.db'}", "mlflow-artifacts:/")
    return folder / "mlflow.db"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class MlflowServer:
    """A running server: its URL, its process and where its log goes."""

    url: str
    process: subprocess.Popen
    log_path: Path

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the server's log, for failure messages."""
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def _wait_healthy(server: MlflowServer, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"mlflow server exited early:\n{server.log_tail()}")
        try:
            with urllib.request.urlopen(f"{server.url}/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"mlflow server not healthy after {timeout_s:.0f}s:\n{server.log_tail()}")


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM the server's process group (its workers too), SIGKILL if it lingers."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def start_server(workdir: Path, port: int | None = None, timeout_s: float = 120.0) -> MlflowServer:
    """Start `mlflow server` (one worker, SQLite and proxied artifacts under workdir) in its own
    process group, on `port` (a free one if None); the same workdir and port again restart it
    on the same store, as a tracking server coming back after an outage."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if not (workdir / "server.db").exists():
        shutil.copy(migrated_sqlite_db(), workdir / "server.db")
    server = launch_server(
        workdir,
        backend_store_uri=f"sqlite:///{workdir / 'server.db'}",
        artifacts_destination=str(workdir / "artifacts"),
        port=port,
    )
    wait_healthy(server, timeout_s)
    return server


def launch_server(
    workdir: Path,
    *,
    backend_store_uri: str,
    artifacts_destination: str,
    port: int | None = None,
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    log_name: str = "mlflow-server.log",
) -> MlflowServer:
    """Start `mlflow server` (one worker, proxied artifacts) on any backend store and artifact
    destination (a PostgreSQL URI and `s3://bucket`, say) in its own process group, on `port`
    (a free one if None), without waiting for it: `wait_healthy` does. `extra_args` go on the
    command line (`--app-name basic-auth`), `env` over this process's environment (the S3
    endpoint and credentials that only the server has), the log to workdir/`log_name`."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    log_path = workdir / log_name
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", backend_store_uri,
        "--artifacts-destination", artifacts_destination,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--workers", "1",
        *extra_args,
    ]  # fmt: skip
    full_env = {
        **os.environ,
        "MLFLOW_DISABLE_TELEMETRY": "true",
        # no job runner (MLflow's huey consumer for GenAI jobs): its processes would start
        # beside the server's and slow its start on a busy box; no test uses server-side jobs
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        **(env or {}),
    }
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            cmd,
            cwd=workdir,
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return MlflowServer(url=f"http://127.0.0.1:{port}", process=process, log_path=log_path)


def wait_healthy(server: MlflowServer, timeout_s: float = 120.0) -> None:
    """Wait until the server answers /health; kill it (its process group) and raise with the
    end of its log if it exits or does not answer within timeout_s."""
    try:
        _wait_healthy(server, timeout_s)
    except BaseException:
        kill_server(server)
        raise


def kill_server(server: MlflowServer) -> None:
    """SIGKILL the server and its workers (its process group), as a crash or outage would,
    and wait until its port takes connections no more."""
    try:
        os.killpg(server.process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    server.process.wait(timeout=10)
    port = int(server.url.rsplit(":", 1)[1])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            if sock.connect_ex(("127.0.0.1", port)) != 0:
                return
        time.sleep(0.1)


@contextmanager
def mlflow_server(workdir: Path, timeout_s: float = 120.0) -> Iterator[MlflowServer]:
    """Run `mlflow server` (one worker, temp SQLite, temp proxied artifacts) for the block."""
    server = start_server(workdir, timeout_s=timeout_s)
    try:
        yield server
    finally:
        _stop(server.process)
