"""Hyperparameter sweeps on Optuna: the study, its parent run, and the objective, which trains
every sampled config on seeds 0..K-1 exactly as `train` does (`train_in_run`) and analyses each
finished training run exactly as `analyze` does (`analyze_run`, register=false).

    spec = SweepSpec(...)            # validated input (`sweep_space`)
    storage, study = open_study(spec)
    parent = parent_run(client, spec, study, launcher_run_id)
    run_workers(spec, parent)        # 1 process here, or N spawned ones on the same study
    outcome = finish_sweep(client, spec, parent)   # `sweep_finish`

The study (`sweep_study`) holds a TOTAL number of trials (any state but WAITING): a worker
claims a trial under a lock (one per study and machine), so workers on one machine never run
more than `trials`; a second machine running the same command on a shared storage adds
workers, not trials (a rare race between machines can start one surplus trial, which is ended
FAIL at once with the user attribute `sweep.surplus` and never counted).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any

from mlflow_plugins.sweep_reaper import open_worker_study, reap_dead_workers
from mlflow_plugins.sweep_space import SweepSpec, mask_password
from mlflow_plugins.sweep_study import PARENT_ATTR, ask_trial, fail_abandoned_trials, heartbeat
from tvae import contract as C
from tvae.config import load_config

SEED_VALUES_ATTR = "seed_values"
SEED_RUNS_ATTR = "seed_runs"
STOP = threading.Event()  # SIGTERM: this worker starts nothing new
_training: list[Any] = []  # the trainer of this process's training in progress, if any


def on_sigterm(signum: int, frame: Any) -> None:
    """SIGTERM: a training in progress stops at its epoch boundary (KILLED, resumable), then
    the worker ends (its trial FAIL, the parent KILLED); outside a training, at once."""
    STOP.set()
    if not _training:
        raise KeyboardInterrupt
    _training[-1].request_stop()


# ------------------------------------------------------------------ MLflow


def experiment_id_for(client: Any, spec: SweepSpec) -> str:
    from mlflow_plugins.runs import ensure_experiment, experiment_name

    if os.environ.get("MLFLOW_EXPERIMENT_ID") and not os.environ.get("MLFLOW_EXPERIMENT_NAME"):
        return os.environ["MLFLOW_EXPERIMENT_ID"]
    return ensure_experiment(client, experiment_name(load_config(spec.config_path, spec.fixed)))


def spec_params(spec: SweepSpec) -> dict[str, str]:
    out = {f"sweep.space.{d.key}": d.describe() for d in spec.dims}
    out.update({f"sweep.fixed.{k}": str(v) for k, v in spec.fixed.items()})
    out.update(
        {
            "sweep.sampler": spec.sampler_name,
            "sweep.pruner": spec.pruner,
            "sweep.seeds": str(spec.seeds),
            "sweep.trials": str(spec.trials),
            "sweep.metric": spec.metric,
            "sweep.direction": spec.direction,
            "sweep.config": spec.config_path,
        }
    )
    return out


def _log_params(client: Any, run_id: str, params: dict[str, str]) -> None:
    from mlflow.entities import Param
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH

    have = client.get_run(run_id).data.params
    new = [Param(k, v[:MAX_PARAM_VAL_LENGTH]) for k, v in params.items() if k not in have]
    for i in range(0, len(new), MAX_PARAMS_TAGS_PER_BATCH):
        client.log_batch(run_id, params=new[i : i + MAX_PARAMS_TAGS_PER_BATCH])


def parent_run(client: Any, spec: SweepSpec, study: Any, launcher: str | None) -> str:
    """The study's parent run: the one recorded in the study (a joining worker), else the
    `mlflow run` run, else a new run. A joining `mlflow run` run is tagged and ended."""
    from mlflow.tracking.context.registry import resolve_tags
    from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME, MLFLOW_RUN_NOTE

    from mlflow_plugins.runs import mark_model_training

    recorded = study.user_attrs.get(PARENT_ATTR)
    parent = None
    if recorded:
        try:
            run = client.get_run(recorded)
            if run.info.lifecycle_stage == "active":
                parent = recorded
        except Exception:  # noqa: BLE001 - recorded in another tracking store
            parent = None
    if parent and launcher and launcher != parent:
        client.set_tag(launcher, C.SWEEP_STUDY, spec.study)
        client.set_tag(launcher, C.SWEEP_PARENT_RUN, parent)
        client.set_tag(launcher, MLFLOW_RUN_NOTE, f"Joined study {spec.study}: see {parent}")
        client.set_terminated(launcher, "FINISHED")
    if parent is None:
        if launcher:
            parent = launcher
            client.set_tag(parent, MLFLOW_RUN_NAME, f"sweep-{spec.study}")
        else:
            tags = resolve_tags({MLFLOW_RUN_NAME: f"sweep-{spec.study}"})
            parent = client.create_run(experiment_id_for(client, spec), tags=tags).info.run_id
        study.set_user_attr(PARENT_ATTR, parent)
    elif client.get_run(parent).info.status != "RUNNING":
        client.update_run(parent, "RUNNING")
    exp_id = client.get_run(parent).info.experiment_id
    mark_model_training(client, exp_id)
    _log_params(client, parent, spec_params(spec))
    client.set_tag(parent, C.SWEEP_STUDY, spec.study)
    client.set_tag(parent, C.SWEEP_STORAGE, mask_password(spec.storage))
    return parent


@dataclass
class SeedOutcome:
    run_id: str
    status: str
    value: float | None
    reason: str | None


def metric_value(client: Any, run_id: str, metric: str, best_epoch: int | None) -> float | None:
    """The metric at the run's best epoch (the epoch of its logged model), else its last value."""
    history = sorted(client.get_metric_history(run_id, metric), key=lambda m: (m.step, m.timestamp))
    if not history:
        return None
    at_best = [m.value for m in history if best_epoch is not None and m.step == best_epoch]
    return float(at_best[-1] if at_best else history[-1].value)


