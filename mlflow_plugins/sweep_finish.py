"""The end of a sweep: its summary and best config on the parent run, the comparison of its
training runs (per config the mean and spread over seeds) as the parent's report, and, with
register=true, the best model offered to the registry."""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow_plugins.sweep import SEED_RUNS_ATTR, SEED_VALUES_ATTR, analyse, params_json
from mlflow_plugins.sweep_reaper import open_worker_study
from mlflow_plugins.sweep_space import SweepSpec
from mlflow_plugins.sweep_study import counted, fail_abandoned_trials
from tvae import contract as C
from tvae.config import config_to_yaml, load_config


@dataclass
class SweepOutcome:
    parent: str
    finished: int
    complete: int
    best_trial: int | None
    best_value: float | None
    best_params: dict[str, Any] | None
    best_config_path: Path | None
    running: int


def summary_csv(spec: SweepSpec, trials: list[Any]) -> str:
    keys = [d.key for d in spec.dims]
    buf = io.StringIO()
    writer = csv.writer(buf)
    seeds = [f"seed_{i}" for i in range(spec.seeds)]
    writer.writerow(["trial", "state", *keys, *seeds, "mean", "std", "runs"])
    for t in sorted(trials, key=lambda t: t.number):
        values = list(t.user_attrs.get(SEED_VALUES_ATTR, []))
        mean = sum(values) / len(values) if values else None
        std = (
            math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
            if values and len(values) == spec.seeds
            else None
        )
        if t.state.name != "COMPLETE":
            mean = std = None
        padded = values + [""] * (spec.seeds - len(values))
        row = [t.number, t.state.name, *(t.params.get(k, "") for k in keys), *padded]
        row += ["" if mean is None else mean, "" if std is None else std]
        row.append(" ".join(t.user_attrs.get(SEED_RUNS_ATTR, [])))
        writer.writerow(row)
    return buf.getvalue()


def register_best(client: Any, spec: SweepSpec, parent: str, best: Any) -> None:
    """Register the best trial's best seed's model through `analyze`'s registry step (its tier
    and re-evaluation, `candidate`, and `champion` only when strictly better), printing what the
    registry did; the parent run's tag `sweep.registered` names the version."""
    runs = list(best.user_attrs.get(SEED_RUNS_ATTR, []))
    values = list(best.user_attrs.get(SEED_VALUES_ATTR, []))
    pick = max if spec.direction == "maximize" else min
    seed = pick(range(len(values)), key=values.__getitem__)
    outcome = analyse(client, spec, parent, runs[seed], best.number, register=True)
    if outcome is None:
        return
    reg = outcome.registry
    print(f"registry: {reg.action} ({reg.reason}), run {runs[seed]} (seed {seed})", flush=True)
    if reg.version is not None:
        client.set_tag(parent, C.SWEEP_REGISTERED, f"{reg.model_name} version {reg.version}")


def log_report(client: Any, parent: str, folder: Path, study: Any) -> None:
    """The comparison of the sweep's training runs (`compare`'s files: per config the mean and
    std over seeds, band plots, the run table) and Optuna's parallel-coordinates plot of the
    study (params -> objective) as the parent's `sweep/report/` artifacts."""
    from mlflow_plugins.compare import load_compared_runs
    from mlflow_plugins.compare_select import select_runs
    from tvae.compare import build_table
    from tvae.compare.plots import write_comparison

    compared = load_compared_runs(client, select_runs(client, sweep=parent).runs)
    write_comparison(compared, build_table(compared), folder)
    if any(t.state.name == "COMPLETE" for t in study.get_trials(deepcopy=False)):
        parallel_coordinates(study, folder / "parallel_coordinates.png")
    client.log_artifacts(parent, str(folder), "sweep/report")


def parallel_coordinates(study: Any, path: Path) -> None:
    """Optuna's own parallel-coordinates plot (matplotlib) of the study's complete trials."""
    import warnings

    import matplotlib.pyplot as plt
    from optuna.visualization.matplotlib import plot_parallel_coordinate

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
        ax = plot_parallel_coordinate(study)
    ax.figure.savefig(path, bbox_inches="tight")
    plt.close(ax.figure)


def finish_sweep(client: Any, spec: SweepSpec, parent: str, local_dir: Path) -> SweepOutcome:
    """Summary and best config onto the parent run (and into `local_dir`); the parent ends
    FINISHED once no trial of the study is still running (another worker's)."""
    from optuna.trial import TrialState

    _, study = open_worker_study(spec)
    fail_abandoned_trials(study)  # a trial whose worker elsewhere died is not "still running"
    trials = counted(study.get_trials(deepcopy=False))
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    running = sum(t.state == TrialState.RUNNING for t in trials)
    local_dir.mkdir(parents=True, exist_ok=True)
    (local_dir / "summary.csv").write_text(summary_csv(spec, trials))
    client.log_artifact(parent, str(local_dir / "summary.csv"), "sweep")
    best = best_path = None
    if complete:
        best = study.best_trial
        config = load_config(spec.config_path, spec.overrides(best.params, 0))
        best_path = local_dir / "best_config.yaml"
        head = (
            f"# best of sweep study {spec.study!r}: trial {best.number}, "
            f"{spec.metric} = {best.value} (mean over {spec.seeds} seeds)\n"
        )
        best_path.write_text(head + config_to_yaml(config))
        client.log_artifact(parent, str(best_path), "sweep")
        client.set_tag(parent, C.SWEEP_BEST_TRIAL, str(best.number))
        client.set_tag(parent, C.SWEEP_BEST_VALUE, repr(float(best.value)))
        client.set_tag(parent, C.SWEEP_BEST_PARAMS, params_json(best.params)[:5000])
        if spec.register:
            register_best(client, spec, parent, best)
    try:
        log_report(client, parent, local_dir / "report", study)
    except Exception as err:  # noqa: BLE001 - the study's result stands without its plots
        print(f"warning: the sweep's report was not logged: {type(err).__name__}: {err}")
    if running == 0:
        client.set_terminated(parent, "FINISHED")
    return SweepOutcome(
        parent,
        len([t for t in trials if t.state.is_finished()]),
        len(complete),
        best.number if best else None,
        float(best.value) if best else None,
        dict(best.params) if best else None,
        best_path,
        running,
    )
