"""What following a run live costs inside training (`train.live`, mlflow_plugins.live_train).

    python benchmarks/live_train_cost.py [--config configs/smoke.yaml] [--epochs 50] [--repeats 2]

Trains the config with `train.live` off and on, alternating, each into a fresh run of one
temporary SQLite store (in-process, `train_in_run`, no model logging), and prints each wall
time, the on/off ratio of the medians, and the live detector's own CPU time (thread time spent
judging, the part that does not depend on how busy the machine is) as a share of the live
run's wall time (target < 1 %). The smoke model's epochs are short, so the share is an upper
bound for the default config's.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "smoke.yaml"))
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    from mlflow import MlflowClient

    from mlflow_plugins.tracking import train_in_run
    from tvae.config import load_config

    tmp = Path(tempfile.mkdtemp(prefix="tvae-live-cost-"))
    client = MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
    exp = client.create_experiment("live-cost", artifact_location=str(tmp / "artifacts"))
    walls: dict[bool, list[float]] = {False: [], True: []}
    detector_cpu, analyses = [], []
    for i in range(args.repeats):
        for live in (False, True):
            overrides = {"train.epochs": args.epochs, "train.device": "cpu", "train.live": live}
            config = load_config(args.config, overrides)
            rid = client.create_run(exp).info.run_id
            held: list = []
            started = time.perf_counter()
            train_in_run(
                config,
                rid,
                tmp / f"work-{i}-{live}",
                client=client,
                log_model=False,
                echo=False,
                on_trainer=held.append,
            )
            wall = time.perf_counter() - started
            walls[live].append(wall)
            client.set_terminated(rid)
            if live:
                detector = held[0].logger.live.detector
                detector_cpu.append(detector.cpu_seconds)
                analyses.append(detector.analyses)
            print(f"repeat {i + 1}: live={str(live).lower():5}  {wall:7.2f} s", flush=True)
    off, on = statistics.median(walls[False]), statistics.median(walls[True])
    cpu = statistics.median(detector_cpu)
    print(f"\n{args.epochs} epochs of {Path(args.config).name}, median of {args.repeats}:")
    print(f"  wall live off {off:.2f} s, live on {on:.2f} s, ratio {on / off:.3f}")
    print(
        f"  live detector: {statistics.median(analyses):.0f} runs, {cpu:.3f} s CPU = "
        f"{100 * cpu / on:.2f} % of the live run's wall time"
    )


if __name__ == "__main__":
    main()
