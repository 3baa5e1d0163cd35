"""Infrastructure checks (seed: GPU util >80%, peak VRAM <95%, >2000 samples/s, no NaN/Inf,
run finished); each is pass / fail / "not measured" with the value it was judged on."""

from __future__ import annotations

import fnmatch
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from tvae import contract as C
from tvae.analysis.thresholds import Thresholds


@dataclass
class Check:
    name: str
    status: str  # "pass" | "fail" | "not measured"
    value: float | str | None
    threshold: str
    note: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def _cols(frames: list[pd.DataFrame], pattern: str) -> list[np.ndarray]:
    out = []
    for f in frames:
        for c in f.columns:
            if fnmatch.fnmatchcase(c, pattern):
                v = pd.to_numeric(f[c], errors="coerce").to_numpy(dtype=float)
                v = v[np.isfinite(v)]
                if len(v):
                    out.append(v)
    return out


def run_checks(
    history: pd.DataFrame,
    system: pd.DataFrame | None,
    nonfinite: dict[str, list[tuple[float, float]]],
    run_status: str | None,
    t: Thresholds,
) -> list[Check]:
    frames = [history] + ([system] if system is not None and len(system.columns) else [])
    checks: list[Check] = []

    util = _cols(frames, "system/gpu_*utilization_percentage")
    if util:
        v = float(np.mean([u.mean() for u in util]))
        ok = v > t.checks.gpu_utilization_min
        checks.append(
            Check(
                "gpu_utilization",
                "pass" if ok else "fail",
                round(v, 2),
                f"> {t.checks.gpu_utilization_min:g}%",
                f"mean over {len(util)} GPU(s)",
            )
        )
    else:
        checks.append(
            Check("gpu_utilization", "not measured", None, f"> {t.checks.gpu_utilization_min:g}%")
        )

    frac = _cols(frames, C.GPU_MEM_PEAK_FRAC)
    pct = _cols(frames, "system/gpu_*memory_usage_percentage")
    if frac or pct:
        peaks = [f.max() for f in frac] + [p.max() / 100.0 for p in pct]
        v = float(max(peaks))
        checks.append(
            Check(
                "peak_vram",
                "pass" if v < t.checks.vram_peak_max else "fail",
                round(v, 4),
                f"< {t.checks.vram_peak_max:g}",
            )
        )
    else:
        checks.append(Check("peak_vram", "not measured", None, f"< {t.checks.vram_peak_max:g}"))

    sps = _cols(frames, C.SAMPLES_PER_SEC)
    if sps:
        v = float(np.median(sps[0]))
        ok = v > t.checks.samples_per_sec_min
        checks.append(
            Check(
                "samples_per_sec",
                "pass" if ok else "fail",
                round(v, 1),
                f"> {t.checks.samples_per_sec_min:g}",
                "median over epochs",
            )
        )
    else:
        checks.append(
            Check("samples_per_sec", "not measured", None, f"> {t.checks.samples_per_sec_min:g}")
        )

    metric_cols = [c for c in history.columns if not c.startswith(C.SYSTEM_PREFIX)]
    if metric_cols:
        bad = {k: v for k, v in nonfinite.items() if k in metric_cols}
        note = "; ".join(f"{k} at {a:g}-{b:g}" for k, s in bad.items() for a, b in s[:1])
        checks.append(
            Check(
                "no_nan_inf",
                "fail" if bad else "pass",
                len(bad),
                "no NaN/Inf in logged metrics",
                note,
            )
        )
    else:
        checks.append(Check("no_nan_inf", "not measured", None, "no NaN/Inf in logged metrics"))

    secs = _cols(frames, C.EPOCH_SECONDS)
    lim = t.checks.max_duration_hours
    thr = "no limit" if lim is None else f"<= {lim:g} h"
    if secs:
        hours = float(secs[0].sum() / 3600.0)
        ok = lim is None or hours <= lim
        checks.append(
            Check(
                "duration",
                "pass" if ok else "fail",
                round(hours, 4),
                thr,
                "sum of perf/epoch_seconds, hours",
            )
        )
    else:
        checks.append(Check("duration", "not measured", None, thr))

    checks.append(_steps_complete(history))

    if run_status:
        ok = run_status.upper() == "FINISHED"
        checks.append(
            Check("run_finished", "pass" if ok else "fail", run_status.upper(), "FINISHED")
        )
    else:
        checks.append(Check("run_finished", "not measured", None, "FINISHED"))
    return checks


def _steps_complete(history: pd.DataFrame) -> Check:
    """Every epoch between the first and last logged one has its training loss (the trainer
    logs every contract key every epoch): a gap is a step lost to a crash or the store."""
    name, thr = "steps_complete", f"{C.TRAIN_LOSS} at every epoch"
    if C.TRAIN_LOSS not in history.columns:
        return Check(name, "not measured", None, thr)
    col = pd.to_numeric(history[C.TRAIN_LOSS], errors="coerce")
    steps = col.index[col.notna()].to_numpy(dtype=float)
    if not len(steps):
        return Check(name, "not measured", None, thr)
    expected = np.arange(steps[0], steps[-1] + 1)
    missing = np.setdiff1d(expected, steps)
    note = ", ".join(f"{m:g}" for m in missing[:10]) + (" ..." if len(missing) > 10 else "")
    return Check(name, "fail" if len(missing) else "pass", int(len(missing)), thr, note)
