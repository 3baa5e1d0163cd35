"""Which runs a comparison takes: named ids, an experiment's training runs, a sweep's runs, or
a search. A bad selection is a one-line `CompareError`; runs a search finds that log none of
the compared metrics are left out and named."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mlflow_plugins.analysis_writer import tool_run
from tvae import contract as C
from tvae.compare import KEY_METRICS

COMPARED_KEYS = tuple(key for key, _, _ in KEY_METRICS)
# MLflow error codes that blame the input (unknown id, bad filter), not a failing store.
_BAD_INPUT = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "BAD_REQUEST", "NOT_FOUND")


class CompareError(ValueError):
    """Bad selection or input; the message is one line saying what is wrong."""


@dataclass
class Selection:
    """The runs to compare, and the runs a search found that log none of the compared
    metrics (left out, and named to the user)."""

    runs: list[Run]
    skipped: list[Run] = field(default_factory=list)

    def skipped_line(self) -> str:
        """One line naming the skipped runs (the first ten)."""
        names = [f"{r.info.run_name or '?'} ({r.info.run_id})" for r in self.skipped[:10]]
        more = f" and {len(self.skipped) - 10} more" if len(self.skipped) > 10 else ""
        keys = ", ".join(COMPARED_KEYS)
        return (
            f"skipped {len(self.skipped)} run(s) that log none of {keys}: {', '.join(names)}{more}"
        )


def _comparable(run: Run) -> bool:
    return any(key in run.data.metrics for key in COMPARED_KEYS)


def _existing(client: MlflowClient, run_ids: Sequence[str], option: str) -> list[Run]:
    """The named runs; each must exist and not be deleted (the user named it)."""
    runs, unknown = [], []
    for run_id in run_ids:
        try:
            run = client.get_run(run_id)
        except MlflowException as err:
            if err.error_code not in _BAD_INPUT:
                raise  # the store itself failed (e.g. server unreachable): not the id's fault
            unknown.append(run_id)
            continue
        if run.info.lifecycle_stage == "deleted":
            unknown.append(f"{run_id} (deleted)")
            continue
        runs.append(run)
    if unknown:
        raise CompareError(f"{option}: unknown run id(s): {', '.join(unknown)}")
    return runs


def _get_runs(client: MlflowClient, run_ids: Sequence[str]) -> list[Run]:
    """The named runs; each must exist and log a compared metric (the user asked for it)."""
    runs = _existing(client, run_ids, "--runs")
    tools = [f"run '{r.info.run_id}' is {kind}" for r in runs if (kind := tool_run(r.data.tags))]
    if tools:
        raise CompareError(f"--runs: {'; '.join(tools)}, not a training run")
    lacking = [f"{r.info.run_id} (experiment {r.info.experiment_id})" for r in runs
               if not _comparable(r)]  # fmt: skip
    if lacking:
        keys = ", ".join(COMPARED_KEYS)
        raise CompareError(f"--runs: run(s) log none of {keys}: {', '.join(lacking)}")
    return runs


def _search(client: MlflowClient, experiment_ids: list[str], filter_string: str) -> list[Run]:
    order = ["attributes.start_time ASC"]
    try:
        runs = client.search_runs(experiment_ids, filter_string, max_results=50_000, order_by=order)
        return list(runs)  # ACTIVE_ONLY (the default): deleted runs are not compared
    except MlflowException as err:
        if err.error_code not in _BAD_INPUT:
            raise  # the store failed, the filter may be fine
        first = str(err.message).splitlines()[0] if err.message else "invalid"
        raise CompareError(f"--filter: {first}") from None


def _experiment_id(client: MlflowClient, name: str) -> str:
    """The active experiment called `name` ("Default" too: `mlflow run` puts runs there)."""
    exp = client.get_experiment_by_name(name)
    if exp is None or exp.lifecycle_stage == "deleted":
        raise CompareError(f"--experiment: no experiment named '{name}'")
    return exp.experiment_id


def select_runs(
    client: MlflowClient,
    run_ids: Sequence[str] | None = None,
    experiment: str | None = None,
    filter_string: str | None = None,
    sweep: str | None = None,
) -> Selection:
    """The runs to compare: given ids, an experiment's training runs, or a sweep's (the
    training runs nested under its parent run), narrowed by a filter.

    With ids and a filter, the filter narrows the ids. With only a filter, every active
    experiment is searched. A search leaves out this tool's own runs (analyze, compare,
    promote) and skips the runs that log none of the compared metrics.
    """
    filter_string = (filter_string or "").strip()
    if sum(map(bool, (run_ids, experiment, sweep))) > 1:
        raise CompareError("give one of --runs, --experiment, --sweep")
    user_filter = filter_string
    if run_ids:
        runs = _get_runs(client, run_ids)
        if filter_string:
            experiments = sorted({r.info.experiment_id for r in runs})
            keep = {r.info.run_id for r in _search(client, experiments, filter_string)}
            runs = [r for r in runs if r.info.run_id in keep]
        found = Selection(runs)
    elif experiment or filter_string or sweep:
        if sweep:  # the training runs nested under the sweep's parent run
            ids = [_existing(client, [sweep], "--sweep")[0].info.experiment_id]
            mine = f"tags.mlflow.parentRunId = '{sweep}' and tags.`{C.SWEEP_SEED}` LIKE '%'"
            filter_string = f"{mine} and {filter_string}" if filter_string else mine
        elif experiment:
            ids = [_experiment_id(client, experiment)]
        else:
            ids = [e.experiment_id for e in client.search_experiments()]
        candidates = [r for r in _search(client, ids, filter_string) if not tool_run(r.data.tags)]
        found = Selection(
            [r for r in candidates if _comparable(r)],
            [r for r in candidates if not _comparable(r)],
        )
    else:
        raise CompareError("nothing to compare: give --runs, --experiment, --sweep or --filter")
    if not found.runs:
        where = f" in experiment '{experiment}'" if experiment else ""
        where = f" under sweep run {sweep}" if sweep else where
        how = f' matching filter "{user_filter}"' if user_filter else ""
        why = f"; {found.skipped_line()}" if found.skipped else ""
        raise CompareError(f"no training runs{where}{how}{why}")
    return found
