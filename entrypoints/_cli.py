"""Click parameter types and failure handling shared by the train, analyze and promote CLIs.

MLproject passes every parameter as a string and an empty string means "not given", so the
types here turn "" into None (the caller's default) and reject anything else that is not valid.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, NoReturn

import click

from mlflow_plugins.analysis_writer import ERROR_TAG


class Blank(click.ParamType):
    """`inner` (default: any text), except that "" (what MLproject passes) means not given."""

    def __init__(self, inner: click.ParamType = click.STRING) -> None:
        self.inner = inner
        self.name = inner.name

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        if value is None or (isinstance(value, str) and value.strip() == ""):
            return None
        return self.inner.convert(value.strip() if isinstance(value, str) else value, param, ctx)


class OptionalBool(click.ParamType):
    """true/false/yes/no/1/0 (any case); "" means not given (None)."""

    name = "boolean"
    TRUE = {"true", "yes", "1", "on"}
    FALSE = {"false", "no", "0", "off"}

    def convert(self, value, param, ctx):
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


def fail_launcher_run(message: str, tag: str, run_id: str | None = None) -> None:
    """End `run_id` (default: the run `mlflow run` created, MLFLOW_RUN_ID) FAILED, with the
    reason in `tag`. A run that is not RUNNING (an existing run given with `mlflow run
    --run-id`) is left as it was."""
    run_id = run_id or os.environ.get("MLFLOW_RUN_ID")
    if not run_id:
        return
    try:
        from mlflow.tracking import MlflowClient

        client = MlflowClient()
        if client.get_run(run_id).info.status != "RUNNING":
            return
        client.set_tag(run_id, tag, message[:5000])
        client.set_terminated(run_id, "FAILED")
    except Exception as err:  # noqa: BLE001 - the store itself may be what is broken
        click.echo(f"error: could not mark run {run_id} FAILED: {err}", err=True)


def fail_own_run(message: str, run_id: str | None = None) -> None:
    """Mark the analyze run (ours, or the one `mlflow run` made) FAILED, reason in ERROR_TAG."""
    fail_launcher_run(message, ERROR_TAG, run_id)


class MarksRunFailed(click.Command):
    """A command whose bad parameters also end the `mlflow run` analyze run FAILED, with why."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as err:
            fail_own_run(err.format_message())
            raise


def exit_fast(command: click.Command, args: list[str] | None = None) -> NoReturn:
    """Run a click command as a program, then end the process without interpreter teardown.

    Why: finalising an interpreter that imported MLflow, pandas, scipy and matplotlib takes
    ~0.9 s, a third of a small `analyze`. Everything the command writes is synchronous; MLflow's
    async queue (if any) and logging are flushed before `os._exit`. Unhandled errors propagate
    (with their traceback) as usual.
    """
    try:
        command.main(args=args, standalone_mode=True)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    mlflow = sys.modules.get("mlflow")
    if mlflow is not None and hasattr(mlflow, "flush_async_logging"):
        mlflow.flush_async_logging()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
