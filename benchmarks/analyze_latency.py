"""How long `analyze` takes, against a fresh local SQLite store, with baselines from the same run.

Targets (issue 13):
  1. `mlflow run . -e analyze` on a 50-epoch run within 2.5 s of `mlflow run . -e noop` (the
     floor: MLflow's own start-up, run creation and one Python process): what a user waits on
     beyond MLflow itself. Both medians and their difference are printed.
  2. A 100,000-epoch x 25-key run analysed (no registration) in under 20 s wall, end to end
     (`python -m entrypoints.analyze`, interpreter start included).
Also printed: history loading via `MlflowClient.get_metric_history` (one call per key, ORM rows)
against `mlflow_plugins.history.load_history` (one streamed SQL query per key, the store's engine).

The 50-epoch run is logged with `log_batch`; the 2.5 M rows of the long run are bulk-inserted
into the store's tables with sqlite3 (logging them through the API would take minutes and is not
what is measured).

    python benchmarks/analyze_latency.py [--repeats 3] [--long-epochs 100000] [--skip-long]
"""

from __future__ import annotations

import argparse
import os
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MPLBACKEND", "Agg")

KEYS = [
    "train/loss", "train/loss_recon", "train/loss_kl", "train/loss_radial", "train/loss_rank",
    "train/loss_geodesic", "train/loss_richness", "train/loss_separation",
    "eval/coverage", "eval/hierarchy_A", "eval/hierarchy_B", "eval/dist_corr", "eval/richness",
    "eval/Q", "eval/r_v0", "eval/r_v9", "opt/grad_norm", "opt/lr", "state/frozen_encoder_A",
    "state/frozen_encoder_B", "state/lr_phase", "state/geodesic_active",
    "perf/samples_per_sec", "perf/epoch_seconds", "perf/gpu_mem_peak_frac",
]  # fmt: skip


def synthetic_history(epochs: int, seed: int = 0) -> dict[str, np.ndarray]:
    """25 contract keys: a long plateau, then a rise in coverage/Q, an LR schedule, noise."""
    rng = np.random.default_rng(seed)
    e = np.arange(1, epochs + 1, dtype=float)
    rise = 1 / (1 + np.exp(-(e - 0.6 * epochs) / max(epochs / 50, 1.0)))
    noise = rng.normal(0, 0.002, epochs)
    h = {key: 0.1 + 0.01 * noise for key in KEYS if not key.startswith("state/")}
    h["state/frozen_encoder_A"] = ((e > 0.7 * epochs) & (e < 0.75 * epochs)).astype(float)
    h["state/frozen_encoder_B"] = np.zeros(epochs)
    h["state/geodesic_active"] = (e >= 0.1 * epochs).astype(float)
    h["train/loss"] = 1.0 - 0.5 * rise + noise
    h["eval/coverage"] = np.clip(0.6 + 0.39 * rise + noise, 0, 1)
    h["eval/hierarchy_B"] = -0.5 - 0.3 * rise + noise
    h["eval/dist_corr"] = 0.3 + 0.2 * rise
    h["eval/Q"] = h["eval/dist_corr"] + 1.5 * np.abs(h["eval/hierarchy_B"])
    h["opt/lr"] = np.where(e < 0.4 * epochs, 1e-3, 1e-4)
    h["state/lr_phase"] = (e >= 0.4 * epochs).astype(float)
    h["perf/samples_per_sec"] = 9000 + rng.normal(0, 100, epochs)
    return h


