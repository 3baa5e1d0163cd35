"""How long `compare` takes over 20 runs x 50 epochs against a local SQLite store.

Target (issue 6): under 15 s wall for the whole comparison. The runs are created with
`log_batch` from a synthetic history of every contract metric (step = epoch) in a fresh temp
store; half carry a stored analysis (tags), half are analysed on the fly, as `compare` does
for runs nobody analysed yet. Printed: the wall time of `compare_runs` (pull histories,
analyse, plot, table, log to its own run), the same without logging (baseline of the pure
work) and the CLI end to end (`python -m entrypoints.compare`, including interpreter start).

    python benchmarks/compare_latency.py [--runs 20] [--epochs 50]
"""

from __future__ import annotations

import argparse
import os
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


def synthetic_history(epochs: int, seed: int) -> dict[str, np.ndarray]:
    """A 50-epoch-like run: a loss plateau, then a coverage/Q jump at a seed-dependent epoch."""
    rng = np.random.default_rng(seed)
    e = np.arange(1, epochs + 1, dtype=float)
    jump = 15 + seed % 20
    step = 1 / (1 + np.exp(-(e - jump) * 2))
    noise = rng.normal(0, 0.002, epochs)
    h = {
        "train/loss": 1.0 - 0.4 * step + noise,
        "eval/coverage": 0.70 + 0.29 * step + noise,
        "eval/hierarchy_B": -0.50 - 0.30 * step + noise,
        "eval/hierarchy_A": -0.40 - 0.20 * step + noise,
        "eval/dist_corr": 0.3 + 0.2 * step,
        "eval/richness": 0.01 + 0.0 * e,
        "eval/r_v0": 0.85 + 0.0 * e,
        "eval/r_v9": 0.10 + 0.0 * e,
        "opt/grad_norm": 1.0 + np.abs(noise) * 10,
        "opt/lr": np.where(e < 40, 1e-3, 1e-4),
        "state/lr_phase": np.where(e < 40, 0.0, 1.0),
        "state/frozen_encoder_A": 0.0 * e,
        "state/frozen_encoder_B": 0.0 * e,
        "state/geodesic_active": (e >= 5).astype(float),
        "perf/samples_per_sec": 9000 + rng.normal(0, 100, epochs),
        "perf/epoch_seconds": 2.0 + 0.0 * e,
        "train/loss_recon": 0.8 - 0.3 * step,
        "train/loss_kl": 0.1 + 0.0 * e,
    }
    h["eval/Q"] = h["eval/dist_corr"] + 1.5 * np.abs(h["eval/hierarchy_B"])
    return h


def create_runs(client, n_runs: int, epochs: int) -> list[str]:
    from mlflow.entities import Metric, RunTag

    exp = client.create_experiment("compare-bench")
    ids = []
    for i in range(n_runs):
        run = client.create_run(exp, run_name=f"bench-s{i}")
        rid = run.info.run_id
        hist = synthetic_history(epochs, i)
        metrics = [
            Metric(k, float(v), 1_700_000_000_000 + j, j + 1)
            for k, arr in hist.items()
            for j, v in enumerate(arr)
        ]
        for s in range(0, len(metrics), 1000):
            client.log_batch(rid, metrics=metrics[s : s + 1000])
        if i % 2 == 0:  # half already analysed (tags only), half analysed on the fly
            tags = {"tier": "Good", "grokking.events": "1", "grokking.severity": "standard",
                    "grokking.first_epoch": str(15 + i % 20)}  # fmt: skip
            client.log_batch(rid, tags=[RunTag(k, v) for k, v in tags.items()])
        client.set_terminated(rid)
        ids.append(rid)
    return ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=50)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        os.environ["MLFLOW_TRACKING_URI"] = uri
        os.chdir(tmp)
        import mlflow
        from mlflow.tracking import MlflowClient

        from mlflow_plugins.compare import compare_runs
        from mlflow_plugins.compare_select import select_runs

        mlflow.set_tracking_uri(uri)
        client = MlflowClient(uri)
        t0 = time.perf_counter()
        ids = create_runs(client, args.runs, args.epochs)
        print(f"created {args.runs} runs x {args.epochs} epochs: {time.perf_counter() - t0:.1f} s")

        t0 = time.perf_counter()
        compare_runs(client, select_runs(client, ids).runs, log=False)
        pure = time.perf_counter() - t0
        t0 = time.perf_counter()
        result = compare_runs(client, select_runs(client, ids).runs)
        logged = time.perf_counter() - t0
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "entrypoints.compare", "--runs", ",".join(ids)],
            check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(REPO)},
        )  # fmt: skip
        cli = time.perf_counter() - t0
    print(f"compare, no logging (baseline):   {pure:6.2f} s")
    print(f"compare, logged to its own run:   {logged:6.2f} s  ({logged / pure:.2f}x baseline)")
    print(f"CLI end to end (new interpreter): {cli:6.2f} s  target < 15 s: "
          f"{'PASS' if cli < 15 else 'FAIL'}")  # fmt: skip
    print(f"compare run {result.compare_run_id}: {len(result.artifacts)} artifacts")


if __name__ == "__main__":
    main()
