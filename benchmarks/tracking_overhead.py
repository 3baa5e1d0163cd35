"""Tracking overhead: wall of a training run logged to MLflow over the same run with no logger.

Both variants train the same config (default: the v5.12.4 config, 50 epochs, CPU) in this one
process, alternating, against a fresh temporary SQLite store created before timing starts.
The MLflow variant times everything the train entry point does around the trainer: start_run
with system metrics, params + config artifact, per-epoch async metric batches, checkpoint
uploads, training.log/summary, logging the best model (pt2) and end_run.

    python benchmarks/tracking_overhead.py [--epochs 50] [--repeats 1] [--config PATH]

Prints each wall time and the ratio mlflow / no-op (target <= 1.05).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def noop_run(config, workdir: Path) -> float:
    from tvae.train import Trainer

    t0 = time.perf_counter()
    Trainer(config, workdir, None, echo=False).fit()
    return time.perf_counter() - t0


def mlflow_run(config, workdir: Path) -> tuple[float, float]:
    import mlflow

    from mlflow_plugins import model_logging
    from mlflow_plugins.tracking import train_in_run

    spent = {"model": 0.0}
    real = model_logging.log_best_model

    def timed(*args, **kwargs):
        t = time.perf_counter()
        try:
            return real(*args, **kwargs)
        finally:
            spent["model"] += time.perf_counter() - t

    model_logging.log_best_model = timed
    t0 = time.perf_counter()
    try:
        run = mlflow.start_run(log_system_metrics=True)
        result = train_in_run(config, run.info.run_id, workdir, echo=False)
        mlflow.end_run(status=result.status)
    finally:
        model_logging.log_best_model = real
    return time.perf_counter() - t0, spent["model"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(REPO / "configs/v5_12_4_extended_grokking.yaml"))
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()

    import mlflow

    from tvae.config import load_config

    config = load_config(args.config, {"train.epochs": args.epochs, "train.device": "cpu"})
    with tempfile.TemporaryDirectory(prefix="tvae-bench-") as tmp:
        root = Path(tmp)
        mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
        mlflow.set_experiment("tracking-overhead")  # creates the store before timing
        noop, logged, model = [], [], []
        for i in range(args.repeats):
            noop.append(noop_run(config, root / f"noop{i}"))
            wall, model_s = mlflow_run(config, root / f"mlflow{i}")
            logged.append(wall)
            model.append(model_s)
            print(f"repeat {i}: no-op {noop[-1]:.2f} s, mlflow {wall:.2f} s", flush=True)
    base, tracked = statistics.median(noop), statistics.median(logged)
    print(f"config {config.name}, {args.epochs} epochs, CPU, {args.repeats} repeat(s)")
    print(f"no-op logger wall     {base:8.2f} s")
    model_s = statistics.median(model)
    print(f"MLflow logging wall   {tracked:8.2f} s  (of which log_model {model_s:.2f} s)")
    print(f"ratio mlflow / no-op  {tracked / base:8.3f}  (target <= 1.05)")


if __name__ == "__main__":
    main()
