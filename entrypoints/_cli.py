"""Click parameter types and the one error style shared by the CLIs.

MLproject passes every parameter as a string and an empty string means "not given", so the
types here turn "" into None (the caller's default) and reject anything else that is not valid.

Errors look the same everywhere: one line `error: <what is wrong>`, the last thing printed, and
exit 2 for bad input (1 when a valid request failed, 130 when interrupted). Under `mlflow run`
the run it made (MLFLOW_RUN_ID) is ended FAILED with `failure.reason` first, so the user's last
line before MLflow's own failure line is ours.
"""

from __future__ import annotations

import math
import os
import re
import sys
from typing import Any, NoReturn

import click

from tvae import contract as C

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_KILLED = 130

# the CLIs print a few summary lines; MLflow's tqdm bar per small artifact read buries them
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


class Blank(click.ParamType):
    """`inner` (default: any text), except that "" (what MLproject passes) means not given."""

    def __init__(self, inner: click.ParamType = click.STRING) -> None:
        self.inner = inner
        self.name = inner.name

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        if value is None or (isinstance(value, str) and value.strip() == ""):
            return None
        text = value.strip() if isinstance(value, str) else value
        for kind, read, what in (
            (click.IntRange, int, "an integer"),
            (click.FloatRange, float, "a number"),
        ):
            if isinstance(self.inner, kind):  # click would say "not a valid integer range"
                try:
                    read(text)
                except (TypeError, ValueError):
                    self.fail(f"{value!r} is not {what}", param, ctx)
        out = self.inner.convert(text, param, ctx)
        if isinstance(out, float) and math.isnan(out):  # passes every range check
            self.fail(f"{value} is not a number", param, ctx)
        return out


class OptionalBool(click.ParamType):
    """true/false/yes/no/1/0 (any case); "" means not given (None)."""

    name = "boolean"
    TRUE = {"true", "yes", "1", "on"}
    FALSE = {"false", "no", "0", "off"}

    def convert(self, value: Any, param: Any, ctx: Any) -> bool | None:
        if value is None or isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if not text:
            return None
        if text in self.TRUE:
            return True
        if text in self.FALSE:
            return False
        self.fail(f"'{value}' is not true or false", param, ctx)


BOOL = OptionalBool()


def under_mlflow_run() -> bool:
    """True when `mlflow run` started this process (it exports the run it made)."""
    return bool(os.environ.get("MLFLOW_RUN_ID"))


def name_launcher_run(client: Any, name: str) -> None:
    """Give the run `mlflow run` made for this command (random-named) a name saying what it
    did, as train and analyze name theirs."""
    from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME

    if run_id := os.environ.get("MLFLOW_RUN_ID"):
        client.set_tag(run_id, MLFLOW_RUN_NAME, name)


#: the running command's long options: under `mlflow run` the user gave them as `-P` params
_OPTIONS: set[str] = set()


def _remember_options(command: click.Command) -> None:
    _OPTIONS.update(o for p in command.params for o in p.opts if o.startswith("--"))


def as_given(message: str) -> str:
    """`message` naming the command's options as the user gave them: `--run-id` is
    `-P run_id` under `mlflow run` (MLproject's parameter names), else as is. An option the
    command lacks (click's "No such option '--num_epochs'") was a `-P` that `mlflow run`
    passed on word for word."""
    if not under_mlflow_run():
        return message
    message = re.sub(r"No such option '--([^'\s]+)'", r"No such option '-P \1'", message)
    return re.sub(
        r"--[a-z][a-z0-9-]*",
        lambda m: f"-P {m[0][2:].replace('-', '_')}" if m[0] in _OPTIONS else m[0],
        message,
    )


def option_hint(name: str, value: str) -> str:
    """How to pass option `name`: `-P name=value` under `mlflow run`, else `--name value`."""
    if under_mlflow_run():
        return f"-P {name}={value}"
    return f"--{name.replace('_', '-')} {value}"


class CommandFailed(click.ClickException):
    """A valid request that failed (store unreachable, analysis crashed): exit 1, not 2."""

    exit_code = EXIT_FAILED


