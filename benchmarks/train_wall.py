"""Wall time of `mlflow run . -e train --env-manager local` with start-up (target: 50 epochs of
the default config in < 120 s on a 2-core CPU), against a fresh temporary SQLite store.

    python benchmarks/train_wall.py [--epochs 50] [--config configs/v5_12_4_extended_grokking.yaml]

Prints the wall time, the run's own training wall (training_summary.json) and the start-up
and finishing time around it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/v5_12_4_extended_grokking.yaml")
    ap.add_argument("--epochs", type=int, default=50)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="tvae-wall-") as tmp:
        uri = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_DISABLE_TELEMETRY": "true"}
        cmd = [sys.executable, "-m", "mlflow", "run", ".", "-e", "train", "--env-manager"]
        cmd += ["local", "-P", f"config={args.config}", "-P", f"epochs={args.epochs}"]
        t0 = time.perf_counter()
        done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if done.returncode != 0:
            sys.exit(f"mlflow run failed:\n{done.stderr[-3000:]}")
        from mlflow import MlflowClient

        client = MlflowClient(uri)
        exp_ids = [e.experiment_id for e in client.search_experiments()]
        (run,) = client.search_runs(exp_ids)
        path = client.download_artifacts(run.info.run_id, "training_summary.json", tmp)
        train_s = json.loads(Path(path).read_text())["wall_seconds"]
    print(f"mlflow run . -e train, {args.config}, {args.epochs} epochs")
    print(f"wall with start-up   {wall:8.2f} s  (target < 120 s for 50 epochs)")
    print(f"training (trainer)   {train_s:8.2f} s")
    print(f"start-up + finish    {wall - train_s:8.2f} s")


if __name__ == "__main__":
    main()
