"""The backing services of a team's tracking deployment, started for tests on 127.0.0.1:
PostgreSQL (the Debian `postgresql` package's binaries) in a temporary cluster with a password,
and an S3 endpoint (`moto` in server mode). `team_stack` puts `mlflow server` on top of them.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from mlflow_server import free_port

PG_USER = "tvae"
AWS_ACCESS_KEY_ID = "testing"  # moto accepts any key pair; the secret is random per stack
AWS_REGION = "us-east-1"


def postgres_bindir() -> Path | None:
    """Where initdb/postgres/pg_isready are: `pg_config --bindir`, else the newest
    /usr/lib/postgresql/<version>/bin (Debian keeps them off PATH)."""
    candidates = []
    if shutil.which("pg_config"):
        try:
            out = subprocess.run(
                ["pg_config", "--bindir"], capture_output=True, text=True, timeout=10
            ).stdout.strip()
            candidates.append(Path(out))
        except (OSError, subprocess.SubprocessError):
            pass
    by_version = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name or 0)
    )
    candidates += [Path(p) for p in reversed(by_version)]
    for folder in candidates:
        if all((folder / name).is_file() for name in ("initdb", "postgres", "pg_isready")):
            return folder
    return None


def postgres_os_user() -> str | None:
    """The OS user to run PostgreSQL as: `postgres` when we are root (initdb refuses root),
    else ourselves (None)."""
    return "postgres" if os.geteuid() == 0 else None


def postgres_driver_problem() -> str | None:
    """None when SQLAlchemy can load the driver that a plain `postgresql://` URL uses (psycopg
    for SQLAlchemy >= 2.1, psycopg2 before), else what to install."""
    from sqlalchemy.engine import make_url

    try:
        make_url("postgresql://").get_dialect().import_dbapi()
    except ImportError as err:
        return f"no PostgreSQL driver for postgresql:// URLs ({err}): pip install -e '.[test]'"
    return None


def stop_group(process: subprocess.Popen, first: int = signal.SIGTERM, wait_s: float = 15) -> None:
    """`first` to the process, then SIGKILL to its whole process group if it lingers."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(first)
        try:
            process.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)  # its children, and itself if still there
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)


def tail(path: Path, chars: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


@dataclass
class Postgres:
    """A running PostgreSQL cluster on 127.0.0.1 (password auth over TCP)."""

    port: int
    password: str
    process: subprocess.Popen
    log_path: Path

    def url(self, database: str) -> str:
        return f"postgresql://{PG_USER}:{self.password}@127.0.0.1:{self.port}/{database}"


def start_postgres(folder: Path, timeout_s: float = 60) -> Postgres:
    """initdb a cluster in folder (owned by the `postgres` OS user when we are root) and
    start its postmaster on a free port; its unix socket stays in folder too."""
    bindir = postgres_bindir()
    assert bindir is not None, "PostgreSQL server binaries not found"
    user = postgres_os_user()
    folder.mkdir(parents=True)
    password = f"pg-{secrets.token_hex(8)}"
    pwfile = folder / "pwfile"
    pwfile.write_text(password + "\n")
    if user:
        entry = pwd.getpwnam(user)
        for path in (folder, pwfile):
            os.chown(path, entry.pw_uid, entry.pw_gid)
    data = folder / "data"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "TZ": "UTC"}
    init = subprocess.run(
        [
            str(bindir / "initdb"), "-D", str(data), "-U", PG_USER, f"--pwfile={pwfile}",
            "--auth-host=scram-sha-256", "--auth-local=trust", "-E", "UTF8", "--locale=C",
            "--no-sync",
        ],
        user=user, cwd=folder, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    pwfile.unlink()
    if init.returncode != 0:
        raise RuntimeError(f"initdb failed:\n{init.stdout}\n{init.stderr}")
    port = free_port()
    log_path = folder / "postgres.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [
                str(bindir / "postgres"), "-D", str(data), "-h", "127.0.0.1", "-p", str(port),
                "-k", str(folder),
                # test data: no durability needed, and faster on a busy disk
                "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
            ],
            user=user, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    pg = Postgres(port=port, password=password, process=process, log_path=log_path)
    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"postgres exited early:\n{tail(log_path)}")
        ready = subprocess.run(
            [str(bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(port), "-t", "1"],
            capture_output=True,
            env=env,
        )
        if ready.returncode == 0:
            return pg
        if time.monotonic() > deadline:
            stop_group(process, signal.SIGINT)
            raise RuntimeError(f"postgres not ready after {timeout_s:.0f}s:\n{tail(log_path)}")
        time.sleep(0.1)


def create_databases(pg: Postgres, *names: str) -> None:
    """CREATE DATABASE each name, as the cluster's superuser over TCP with its password."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(pg.url("postgres"), isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            for name in names:
                conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    finally:
        engine.dispose()


@dataclass
class S3:
    """moto's S3 endpoint and the environment a process needs to reach it."""

    url: str
    process: subprocess.Popen
    log_path: Path
    secret_key: str

    @property
    def env(self) -> dict[str, str]:
        return {
            "MLFLOW_S3_ENDPOINT_URL": self.url,
            "AWS_ACCESS_KEY_ID": AWS_ACCESS_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": AWS_REGION,
        }

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.url,
            aws_access_key_id=AWS_ACCESS_KEY_ID,
            aws_secret_access_key=self.secret_key,
            region_name=AWS_REGION,
        )


def start_s3(folder: Path, timeout_s: float = 60) -> S3:
    """`moto_server` (as `python -m moto.server`) on a free port, in its own process group."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log_path = folder / "moto.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            cwd=folder,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return S3(f"http://127.0.0.1:{port}", process, log_path, f"s3-{secrets.token_hex(8)}")


def wait_s3(s3: S3, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if s3.process.poll() is not None:
            raise RuntimeError(f"moto_server exited early:\n{tail(s3.log_path)}")
        try:
            with urllib.request.urlopen(s3.url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"moto_server not answering after {timeout_s:.0f}s")
        time.sleep(0.1)
