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
import importlib.util
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mlflow_server import MlflowServer, launch_server, wait_healthy
from stack_services import (
    S3,
    Postgres,
    create_databases,
    postgres_bindir,
    postgres_os_user,
    start_postgres,
    start_s3,
    stop_group,
    tail,
    wait_s3,
)

BUCKET = "mlflow"
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


def missing_parts() -> str | None:
    """Why the stack cannot start here (one line), or None when it can."""
    if postgres_bindir() is None:
        return (
            "PostgreSQL server binaries not found (no initdb/postgres via pg_config or "
            "/usr/lib/postgresql/*/bin): apt-get install postgresql"
        )
    if postgres_os_user():
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
        return "\n".join(f"--- {name} ---\n{tail(path, chars)}" for name, path in parts)


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
        cleanup.callback(stop_group, s3.process)
        pg = start_postgres(root / "pg")
        cleanup.callback(stop_group, pg.process, signal.SIGINT)  # fast shutdown
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
