"""Click parameter types and failure handling shared by the analyze and promote CLIs.

MLproject passes every parameter as a string and an empty string means "not given", so the
types here turn "" into None (the caller's default) and reject anything else that is not valid.
"""

from __future__ import annotations

import os

import click

ERROR_TAG = "analysis.error"
# tvae.analysis.TIER_ORDER, repeated so the CLIs start without importing the analysis stack
TIERS = ["None", "Minimal", "Good", "Excellent", "Exceptional"]


class OptionalStr(click.ParamType):
    """A string where "" means not given (None); optionally restricted to `choices`."""

    name = "text"

    def __init__(self, choices: list[str] | None = None) -> None:
        self.choices = choices

    def convert(self, value, param, ctx):
        if value is None:
            return None
        text = str(value).strip()
        if not text:
            return None
        if self.choices is not None and text not in self.choices:
            self.fail(f"'{text}' is not one of {', '.join(self.choices)}", param, ctx)
        return text


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


def fail_own_run(message: str, run_id: str | None = None) -> None:
    """Mark the analyze run (ours, or the one `mlflow run` made: MLFLOW_RUN_ID) FAILED + reason."""
    run_id = run_id or os.environ.get("MLFLOW_RUN_ID")
    if not run_id:
        return
    try:
        from mlflow.tracking import MlflowClient

        client = MlflowClient()
        client.set_tag(run_id, ERROR_TAG, message[:5000])
        client.set_terminated(run_id, "FAILED")
    except Exception:  # noqa: BLE001 - reporting the failure must not hide the original error
        pass


class MarksRunFailed(click.Command):
    """A command whose bad parameters also end the `mlflow run` analyze run FAILED, with why."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as err:
            fail_own_run(err.format_message())
            raise