def train_seed(spec: SweepSpec, parent: str, trial: Any, params: dict, seed: int) -> Any:
    """One training run (nested under `parent`) of the trial's config on `seed`, created and
    trained as `train` does it, then analysed as `analyze` does it. The first seed's run
    reports to the trial every epoch and stops when the study prunes it (`TrialReporter`)."""
    import mlflow

    from mlflow_plugins.runs import claim_work_dir, run_name
    from mlflow_plugins.sweep_pruner import TrialReporter
    from mlflow_plugins.tracking import train_in_run

    client = mlflow.MlflowClient()
    config = load_config(spec.config_path, spec.overrides(params, seed))
    exp_id = client.get_run(parent).info.experiment_id
    tags = {
        C.SWEEP_STUDY: spec.study,
        C.SWEEP_TRIAL: str(trial.number),
        C.SWEEP_SEED: str(seed),
    }
    run = mlflow.start_run(
        experiment_id=exp_id,
        run_name=run_name(config),
        parent_run_id=parent,
        tags=tags,
        log_system_metrics=False,
    )
    run_id = run.info.run_id
    status, reason, best_epoch = "FAILED", None, None
    reporters: list[TrialReporter] = []

    def report_to_trial(trainer: Any) -> None:
        _training.append(trainer)
        live = trainer.logger.live
        if seed == 0 and spec.pruner != "none" and live is not None:
            reporters.append(TrialReporter(trial, spec.metric, trainer))
            live.listeners.append(reporters[0])

    try:
        workdir = claim_work_dir(run_id, mlflow.get_tracking_uri())
        result = train_in_run(
            config, run_id, workdir, on_trainer=report_to_trial, echo=False, remove_workdir=True
        )
        status, reason, best_epoch = result.status, result.reason, result.best_epoch
        if reporters and reporters[0].pruned_at is not None:
            reason = f"pruned at epoch {reporters[0].pruned_at}"
            client.set_tag(run_id, C.SWEEP_PRUNED, str(reporters[0].pruned_at))
            return SeedOutcome(run_id, "PRUNED", None, reason)
    except KeyboardInterrupt:
        status, reason = "KILLED", "interrupted"
        raise
    except Exception as err:  # noqa: BLE001 - a failed training fails its trial, not the study
        reason = f"{type(err).__name__}: {err}"
        with contextlib.suppress(Exception):
            client.set_tag(run_id, C.FAILURE_REASON, reason[:5000])
    finally:
        _training.clear()
        with contextlib.suppress(Exception):
            mlflow.end_run(status=status)
    if status == "KILLED":  # Ctrl-C or SIGTERM stopped the training: the worker stops too
        raise KeyboardInterrupt
    if status != "FINISHED":
        return SeedOutcome(run_id, status, None, reason or status)
    value = metric_value(client, run_id, spec.metric, best_epoch)
    if value is None or not math.isfinite(value):
        return SeedOutcome(run_id, "FAILED", None, f"run {run_id} has no finite {spec.metric}")
    analyse(client, spec, parent, run_id, trial.number)
    return SeedOutcome(run_id, status, value, None)


