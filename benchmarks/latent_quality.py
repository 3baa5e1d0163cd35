"""Issue 18's yardstick over seeds: latent distance correlation, quality by epoch 10, speed.

Trains each seed of a config for 50 epochs with the trainer in tvae/ (no MLflow, one training
at a time) and prints, per seed: eval/dist_corr_latent and eval/Q_latent at the last epoch,
eval/Q and coverage there, the first epoch at Excellent or better (DESIGN.md tiers), coverage
at epoch 5 and the mean training samples/s. `--baseline` also trains the config as it was
before issue 18 (BASELINE below), interleaved seed by seed so a neighbour's load falls on both.

    python benchmarks/latent_quality.py [--seeds 0-9] [--epochs 50] [--baseline]
        [--rounds 9] [--config configs/v5_12_4_extended_grokking.yaml]
        [--set loss.latent.weight=0.5 ...]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as tvae does; must precede torch

import yaml  # noqa: E402

from tvae import contract as C  # noqa: E402
from tvae.analysis.tiers import TIER_ORDER, judge_tier  # noqa: E402
from tvae.callbacks import TrainLogger  # noqa: E402
from tvae.config import TVAEConfig, load_config  # noqa: E402
from tvae.ops import N_OPS  # noqa: E402
from tvae.train import Trainer  # noqa: E402

Q_CEILING = 2.1636
#: the default config before issue 18 (every key issue 18 changed, at its old value)
BASELINE = {
    "train.lr": 8e-4,
    "schedule.exploration_frac": 0.4,
    "schedule.restarts": 2,
    "loss.latent.weight": 0.0,
    "loss.geodesic.weight": 0.3,
}
TARGETS = (
    "dist_corr_latent >= 0.80 and Q_latent >= 2.10 at the last epoch",
    f"Excellent, eval/Q >= 99.5 % of {Q_CEILING} and coverage 1.0 at the last epoch",
    "Excellent by epoch 10, coverage >= 20 % at epoch 5",
)


class History(TrainLogger):
    """Keeps every epoch's metrics."""

    def __init__(self) -> None:
        self.epochs: dict[int, dict[str, float]] = {}

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        self.epochs[epoch] = dict(metrics)


def first_excellent(epochs: dict[int, dict[str, float]]) -> int | None:
    """First epoch whose eval metrics reach Excellent or better."""
    for epoch in sorted(epochs):
        m = epochs[epoch]
        tier = judge_tier(m[C.COVERAGE], m[C.HIERARCHY_B], m[C.QUALITY]).name
        if TIER_ORDER.index(tier) >= TIER_ORDER.index("Excellent"):
            return epoch
    return None


def train_seed(cfg: TVAEConfig) -> dict[str, Any]:
    """Train one config; the row of the table."""
    hist = History()
    with tempfile.TemporaryDirectory(prefix="tvae-latent-") as tmp:
        result = Trainer(cfg, Path(tmp), hist, echo=False).fit()
    if result.status != "FINISHED":
        raise SystemExit(f"seed {cfg.train.seed}: {result.status} {result.reason}")
    last = hist.epochs[max(hist.epochs)]
    early = hist.epochs.get(5, last)
    return {
        "seed": cfg.train.seed,
        "dcl": last[C.DIST_CORR_LATENT],
        "q_latent": last[C.Q_LATENT],
        "q": last[C.QUALITY],
        "coverage": last[C.COVERAGE],
        "h_B": last[C.HIERARCHY_B],
        "excellent_at": first_excellent(hist.epochs),
        "coverage_5": early[C.COVERAGE],
        "sps": result.samples_per_sec,
        "tier": judge_tier(last[C.COVERAGE], last[C.HIERARCHY_B], last[C.QUALITY]).name,
        "wall": result.wall_seconds,
    }


def meets(row: dict[str, Any]) -> tuple[bool, bool, bool]:
    """Per-seed targets (the throughput one is judged over all seeds)."""
    latent = row["dcl"] >= 0.80 and row["q_latent"] >= 2.10
    kept = (
        TIER_ORDER.index(row["tier"]) >= TIER_ORDER.index("Excellent")
        and row["q"] >= 0.995 * Q_CEILING
        and row["coverage"] >= 1.0
    )
    sooner = row["excellent_at"] is not None and row["excellent_at"] <= 10
    return latent, kept, sooner and row["coverage_5"] >= 0.20


