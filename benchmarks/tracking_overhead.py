"""Tracking overhead: wall of a training run logged to MLflow over the same run with no logger.

One script run alternates the two variants, each in a fresh Python process (so the MLflow
variant pays its one-off costs, such as the first torch.export, as every `mlflow run` does),
against one temporary SQLite store created before timing starts. Each child times, after its
imports: the no-op variant Trainer.fit with no logger; the MLflow variant everything the train
entry point does around the trainer in a run that `mlflow run` created (start_run with system
metrics, params + config artifact, per-epoch async metric batches, checkpoint uploads,
training.log/summary, logging the best model as pt2, end_run). Importing mlflow (~1 s, once per
process) is start-up, not tracking; benchmarks/train_wall.py counts it.

    python benchmarks/tracking_overhead.py [--epochs 50] [--repeats 3] [--threads N]

Prints each pair of wall times and the ratio of the medians, mlflow / no-op (target <= 1.05).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def _config(args):
    from tvae.config import load_config

    overrides = {"train.epochs": args.epochs, "train.device": "cpu"}
    if args.threads is not None:
        overrides["train.threads"] = args.threads
    return load_config(args.config, overrides)


def child(args) -> dict:
    """One timed variant in this (fresh) process."""
    config = _config(args)
    workdir = Path(args.workdir)
    if args.variant == "noop":
        from tvae.train import Trainer

        t0 = time.perf_counter()
        Trainer(config, workdir, None, echo=False).fit()
        return {"wall": time.perf_counter() - t0}
    import mlflow

    from mlflow_plugins import model_logging
    from mlflow_plugins.tracking import train_in_run

    mlflow.set_tracking_uri(args.uri)
    mlflow.set_experiment("tracking-overhead")
    spent = {"model": 0.0}
    real = model_logging.log_best_model

    def timed(*a, **k):
        t = time.perf_counter()
        try:
            return real(*a, **k)
        finally:
            spent["model"] += time.perf_counter() - t

    model_logging.log_best_model = timed
    # as under `mlflow run`: the launcher has created the run before the entry point starts
    experiment = mlflow.get_experiment_by_name("tracking-overhead").experiment_id
    run_id = mlflow.MlflowClient().create_run(experiment).info.run_id
    t0 = time.perf_counter()
    run = mlflow.start_run(run_id=run_id, log_system_metrics=True)
    result = train_in_run(config, run.info.run_id, workdir, echo=False)
    mlflow.end_run(status=result.status)
    return {"wall": time.perf_counter() - t0, "model": spent["model"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(REPO / "configs/v5_12_4_extended_grokking.yaml"))
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="train.threads (default: config)")
    ap.add_argument("--variant", choices=["noop", "mlflow"], help=argparse.SUPPRESS)
    ap.add_argument("--workdir", help=argparse.SUPPRESS)
    ap.add_argument("--uri", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.variant:
        print(json.dumps(child(args)))
        return

    import mlflow

    config = _config(args)
    with tempfile.TemporaryDirectory(prefix="tvae-bench-") as tmp:
        root = Path(tmp)
        uri = f"sqlite:///{root / 'mlflow.db'}"
        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment("tracking-overhead")  # creates the store before timing
        walls: dict[str, list[float]] = {"noop": [], "mlflow": []}
        model = []
        for i in range(args.repeats):
            for variant in ("noop", "mlflow"):
                cmd = [sys.executable, __file__, *sys.argv[1:], "--variant", variant]
                cmd += ["--workdir", str(root / f"{variant}{i}"), "--uri", uri]
                done = subprocess.run(cmd, capture_output=True, text=True, check=False)
                if done.returncode != 0:
                    sys.exit(f"{variant} run failed:\n{done.stderr[-3000:]}")
                out = json.loads(done.stdout.strip().splitlines()[-1])
                walls[variant].append(out["wall"])
                if variant == "mlflow":
                    model.append(out["model"])
            print(
                f"repeat {i}: no-op {walls['noop'][-1]:.2f} s, mlflow {walls['mlflow'][-1]:.2f} s"
                f" (log_model {model[-1]:.2f} s)",
                flush=True,
            )
    base, tracked = statistics.median(walls["noop"]), statistics.median(walls["mlflow"])
    print(
        f"config {config.name}, {args.epochs} epochs, CPU, train.threads"
        f" {config.train.threads}, {args.repeats} repeat(s), each run in a fresh process"
    )
    print(f"no-op logger wall     {base:8.2f} s")
    model_s = statistics.median(model)
    print(f"MLflow logging wall   {tracked:8.2f} s  (of which log_model {model_s:.2f} s)")
    print(f"ratio mlflow / no-op  {tracked / base:8.3f}  (target <= 1.05)")


if __name__ == "__main__":
    main()
