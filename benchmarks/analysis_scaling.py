"""How analyze() (events + phases + tier, no plots) scales with run length.

Target: 100,000 epochs x 20 metrics in < 1 s on a 2-core CPU, growth ~linear.
    python benchmarks/analysis_scaling.py
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from tvae.analysis import analyze


def synthetic_history(n: int, n_metrics: int = 20, seed: int = 0) -> pd.DataFrame:
    """A long grokking-shaped run in our keys, padded with extra metrics to ``n_metrics``."""
    rng = np.random.default_rng(seed)
    e = np.arange(n, dtype=float)
    t0 = 0.6 * n
    cov = 0.02 + 0.97 / (1 + np.exp(-(e - t0) / (0.01 * n))) + rng.normal(0, 0.003, n)
    cols = {
        "eval/coverage": cov,
        "train/loss": 2.0 * np.exp(-e / (0.02 * n)) + 1e-3 + rng.normal(0, 1e-6, n) ** 2,
        "eval/hierarchy_B": -0.2 - 0.65 * (cov > 0.5) + rng.normal(0, 0.005, n),
        "eval/Q": 0.5 + 1.8 * (cov > 0.5) + rng.normal(0, 0.01, n),
        "opt/grad_norm": np.abs(rng.normal(1, 0.1, n)),
        "opt/lr": np.where(e < 0.3 * n, 1e-3, 1e-4),
        "state/lr_phase": (e >= 0.3 * n).astype(float),
    }
    for i in range(n_metrics - len(cols)):
        cols[f"train/loss_term{i}"] = np.exp(-e / n) + rng.normal(0, 0.01, n)
    return pd.DataFrame(cols, index=pd.Index(np.arange(n), name="epoch"))


def main() -> None:
    sizes = [1_000, 10_000, 30_000, 100_000]
    times = []
    for n in sizes:
        df = synthetic_history(n)
        analyze(df)  # warm-up (imports, caches)
        best = min(_time(df) for _ in range(3))
        times.append(best)
        rep = analyze(df)
        print(
            f"{n:>7} epochs x {df.shape[1]} metrics: {best * 1000:8.1f} ms  "
            f"events={len(rep.confirmed)} phases={len(rep.phases)} tier={rep.tier.name}"
        )
    slope = np.polyfit(np.log(sizes[1:]), np.log(times[1:]), 1)[0]
    print(f"growth exponent (10k..100k): {slope:.2f}  (1 = linear, 2 = quadratic)")
    print(f"100k x 20 target < 1 s: {'met' if times[-1] < 1.0 else 'NOT met'} ({times[-1]:.3f} s)")


def _time(df: pd.DataFrame) -> float:
    t = time.perf_counter()
    analyze(df)
    return time.perf_counter() - t


if __name__ == "__main__":
    main()