def analyse(
    client: Any, spec: SweepSpec, parent: str, run_id: str, trial: int, register: bool = False
) -> Any:
    """`analyze`'s analysis of the training run, its analyze run nested under the parent too;
    its outcome (None when it failed)."""
    from mlflow.utils.mlflow_tags import (
        MLFLOW_PARENT_RUN_ID,
        MLFLOW_RUN_NAME,
        MLFLOW_SOURCE_NAME,
        MLFLOW_SOURCE_TYPE,
    )

    from mlflow_plugins.analyze_run import analyze_run, analyze_run_name

    run = client.get_run(run_id)
    tags = {
        MLFLOW_PARENT_RUN_ID: parent,
        MLFLOW_SOURCE_TYPE: "LOCAL",
        MLFLOW_SOURCE_NAME: "tvae-sweep",
        MLFLOW_RUN_NAME: analyze_run_name(run),
        C.SWEEP_STUDY: spec.study,
        C.SWEEP_ANALYSIS_OF_TRIAL: str(trial),
    }
    own = client.create_run(run.info.experiment_id, tags=tags).info.run_id
    try:
        outcome = analyze_run(
            client,
            run_id,
            register=register,
            model_name=spec.model_name,
            min_tier=spec.min_tier,
            analyze_run_id=own,
        )
        client.set_terminated(own, "FINISHED")
        return outcome
    except Exception as err:  # noqa: BLE001 - the trial's value does not depend on it
        print(f"warning: analysis of run {run_id} failed: {err}", flush=True)
        with contextlib.suppress(Exception):
            if client.get_run(own).info.status == "RUNNING":
                client.set_tag(own, C.FAILURE_REASON, str(err)[:5000])
                client.set_terminated(own, "FAILED")
        return None


def run_trial(spec: SweepSpec, study: Any, trial: Any, parent: str) -> None:
    """Train the trial's config on every seed; tell the study the mean (or FAIL)."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    params = dict(trial.params)
    values: list[float] = []
    runs: list[str] = []
    try:
        for seed in range(spec.seeds):
            outcome = train_seed(spec, parent, trial, params, seed)
            runs.append(outcome.run_id)
            trial.set_user_attr(SEED_RUNS_ATTR, runs)
            if outcome.status == "PRUNED":
                study.tell(trial, state=TrialState.PRUNED)
                line = f"trial {trial.number} PRUNED {params_json(params)}: {outcome.reason}"
                print(line, flush=True)
                return
            if outcome.value is None:
                trial.set_user_attr("failure", str(outcome.reason)[:1000])
                study.tell(trial, state=TrialState.FAIL)
                print(
                    f"trial {trial.number} FAIL {params_json(params)}: seed {seed} run "
                    f"{outcome.run_id} {outcome.status}: {outcome.reason}",
                    flush=True,
                )
                return
            values.append(outcome.value)
            trial.set_user_attr(SEED_VALUES_ATTR, values)
    except BaseException:
        with contextlib.suppress(Exception):
            study.tell(trial, state=TrialState.FAIL)
        raise
    mean = sum(values) / len(values)
    try:
        study.tell(trial, mean)
    except UpdateFinishedTrialError:  # failed meanwhile as abandoned (no heartbeat): not counted
        print(f"trial {trial.number}: failed by another worker as abandoned; {mean} not counted")
        return
    seeds = f"(seeds {_fmt(values)})"
    print(
        f"trial {trial.number} {spec.metric}={mean:.6g} {seeds} {params_json(params)}", flush=True
    )


def params_json(params: dict[str, Any]) -> str:
    return json.dumps(params, separators=(",", ":"), default=str)


def _fmt(values: list[float]) -> str:
    return ", ".join(f"{v:.4g}" for v in values)


def work(spec: SweepSpec, parent: str) -> None:
    """One worker: claim trials until the study holds `target` or the timeout passes."""
    import mlflow

    if spec.tracking_uri:
        mlflow.set_tracking_uri(spec.tracking_uri)
    os.environ.pop("MLFLOW_RUN_ID", None)  # fluent start_run would resume it
    storage, study = open_worker_study(spec)
    reap_dead_workers(mlflow.MlflowClient(), spec, study, parent)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_sigterm)
    started = time.monotonic()
    while spec.timeout is None or time.monotonic() - started < spec.timeout:
        if STOP.is_set():
            raise KeyboardInterrupt
        fail_abandoned_trials(study)
        trial = ask_trial(spec, study)
        if trial is None:
            return
        with heartbeat(storage, study, trial):
            run_trial(spec, study, trial, parent)


def _spawned_worker(spec: SweepSpec, parent: str) -> None:
    try:
        work(spec, parent)
    except KeyboardInterrupt:
        pass


def run_workers(spec: SweepSpec, parent: str) -> list[int]:
    """Run `spec.workers` workers on this machine (spawned processes when more than one);
    returns the exit codes of spawned workers (empty for in-process)."""
    if spec.workers <= 1:
        work(spec, parent)
        return []
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_spawned_worker, args=(spec, parent)) for _ in range(spec.workers)]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join()
    except KeyboardInterrupt:  # Ctrl-C reached the workers too; a SIGTERM to us alone did not
        for p in procs:
            p.terminate()
        for p in procs:
            p.join(timeout=60)
        raise
    return [p.exitcode or 0 for p in procs]


# ------------------------------------------------------------------ summary
