"""Check everything a user gives `analyze` against the tracking store, before anything is written.

Each check raises AnalyzeInputError with one line that names the option at fault, so callers
(the CLI, or any Python caller) can refuse bad input without leaving a half-written analysis:
no analyze run, no tags, no artifacts, no registry change.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mlflow_plugins.analysis_writer import tool_run
from mlflow_plugins.registry import model_name_problem
from tvae.analysis.tiers import TIER_ORDER

if TYPE_CHECKING:
    from mlflow.entities import Run

    from tvae.analysis import Roles, Thresholds


class AnalyzeInputError(ValueError):
    """Bad input to `analyze`; the message is one line naming the option at fault."""


@dataclass(frozen=True)
class AnalyzeInputs:
    """Validated inputs: the run to analyse and how to analyse and register it."""

    run: Run
    roles: Roles
    thresholds: Thresholds | None
    metric_map: str
    config: str
    register: bool
    model_name: str
    min_tier: str
    guessed: str | None = None  # the metric_map read off the run's key names, when it was


def mapped_keys(metric_map: str) -> dict[str, str]:
    """{role: key} the user mapped explicitly (controls and empty keys left out).

    Syntax is checked by `Roles.from_metric_map`; this lists what must exist in the run.
    """
    pairs: dict[str, str] = {}
    for item in filter(None, (p.strip() for p in metric_map.split(","))):
        role, _, key = (s.strip() for s in item.partition("="))
        if role != "controls" and key:
            pairs[role] = key
    return pairs


def _roles(metric_map: str) -> Roles:
    from tvae.analysis import Roles

    try:
        return Roles.from_metric_map(metric_map) if metric_map else Roles()
    except ValueError as err:
        raise AnalyzeInputError(f"--metric-map: {err}") from None


def _guessed(run: Run) -> tuple[Roles, str | None]:
    """Without a metric_map, a run that logs none of our generalisation keys (another
    trainer's) is read by its key names; one where none names a held-out accuracy or loss is
    refused, since its verdict would be "no grokking" without having looked."""
    from tvae.analysis.guess_roles import roles_for
    from tvae.contract import SYSTEM_PREFIX

    keys = sorted(run.data.metrics)
    found = roles_for(keys)
    if found is None:
        shown = ", ".join([k for k in keys if not k.startswith(SYSTEM_PREFIX)][:8])
        raise AnalyzeInputError(
            f"--metric-map: run '{run.info.run_id}' logs none of TernaryVAE's keys and no key "
            f"named like a held-out accuracy or loss ({shown}); map its keys with "
            'metric_map="accuracy=<key>,loss=<key>"'
        )
    return found


def _thresholds(config: str) -> Thresholds | None:
    from tvae.analysis import load_thresholds

    if not config:
        return None
    if not Path(config).is_file():
        raise AnalyzeInputError(f"--config: thresholds file not found: {config}")
    try:
        return load_thresholds(config)
    except ValueError as err:
        raise AnalyzeInputError(f"--config: {err}") from None


def named_run(
    client: MlflowClient, run_id: str, own_run_id: str | None, error: type[Exception]
) -> Run:
    """The training run `--run-id` names, for analyze and watch; else ``error`` with one line:
    the caller's own run, no such run, a deleted one, or one of this tool's own runs."""
    if run_id == own_run_id:
        raise error("--run-id names this command's own run")
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise error(f"--run-id: no run '{run_id}' in {client.tracking_uri}") from None
    if run.info.lifecycle_stage == "deleted":
        raise error(f"--run-id: run '{run_id}' is deleted")
    kind = tool_run(run.data.tags)
    if kind:
        raise error(f"--run-id: run '{run_id}' is {kind}, not a training run")
    return run


def _training_run(client: MlflowClient, run_id: str, analyze_run_id: str | None) -> Run:
    """The run to analyse: named, a training run of this store, and with metrics."""
    if not run_id:
        raise AnalyzeInputError("--run-id is required")
    run = named_run(client, run_id, analyze_run_id, AnalyzeInputError)
    if not run.data.metrics:
        raise AnalyzeInputError(f"--run-id: run '{run_id}' has no metrics to analyse")
    return run


def check_inputs(
    client: MlflowClient,
    run_id: str,
    *,
    metric_map: str = "",
    config: str = "",
    register: bool = True,
    model_name: str,
    min_tier: str,
    analyze_run_id: str | None = None,
) -> AnalyzeInputs:
    """Every input checked (registry name included, so a bad one never costs an evaluation)."""
    run_id, metric_map, config, model_name = (
        s.strip() for s in (run_id, metric_map or "", config or "", model_name or "")
    )
    if min_tier not in TIER_ORDER:
        raise AnalyzeInputError(f"--min-tier: '{min_tier}' is not one of {', '.join(TIER_ORDER)}")
    if register:
        problem = model_name_problem(client, model_name)
        if problem:
            raise AnalyzeInputError(f"--model-name: {problem}")
    run = _training_run(client, run_id, analyze_run_id)
    roles, guessed = _guessed(run) if not metric_map else (_roles(metric_map), None)
    absent = sorted(
        f"{r}={k}" for r, k in mapped_keys(metric_map).items() if k not in run.data.metrics
    )
    if absent:
        raise AnalyzeInputError(
            f"--metric-map: run '{run_id}' has no metric for {', '.join(absent)}"
        )
    thresholds = _thresholds(config)
    return AnalyzeInputs(
        run, roles, thresholds, metric_map, config, register, model_name, min_tier, guessed
    )