def fail_launcher_run(message: str, tag: str = C.FAILURE_REASON, run_id: str | None = None) -> None:
    """End `run_id` (default: the run `mlflow run` created, MLFLOW_RUN_ID) FAILED, with the
    reason in `tag`. A run that is not RUNNING (an existing run given with `mlflow run
    --run-id`) is left as it was."""
    run_id = run_id or os.environ.get("MLFLOW_RUN_ID")
    if not run_id:
        return
    try:
        from mlflow.tracking import MlflowClient

        from mlflow_plugins.runs import fail_run

        fail_run(MlflowClient(), run_id, message, tag=tag)
    except Exception as err:  # noqa: BLE001 - the store itself may be what is broken
        click.echo(f"error: could not mark run {run_id} FAILED: {err}", err=True)


# What a tracking server with auth (MLflow's basic-auth app) asks for each refused request,
# by the REST endpoint it went to: (what the user tried, the permission that takes)
_NEEDS = (
    ("runs/create", "create a run in this experiment", "EDIT on the experiment"),
    ("experiments/create", "create an experiment", "the right to create experiments"),
    ("registered-models/alias", "move a model alias", "EDIT on the registered model"),
    ("model-versions/create", "register a model version", "EDIT on the registered model"),
    ("registered-models/create", "create a registered model", "the right to create models"),
    ("delete", "delete", "MANAGE"),
    ("mlflow-artifacts/", "upload or read artifacts", "EDIT on the experiment (READ to read)"),
    (
        r"runs/(log|set|update)|experiments/set|logged-models",
        "write to a run",
        "EDIT on its experiment",
    ),
)


def permission_denied(err: BaseException) -> str | None:
    """One line for a request the tracking server refused (HTTP 403, or 401 for credentials
    it did not accept), naming the user, what was refused and the permission it takes; None
    for any other error."""
    from mlflow.exceptions import MlflowException

    if not isinstance(err, MlflowException):
        return None
    if err.error_code not in ("PERMISSION_DENIED", "UNAUTHENTICATED", "CUSTOMER_UNAUTHORIZED"):
        return None
    import mlflow

    uri = mlflow.get_tracking_uri()
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    who = f"user '{user}'" if user else "a client without MLFLOW_TRACKING_USERNAME"
    if err.error_code != "PERMISSION_DENIED":
        return (
            f"tracking server {uri} did not accept the credentials of {who} (HTTP 401): "
            "check MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
        )
    found = re.search(r"endpoint (\S+)", str(err.message))
    endpoint = found.group(1) if found else "unknown endpoint"
    action, needs = "make this request", "READ on the experiment"
    for pattern, what, permission in _NEEDS:
        if re.search(pattern, endpoint):
            action, needs = what, permission
            break
    return (
        f"permission denied: {who} may not {action} on {uri} ({endpoint}); that needs "
        f"{needs}: ask an admin of the tracking server to grant it"
    )


def exit_with_error(message: str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    """Fail the launcher run with why, then print `error: <message>` (one line) and exit."""
    message = as_given(" ".join(message.split()))
    fail_launcher_run(message)
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def run_as_program(command: click.Command, prog_name: str, argv: list[str] | None = None) -> None:
    """A console-script entry: click's own errors become one `error:` line (exit 2) and a
    FAILED launcher run too; Ctrl-C before the command's own handling exits 130."""
    _remember_options(command)
    try:
        command.main(args=argv, prog_name=prog_name, standalone_mode=False)
    except click.exceptions.Exit as done:
        sys.exit(done.exit_code)
    except click.ClickException as err:
        exit_with_error(err.format_message(), err.exit_code)
    except click.exceptions.Abort:
        fail_launcher_run("aborted")
        sys.exit(EXIT_KILLED)


class MarksRunFailed(click.Command):
    """A command in the house error style: any click error (bad option or value, or a
    ClickException the command raises) is one `error:` line and exit 2 (CommandFailed: 1),
    and the `mlflow run` launcher run ends FAILED with `failure.reason`.

    `main(..., standalone_mode=False)` keeps click's own behaviour for callers that map errors
    themselves; the launcher run is still failed on bad parameters."""

    def main(  # type: ignore[override]
        self,
        args: list[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        _remember_options(self)
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, False, **extra)
        except click.ClickException as err:
            bad = not isinstance(err, CommandFailed)
            exit_with_error(err.format_message(), EXIT_BAD_INPUT if bad else err.exit_code)
        except click.exceptions.Abort:
            exit_with_error("aborted", EXIT_KILLED)
        sys.exit(code if isinstance(code, int) else 0)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as err:
            fail_launcher_run(as_given(" ".join(err.format_message().split())))
            raise
