"""The tracking deployment a team runs, started for tests from real parts on 127.0.0.1:

- PostgreSQL (the Debian `postgresql` package's binaries) in a temporary cluster with a
  password, one database for MLflow and one for Optuna studies;
- an S3 endpoint: `moto` in server mode, with one bucket;
- `mlflow server` on that PostgreSQL database, artifacts proxied (`--serve-artifacts`) into
  the bucket: only the server has the S3 endpoint and credentials, clients get
  `MLFLOW_TRACKING_URI` and nothing else;
- optionally a second `mlflow server --app-name basic-auth` on the same database and bucket
  (MLflow's built-in auth; its users in a SQLite file), as a team turns auth on.

Every process runs in its own process group and is stopped when the block ends, also when
starting a later part fails. `missing_parts()` names what this machine lacks to start it.
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mlflow_server import MlflowServer, free_port, launch_server, wait_healthy

BUCKET = "mlflow"
PG_USER = "tvae"
AWS_ACCESS_KEY_ID = "testing"  # moto accepts any key pair; the secret is random per stack
AWS_REGION = "us-east-1"
CLIENT_SECRETS_ENV = (  # what a client must not need: the server alone talks to S3
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION",
    "AWS_PROFILE",
    "MLFLOW_S3_ENDPOINT_URL",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_REGISTRY_URI",
    "MLFLOW_EXPERIMENT_NAME",
    "MLFLOW_EXPERIMENT_ID",
    "MLFLOW_RUN_ID",
)


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


def _postgres_os_user() -> str | None:
    """The OS user to run PostgreSQL as: `postgres` when we are root (initdb refuses root),
    else ourselves (None)."""
    return "postgres" if os.geteuid() == 0 else None


def missing_parts() -> str | None:
    """Why the stack cannot start here (one line), or None when it can."""
    if postgres_bindir() is None:
        return (
            "PostgreSQL server binaries not found (no initdb/postgres via pg_config or "
            "/usr/lib/postgresql/*/bin): apt-get install postgresql"
        )
    if _postgres_os_user():
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root but there is no `postgres` OS user to run PostgreSQL as"
    for module, package in (("moto.server", "moto[server]"), ("boto3", "boto3")):
        try:
            found = importlib.util.find_spec(module) is not None
        except ImportError:
            found = False
        if not found:
            return f"{package} is not installed (pip install -e '.[test]')"
    return None


def postgres_driver_problem() -> str | None:
    """None when SQLAlchemy can load the driver that a plain `postgresql://` URL uses (psycopg
    for SQLAlchemy >= 2.1, psycopg2 before), else what to install."""
    from sqlalchemy.engine import make_url

    try:
        make_url("postgresql://").get_dialect().import_dbapi()
    except ImportError as err:
        return f"no PostgreSQL driver for postgresql:// URLs ({err}): pip install -e '.[test]'"
    return None


def _stop_group(process: subprocess.Popen, first: int = signal.SIGTERM, wait_s: float = 15) -> None:
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


def _stop_servers(servers: list[MlflowServer], grace_s: float = 3) -> None:
    """SIGTERM each server's process group, SIGKILL them after grace_s: uvicorn's graceful
    shutdown waits for the keep-alive connections of clients still alive (this test process's
    MLflow clients) and would otherwise sit out a long timeout."""
    for server in servers:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for server in servers:
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.process.wait(timeout=10)


def _tail(path: Path, chars: int = 2000) -> str:
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
    assert bindir is not None, missing_parts()
    user = _postgres_os_user()
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
            raise RuntimeError(f"postgres exited early:\n{_tail(log_path)}")
        ready = subprocess.run(
            [str(bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(port), "-t", "1"],
            capture_output=True,
            env=env,
        )
        if ready.returncode == 0:
            return pg
        if time.monotonic() > deadline:
            _stop_group(process, signal.SIGINT)
            raise RuntimeError(f"postgres not ready after {timeout_s:.0f}s:\n{_tail(log_path)}")
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
            raise RuntimeError(f"moto_server exited early:\n{_tail(s3.log_path)}")
        try:
            with urllib.request.urlopen(s3.url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"moto_server not answering after {timeout_s:.0f}s")
        time.sleep(0.1)


@dataclass
class AuthServer:
    """`mlflow server --app-name basic-auth` and its admin's credentials."""

    server: MlflowServer
    admin_username: str
    admin_password: str
    ready: bool = False

    @property
    def url(self) -> str:
        return self.server.url

    def wait(self, timeout_s: float = 120) -> AuthServer:
        if not self.ready:
            wait_healthy(self.server, timeout_s)
            self.ready = True
        return self