def log_small_run(uri: str, epochs: int) -> str:
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    run = client.create_run("0", run_name=f"synthetic-{epochs}")
    ts = int(time.time() * 1000)
    rows = [
        Metric(k, float(v), ts + i, i + 1)
        for k, col in synthetic_history(epochs).items()
        for i, v in enumerate(col)
    ]
    for i in range(0, len(rows), 1000):
        client.log_batch(run.info.run_id, metrics=rows[i : i + 1000])
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def insert_long_run(uri: str, db: Path, epochs: int) -> str:
    """Create the run through MLflow, then bulk-insert its metric rows with sqlite3."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    run_id = client.create_run("0", run_name=f"synthetic-{epochs}").info.run_id
    client.set_terminated(run_id, "FINISHED")
    ts = int(time.time() * 1000)
    steps = np.arange(1, epochs + 1)
    with sqlite3.connect(db) as conn:
        for key, col in synthetic_history(epochs).items():
            conn.executemany(
                "INSERT INTO metrics (key, value, timestamp, run_uuid, step, is_nan) "
                "VALUES (?, ?, ?, ?, ?, 0)",
                ((key, float(v), ts, run_id, int(s)) for s, v in zip(steps, col, strict=True)),
            )
            conn.execute(
                "INSERT INTO latest_metrics (key, value, timestamp, step, is_nan, run_uuid) "
                "VALUES (?, ?, ?, ?, 0, ?)",
                (key, float(col[-1]), ts, epochs, run_id),
            )
    return run_id


def timed(cmd: list[str], env: dict[str, str], cwd: Path) -> float:
    return timed_cpu(cmd, env, cwd)[0]


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed_cpu(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """(wall s, CPU s of the command and every process it waited for).

    The CPU figure barely moves when other work shares the cores, so it is what a quiet
    machine's wall time would be for single-threaded start-up work.
    """
    cpu, start = _children_cpu(), time.perf_counter()
    done = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    elapsed, cpu = time.perf_counter() - start, _children_cpu() - cpu
    if done.returncode != 0:
        raise SystemExit(f"command failed: {' '.join(cmd)}\n{done.stderr[-3000:]}")
    return elapsed, cpu


def mlflow_run(entry: str, *params: str) -> list[str]:
    cmd = [sys.executable, "-m", "mlflow", "run", str(REPO), "-e", entry, "--env-manager", "local"]
    for p in params:
        cmd += ["-P", p]
    return cmd


def bench_mlflow_run(uri: str, env: dict[str, str], tmp: Path, repeats: int) -> None:
    """`mlflow run -e noop` against `mlflow run -e analyze` on a 50-epoch run, interleaved."""
    run_id = log_small_run(uri, 50)
    noop, analyze = [], []
    for _ in range(repeats):  # interleaved, so load changes hit both alike
        noop.append(timed_cpu(mlflow_run("noop"), env, tmp))
        analyze.append(timed_cpu(mlflow_run("analyze", f"run_id={run_id}"), env, tmp))
    for label, pairs in (("noop", noop), ("analyze (50 ep)", analyze)):
        walls = [w for w, _ in pairs]
        listed = ", ".join(f"{x:.2f}" for x in walls)
        cpu = statistics.median(c for _, c in pairs)
        print(
            f"mlflow run -e {label:16s} median {statistics.median(walls):6.2f} s wall, "
            f"{cpu:6.2f} s CPU  ({listed})"
        )
    wall = statistics.median(w for w, _ in analyze) - statistics.median(w for w, _ in noop)
    cpu = statistics.median(c for _, c in analyze) - statistics.median(c for _, c in noop)
    verdict = "met" if wall <= 2.5 else "NOT met"
    print(f"analyze - noop                   {wall:6.2f} s wall  (target <= 2.5 s: {verdict})")
    print(f"analyze - noop                   {cpu:6.2f} s CPU   (= wall on free cores)")


def bench_long(uri: str, db: Path, env: dict[str, str], tmp: Path, epochs: int) -> None:
    from mlflow.tracking import MlflowClient

    from mlflow_plugins.history import load_history

    start = time.perf_counter()
    run_id = insert_long_run(uri, db, epochs)
    print(f"\n{epochs:,} epochs x {len(KEYS)} keys inserted in {time.perf_counter() - start:.1f} s")
    client = MlflowClient(uri)
    t0 = time.perf_counter()
    fast, _ = load_history(client, run_id)
    t_fast = time.perf_counter() - t0
    t0 = time.perf_counter()
    slow, _ = load_history(client, run_id, fast=False)
    t_slow = time.perf_counter() - t0
    assert fast.equals(slow), "fast and public-client histories differ"
    print(f"history via get_metric_history  {t_slow:6.2f} s")
    print(f"history via load_history (SQL)  {t_fast:6.2f} s   speed-up {t_slow / t_fast:.1f}x")
    cmd = [sys.executable, "-m", "entrypoints.analyze", "--run-id", run_id, "--register", "false"]
    wall = timed(cmd, {**env, "PYTHONPATH": str(REPO)}, tmp)
    print(f"python -m entrypoints.analyze   {wall:6.2f} s   (target < 20 s, no registration)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--long-epochs", type=int, default=100_000)
    parser.add_argument("--skip-long", action="store_true")
    parser.add_argument("--skip-run", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        db = tmp / "mlflow.db"
        uri = f"sqlite:///{db}"
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_REGISTRY_URI": uri}
        from mlflow.tracking import MlflowClient

        MlflowClient(uri).search_experiments()  # create + migrate the store outside timings
        print(f"store {uri}, {os.cpu_count()} CPUs")
        if not args.skip_run:
            bench_mlflow_run(uri, env, tmp, args.repeats)
        if not args.skip_long:
            bench_long(uri, db, env, tmp, args.long_epochs)


if __name__ == "__main__":
    main()
