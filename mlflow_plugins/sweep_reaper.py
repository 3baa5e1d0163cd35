"""Sweep workers that died: their trials FAIL and their training runs end FAILED, saying why.

Two ways to tell. On this host a run's `train.owner` process is visibly gone (`kill -9`, a
crash): `reap_dead_workers`, at a worker's start. On any host, with a database storage, a
running trial whose worker sent no heartbeat for `MISSED_HEARTBEATS` intervals is failed by
Optuna's stale-trial check, whose callback (`end_abandoned_runs`) ends its runs.
"""

from __future__ import annotations

import contextlib
from typing import Any

from mlflow_plugins.sweep_space import SweepSpec
from mlflow_plugins.sweep_study import MISSED_HEARTBEATS, PARENT_ATTR, make_storage, open_study
from tvae import contract as C


def _running_trial_runs(client: Any, spec: SweepSpec, parent: str, trial: int | None = None):
    exp_id = client.get_run(parent).info.experiment_id
    query = f"tags.`{C.SWEEP_STUDY}` = '{spec.study}' and attributes.status = 'RUNNING'"
    if trial is not None:
        query += f" and tags.`{C.SWEEP_TRIAL}` = '{trial}'"
    return client.search_runs([exp_id], query)


def end_abandoned_runs(spec: SweepSpec) -> Any:
    """The storage's callback for a trial failed as abandoned (its worker, on any machine,
    stopped sending heartbeats): its training runs still RUNNING end FAILED saying so."""

    def on_abandoned(study: Any, trial: Any) -> None:
        import mlflow

        from mlflow_plugins.runs import describe_owner, fail_run

        client = mlflow.MlflowClient()
        parent = study.user_attrs.get(PARENT_ATTR)
        silent = spec.heartbeat * MISSED_HEARTBEATS
        for run in _running_trial_runs(client, spec, parent, trial.number) if parent else []:
            owner = describe_owner(run.data.tags.get(C.OWNER, ""))
            why = f"its sweep worker ({owner}) sent the study no heartbeat for {silent} s"
            fail_run(client, run.info.run_id, why)
            print(f"trial {trial.number} FAIL: run {run.info.run_id}: {why}", flush=True)

    return on_abandoned


def open_worker_study(spec: SweepSpec) -> tuple[Any, Any]:
    """(storage, study) with heartbeats when the storage is a database (`spec.heartbeat`)."""
    storage = make_storage(spec.storage, spec.heartbeat, end_abandoned_runs(spec))
    return storage, open_study(spec, storage)


def reap_dead_workers(client: Any, spec: SweepSpec, study: Any, parent: str) -> None:
    """Training runs of this study left RUNNING by a worker that died on this host (kill -9, a
    crash; `train.owner` names the process): each ends FAILED saying so, and its trial, if still
    RUNNING, FAIL (it stays counted). Runs owned on another host are left to the heartbeats
    (`end_abandoned_runs`): their process cannot be seen from here."""
    from optuna.trial import TrialState

    from mlflow_plugins.runs import describe_owner, fail_run, owner_alive

    running = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    if not running:
        return
    for run in _running_trial_runs(client, spec, parent):
        owner = run.data.tags.get(C.OWNER, "")
        trial = int(run.data.tags.get(C.SWEEP_TRIAL, "-1"))
        if trial not in running or owner_alive(owner) is not False:
            continue
        why = f"its sweep worker ({describe_owner(owner)}) died while training it"
        fail_run(client, run.info.run_id, why)
        with contextlib.suppress(Exception):  # another worker may have told it first
            study.tell(trial, state=TrialState.FAIL)
        print(f"trial {trial} FAIL: run {run.info.run_id}: {why}", flush=True)