@dataclass
class TeamStack:
    root: Path
    postgres: Postgres
    s3: S3
    server: MlflowServer
    auth: AuthServer | None = None
    secrets: list[str] = field(default_factory=list)  # every password/key the stack holds

    @property
    def tracking_uri(self) -> str:
        return self.server.url

    def optuna_url(self) -> str:
        return self.postgres.url("optuna")

    def client_env(self, tracking_uri: str | None = None, **extra: str) -> dict[str, str]:
        """This process's environment as a user's shell would have it: MLFLOW_TRACKING_URI
        (the plain server by default) and no S3 endpoint or cloud credentials, plus `extra`."""
        env = {k: v for k, v in os.environ.items() if k not in CLIENT_SECRETS_ENV}
        env["MLFLOW_TRACKING_URI"] = tracking_uri or self.tracking_uri
        env["MLFLOW_DISABLE_TELEMETRY"] = "true"
        env.update(extra)
        return env

    def bucket_keys(self) -> list[str]:
        """Every object key in the bucket, as S3 lists them."""
        pages = self.s3.client().get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
        return [obj["Key"] for page in pages for obj in page.get("Contents", [])]

    def bucket_object(self, key: str) -> bytes:
        return self.s3.client().get_object(Bucket=BUCKET, Key=key)["Body"].read()

    def logs(self, chars: int = 1500) -> str:
        """The end of every part's log, for failure messages."""
        parts = [("postgres", self.postgres.log_path), ("moto", self.s3.log_path)]
        parts.append(("mlflow server", self.server.log_path))
        if self.auth:
            parts.append(("mlflow server (basic-auth)", self.auth.server.log_path))
        return "\n".join(f"--- {name} ---\n{_tail(path, chars)}" for name, path in parts)


def _auth_config(folder: Path, admin_password: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "basic_auth.ini"
    path.write_text(
        "[mlflow]\n"
        "default_permission = NO_PERMISSIONS\n"
        f"database_uri = sqlite:///{folder / 'basic_auth.db'}\n"
        "admin_username = admin\n"
        f"admin_password = {admin_password}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        # PBKDF2 on every request otherwise: a REST history read pays it per page
        "auth_cache_ttl_seconds = 60\n"
    )
    return path


@contextlib.contextmanager
def team_stack(with_auth: bool = True, timeout_s: float = 180) -> Iterator[TeamStack]:
    """PostgreSQL + moto S3 + `mlflow server` (and, with_auth, a basic-auth server on the
    same store, started in the background: `stack.auth.wait()` before using it), stopped and
    removed when the block ends."""
    root = Path(tempfile.mkdtemp(prefix="tvae-team-stack-"))
    root.chmod(0o711)  # the postgres OS user must reach its folder inside
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, root, ignore_errors=True)
        s3 = start_s3(root / "s3")
        cleanup.callback(_stop_group, s3.process)
        pg = start_postgres(root / "pg")
        cleanup.callback(_stop_group, pg.process, signal.SIGINT)  # fast shutdown
        create_databases(pg, "mlflow", "optuna")
        wait_s3(s3)
        s3.client().create_bucket(Bucket=BUCKET)
        backend = pg.url("mlflow")
        server = launch_server(
            root / "server",
            backend_store_uri=backend,
            artifacts_destination=f"s3://{BUCKET}",
            extra_args=["--serve-artifacts"],
            env=s3.env,
        )
        servers = [server]  # stopped together, the auth server too once started
        cleanup.callback(_stop_servers, servers)
        wait_healthy(server, timeout_s)  # it creates MLflow's tables in the empty database
        stack = TeamStack(root, pg, s3, server, secrets=[pg.password, s3.secret_key])
        if with_auth:
            admin_password = f"admin-{secrets.token_hex(8)}"
            auth_env = {
                **s3.env,
                "MLFLOW_AUTH_CONFIG_PATH": str(_auth_config(root / "auth", admin_password)),
                "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
            }
            auth_server = launch_server(
                root / "auth",
                backend_store_uri=backend,
                artifacts_destination=f"s3://{BUCKET}",
                extra_args=["--serve-artifacts", "--app-name", "basic-auth"],
                env=auth_env,
            )
            servers.append(auth_server)
            stack.auth = AuthServer(auth_server, "admin", admin_password)
            stack.secrets += [admin_password, auth_env["MLFLOW_FLASK_SERVER_SECRET_KEY"]]
        yield stack