def print_table(label: str, rows: list[dict[str, Any]]) -> None:
    print(f"\n{label}")
    print(
        "seed  dist_corr_latent  Q_latent   eval/Q  coverage     h_B  Excellent at"
        "  cov@5   samples/s  wall s  targets (latent, kept, sooner)"
    )
    for r in rows:
        flags = " ".join("yes" if ok else "NO " for ok in meets(r))
        print(
            f"{r['seed']:>4}  {r['dcl']:>16.4f}  {r['q_latent']:>8.4f}  {r['q']:>7.4f}"
            f"  {r['coverage']:>8.4f} {r['h_B']:>+7.4f}  {str(r['excellent_at']):>12}"
            f"  {r['coverage_5']:>5.3f}  {r['sps']:>10,.0f}  {r['wall']:>6.1f}  {flags}"
        )
    met = [sum(m[k] for m in map(meets, rows)) for k in range(3)]
    for target, n in zip(TARGETS, met, strict=True):
        print(f"  {n}/{len(rows)} seeds: {target}")
    print(
        f"  median samples/s {statistics.median(r['sps'] for r in rows):,.0f};"
        f" median dist_corr_latent {statistics.median(r['dcl'] for r in rows):.4f},"
        f" Q_latent {statistics.median(r['q_latent'] for r in rows):.4f},"
        f" eval/Q {statistics.median(r['q'] for r in rows):.4f}"
    )


def steady_throughput(configs: dict[str, TVAEConfig], rounds: int, epoch: int = 25) -> None:
    """Median samples/s of `epoch` (nothing frozen, each config's terms on), interleaved."""
    trainers = {}
    for label, cfg in configs.items():
        cfg = cfg.model_copy(deep=True)
        cfg.homeostasis.enabled = False
        trainers[label] = Trainer(cfg, Path(tempfile.gettempdir()), echo=False)
        trainers[label].setup()
    rates: dict[str, list[float]] = {label: [] for label in configs}
    try:
        for round_ in range(rounds + 1):  # round 0 warms up and is not counted
            for label, trainer in trainers.items():
                geo = trainer.config.loss.geodesic
                active = epoch >= geo.start_epoch and geo.weight > 0
                t0 = time.perf_counter()
                terms, _ = trainer.train_epoch(epoch, active)
                terms.tolist()  # the trainer's one sync per epoch
                if round_:
                    rates[label].append(N_OPS / (time.perf_counter() - t0))
    finally:
        for trainer in trainers.values():
            trainer.close()
    print(f"\nlike for like: epoch {epoch}, nothing frozen, {rounds} alternating rounds")
    for label, r in rates.items():
        print(f"  {label:<28} median {statistics.median(r):>9,.0f} samples/s")
    base, ours = (statistics.median(r) for r in rates.values())
    print(f"  ratio {ours / base:.3f}x (target >= 0.90x)")


def parse_seeds(text: str) -> list[int]:
    if "-" in text:
        lo, hi = text.split("-")
        return list(range(int(lo), int(hi) + 1))
    return [int(s) for s in text.split(",")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/v5_12_4_extended_grokking.yaml")
    ap.add_argument("--seeds", default="0-9", help="e.g. 0-9 or 0,3,5")
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("--baseline", action="store_true", help="also train BASELINE, interleaved")
    ap.add_argument("--rounds", type=int, default=9, help="like-for-like timing rounds")
    ap.add_argument("--set", nargs="*", default=[], help="dotted overrides, key=value (YAML)")
    args = ap.parse_args()
    common = {"train.epochs": args.epochs, "train.device": "cpu", "train.live": False}
    mine = {**common, **{k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}}
    configs = {"this config": mine}
    if args.baseline:
        configs = {"baseline (before issue 18)": {**common, **BASELINE}, **configs}
    print(f"{args.config}, {args.epochs} epochs, seeds {args.seeds}, overrides {args.set or '-'}")
    rows: dict[str, list[dict[str, Any]]] = {label: [] for label in configs}
    for seed in parse_seeds(args.seeds):
        for label, overrides in configs.items():
            cfg = load_config(REPO / args.config, {**overrides, "train.seed": seed})
            rows[label].append(train_seed(cfg))
            r = rows[label][-1]
            print(
                f"  {label}: seed {seed} dcl {r['dcl']:.4f} Q_latent {r['q_latent']:.4f}"
                f" Q {r['q']:.4f} Excellent at {r['excellent_at']} cov@5 {r['coverage_5']:.3f}"
                f" {r['sps']:,.0f} samples/s",
                flush=True,
            )
    for label, table in rows.items():
        print_table(label, table)
    if args.baseline:
        base, ours = (statistics.median(r["sps"] for r in rows[k]) for k in configs)
        print(f"\nrun-mean samples/s: {ours / base:.3f}x the baseline's (medians over seeds)")
        if args.rounds:
            cfgs = {k: load_config(REPO / args.config, v) for k, v in configs.items()}
            steady_throughput(cfgs, args.rounds)


if __name__ == "__main__":
    main()
