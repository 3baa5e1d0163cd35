"""Tracking cost a user feels: per epoch (slope over a short and a long run) and at the end.

One script run alternates the two variants, each in a fresh Python process (so the MLflow
variant pays its one-off costs, such as the first torch.export, as every `mlflow run` does),
against one temporary SQLite store created before timing starts. Each child times, after its
imports: the no-op variant Trainer.fit with no logger; the MLflow variant everything the train
entry point does around the trainer in a run that `mlflow run` created (start_run with system
metrics, params + config artifact, per-epoch async metric batches, checkpoint uploads,
training.log/summary, logging the best model as pt2, end_run). Importing mlflow (~1 s, once per
process) is start-up, not tracking; benchmarks/train_wall.py counts it.

    python benchmarks/tracking_overhead.py [--short 50] [--long 200] [--repeats 2] [--threads N]

The per-epoch logging cost is the slope of wall time over the two run lengths, MLflow minus
no-op, as a share of the no-op epoch (target <= 2 %); the fixed end-of-run cost is logging the
best model (target <= 1.5 s). On a noisy box the slope moves by more than the cost, so each
child also reports its steady-state epoch: the median time between consecutive epoch ends
(everything the training thread does, commits included) after epoch `STEADY_AFTER`, and the
process CPU time (all threads) over the same epochs. Both still move by more than 2 % on a
shared box, so the MLflow child also counts the CPU time the tracking itself spends: the logger's
callbacks on the training thread plus every job of its worker thread (metric batches, tags,
checkpoint uploads) up to the end of training, per epoch, as a share of the no-op epoch's CPU.
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

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
STEADY_AFTER = 10  # the first epochs compile, warm caches and change freeze states


def _config(args):
    from tvae.config import load_config

    overrides = {"train.epochs": args.epochs or args.short, "train.device": "cpu"}
    if args.threads is not None:
        overrides["train.threads"] = args.threads
    return load_config(args.config, overrides)


def counted(method, clock, into: dict, key: str):
    """`method`, adding the `clock` time each call takes to `into[key]`."""

    def wrapper(*a, **k):
        t = clock()
        try:
            return method(*a, **k)
        finally:
            into[key] += clock() - t

    return wrapper


def child(args) -> dict:
    """One timed variant in this (fresh) process."""
    config = _config(args)
    workdir = Path(args.workdir)
    ends: list[tuple[float, float]] = []  # (perf_counter, process CPU time) at each epoch end

    def steady() -> dict[str, float]:
        wall, cpu = np.array(ends[STEADY_AFTER:]).T
        return {"epoch": float(np.median(np.diff(wall))), "cpu": float(np.median(np.diff(cpu)))}

    if args.variant == "noop":
        from tvae.callbacks import TrainLogger
        from tvae.train import Trainer

        class Clock(TrainLogger):
            def on_epoch_end(self, epoch, metrics):
                ends.append((time.perf_counter(), time.process_time()))

        t0 = time.perf_counter()
        Trainer(config, workdir, Clock(), echo=False).fit()
        return {"wall": time.perf_counter() - t0, **steady()}
    import mlflow

    from mlflow_plugins import model_logging
    from mlflow_plugins.tracking import train_in_run
    from mlflow_plugins.train_logger import MlflowTrainLogger

    tracking = {"cpu": 0.0}  # thread CPU seconds inside the logger's work, any thread
    for name in ("on_epoch_end", "on_checkpoint", "on_log_line", "_apply"):  # tags: in epoch end
        method = getattr(MlflowTrainLogger, name)
        setattr(MlflowTrainLogger, name, counted(method, time.thread_time, tracking, "cpu"))
    logged = MlflowTrainLogger.on_epoch_end
    drain = MlflowTrainLogger.drain

    def clocked(self, epoch, metrics):
        logged(self, epoch, metrics)
        ends.append((time.perf_counter(), time.process_time()))

    def drained(self):
        drain(self)
        tracking["per_epoch"] = tracking["cpu"] / max(1, self.last_epoch)

    MlflowTrainLogger.on_epoch_end, MlflowTrainLogger.drain = clocked, drained

    mlflow.set_tracking_uri(args.uri)
    mlflow.set_experiment("tracking-overhead")
    spent = {"model": 0.0}
    model_logging.log_best_model = counted(
        model_logging.log_best_model, time.perf_counter, spent, "model"
    )
    # as under `mlflow run`: the launcher has created the run before the entry point starts
    experiment = mlflow.get_experiment_by_name("tracking-overhead").experiment_id
    run_id = mlflow.MlflowClient().create_run(experiment).info.run_id
    t0 = time.perf_counter()
    # as entrypoints.train: the train logger samples system metrics itself
    run = mlflow.start_run(run_id=run_id, log_system_metrics=False)
    result = train_in_run(config, run.info.run_id, workdir, echo=False)
    mlflow.end_run(status=result.status)
    wall = time.perf_counter() - t0
    return {"wall": wall, "model": spent["model"], "tracking": tracking["per_epoch"], **steady()}


def paired(what: str, figures: dict, args) -> dict[str, float]:
    """Print `figures` (variant, length -> per-run values) as the long runs' medians and each
    MLflow run against the no-op run of the same repeat and length; the medians in ms."""
    ratios = [
        m / o - 1
        for n in (args.short, args.long)
        for o, m in zip(figures["noop", n], figures["mlflow", n], strict=True)
    ]
    ms = {v: 1000 * statistics.median(figures[v, args.long]) for v in ("noop", "mlflow")}
    print(
        f"{what} after epoch {STEADY_AFTER}, {args.long}-epoch runs: noop {ms['noop']:.1f} ms, "
        f"mlflow {ms['mlflow']:.1f} ms; per pair {100 * statistics.median(ratios):+.1f} % median "
        f"({100 * min(ratios):+.1f} to {100 * max(ratios):+.1f} %)"
    )
    return ms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(REPO / "configs/v5_12_4_extended_grokking.yaml"))
    ap.add_argument("--short", type=int, default=50)
    ap.add_argument("--long", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="train.threads (default: config)")
    ap.add_argument("--epochs", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--variant", choices=["noop", "mlflow"], help=argparse.SUPPRESS)
    ap.add_argument("--workdir", help=argparse.SUPPRESS)
    ap.add_argument("--uri", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.variant:
        print(json.dumps(child(args)))
        return

    import mlflow

    lengths = (args.short, args.long)
    with tempfile.TemporaryDirectory(prefix="tvae-bench-") as tmp:
        root = Path(tmp)
        uri = f"sqlite:///{root / 'mlflow.db'}"
        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment("tracking-overhead")  # creates the store before timing
        walls = {(v, n): [] for v in ("noop", "mlflow") for n in lengths}
        epochs = {(v, n): [] for v in ("noop", "mlflow") for n in lengths}
        cpus = {(v, n): [] for v in ("noop", "mlflow") for n in lengths}
        tracking = []
        model = []
        for i in range(args.repeats):
            for n in lengths:
                for variant in ("noop", "mlflow"):
                    cmd = [sys.executable, __file__, *sys.argv[1:], "--variant", variant]
                    cmd += ["--epochs", str(n), "--workdir", str(root / f"{variant}{n}-{i}")]
                    cmd += ["--uri", uri]
                    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
                    if done.returncode != 0:
                        sys.exit(f"{variant} run failed:\n{done.stderr[-3000:]}")
                    out = json.loads(done.stdout.strip().splitlines()[-1])
                    walls[variant, n].append(out["wall"])
                    epochs[variant, n].append(out["epoch"])
                    cpus[variant, n].append(out["cpu"])
                    if variant == "mlflow":
                        model.append(out["model"])
                        tracking.append(out["tracking"])
                    print(
                        f"repeat {i}: {n:4d} epochs {variant:6s} {out['wall']:7.2f} s, "
                        f"steady epoch {1000 * out['epoch']:6.1f} ms, "
                        f"CPU {1000 * out['cpu']:6.1f} ms",
                        flush=True,
                    )
    med = {k: statistics.median(v) for k, v in walls.items()}
    span = args.long - args.short
    slope = {v: (med[v, args.long] - med[v, args.short]) / span for v in ("noop", "mlflow")}
    share = 100 * (slope["mlflow"] - slope["noop"]) / slope["noop"]
    print(f"{args.repeats} repeat(s) of {lengths} epochs, CPU, each run in a fresh process")
    for v in ("noop", "mlflow"):
        print(
            f"{v:6s} wall {med[v, args.short]:7.2f} s / {med[v, args.long]:7.2f} s, "
            f"{1000 * slope[v]:6.1f} ms per epoch"
        )
    print(f"per-epoch logging cost {share:+.1f} % of an epoch (target <= 2 %)")
    paired("steady-state epoch (median gap between epoch ends)", epochs, args)
    cpu_ms = paired("steady-state CPU per epoch (all threads)", cpus, args)
    spent_ms = 1000 * statistics.median(tracking)
    print(
        f"CPU of the tracking itself: {spent_ms:.1f} ms per epoch median "
        f"({1000 * min(tracking):.1f}-{1000 * max(tracking):.1f}), "
        f"{100 * spent_ms / cpu_ms['noop']:.1f} % of the no-op epoch's CPU"
    )
    print(f"end-of-run model logging {statistics.median(model):.2f} s median (target <= 1.5 s)")


if __name__ == "__main__":
    main()
