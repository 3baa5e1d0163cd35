"""What a sweep costs and what a second worker buys, on this machine.

    python benchmarks/sweep_scaling.py [--trials 8] [--seeds 2] [--skip-sequential]

In one temporary SQLite store and Optuna journal: the same sweep (smoke config, a float space
over `train.lr`, `train.threads: 1` so that two workers fit two cores) with `--workers 1`, then
`--workers 2`, each a fresh `python -m entrypoints.sweep` (wall time includes start-up); then
the 1-worker study's configs trained one by one as `train` does, each in its own
`python -m entrypoints.train` process. Prints the 2-worker/1-worker wall ratio (target <= 0.65)
and the sweep's wall against the sequential trainings' (each run's own start-to-end time in the
store, i.e. without process start-up; target <= 1.1x), plus whether every trial ran once.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SPACE = "train.lr: {type: float, low: 0.0005, high: 0.002, log: true}\nfixed: {train.threads: 1}\n"


def run_sweep(env: dict, space: Path, storage: Path, study: str, args) -> float:
    cmd = [sys.executable, "-m", "entrypoints.sweep", "--space", str(space)]
    cmd += ["--config", str(REPO / "configs" / "smoke.yaml"), "--study", study]
    cmd += ["--trials", str(args.trials), "--seeds", str(args.seeds), "--storage", str(storage)]
    cmd += ["--workers", str(args.workers_now), "--pruner", "none"]
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"sweep {study} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--skip-sequential", action="store_true")
    args = parser.parse_args()

    import optuna
    from mlflow import MlflowClient
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    tmp = Path(tempfile.mkdtemp(prefix="tvae-sweep-bench-"))
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("MLFLOW_RUN_ID", None)
    space = tmp / "space.yaml"
    space.write_text(SPACE)
    storage = tmp / "journal.log"
    walls = {}
    for workers in (1, 2):
        args.workers_now = workers
        walls[workers] = run_sweep(env, space, storage, f"w{workers}", args)
        print(f"{workers} worker(s): {walls[workers]:.1f} s", flush=True)
    journal = JournalStorage(JournalFileBackend(str(storage)))
    client = MlflowClient(uri)
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()], max_results=10_000
    )
    for study in ("w1", "w2"):
        trials = optuna.load_study(study_name=study, storage=journal).trials
        training = [r for r in runs if r.data.tags.get("sweep.study") == study
                    and "sweep.seed" in r.data.tags]  # fmt: skip
        pairs = {(r.data.tags["sweep.trial"], r.data.tags["sweep.seed"]) for r in training}
        states = sorted({t.state.name for t in trials})
        print(
            f"study {study}: {len(trials)} trials ({', '.join(states)}), {len(training)} training "
            f"runs, {len(pairs)} distinct trial x seed (each once: {len(pairs) == len(training)})"
        )
    print(f"2 workers / 1 worker: {walls[2] / walls[1]:.2f} (target <= 0.65)")
    if args.skip_sequential:
        return
    configs = optuna.load_study(study_name="w1", storage=journal).trials
    own = 0.0
    started = time.perf_counter()
    for trial in configs:
        for seed in range(args.seeds):
            cmd = [sys.executable, "-m", "entrypoints.train", "--config"]
            cmd += [str(REPO / "configs" / "smoke.yaml"), "--seed", str(seed)]
            cmd += ["--lr", repr(trial.params["train.lr"])]
            seq_env = {**env, "MLFLOW_EXPERIMENT_NAME": "sequential"}
            subprocess.run(cmd, cwd=REPO, env=seq_env, capture_output=True, check=True)
    total = time.perf_counter() - started
    exp = client.get_experiment_by_name("sequential")
    for run in client.search_runs([exp.experiment_id], max_results=10_000):
        own += (run.info.end_time - run.info.start_time) / 1000.0
    print(
        f"sequential `train` processes: {total:.1f} s in all, {own:.1f} s inside their runs; "
        f"1-worker sweep {walls[1]:.1f} s = {walls[1] / own:.2f}x the runs' own time "
        "(target <= 1.1x; the sweep also analyses every run)"
    )


if __name__ == "__main__":
    main()
