"""Every detection and tier threshold, with the seed's values as defaults (DESIGN.md)."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError


class Thresholds(BaseModel):
    """Configurable thresholds. Fractions are in [0, 1]; "points" are accuracy fractions."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # grokking (seed: plateau >=15 epochs, loss change <1e-4, >2 points within <=3 epochs,
    # sustained >=5 epochs, visible in >=2 metrics)
    plateau_min_epochs: float = 15
    plateau_loss_change: float = 1e-4
    plateau_loss_log_change: float = 0.01  # |d ln(loss)| per epoch: "flat in relative terms"
    breakthrough_points: float = 0.02
    breakthrough_epochs: float = 3
    sustain_epochs: float = 5
    min_metrics: int = 2
    # scale-aware suddenness: the rise may be long in epochs but short next to the plateau
    sudden_ratio: float = 0.5
    candidate_min_plateau_epochs: float = 5
    plateau_band_frac: float = 0.25
    noise_sigmas: float = 4.0
    val_loss_drop_log10: float = 0.5
    recovery_frac: float = 0.8
    # severity (seed: micro plateau 5-10 / +1-3 points, standard 15-25 / +3-8, major 25+ / >8)
    severity_standard_plateau: float = 15
    severity_major_plateau: float = 25
    severity_standard_points: float = 0.03
    severity_major_points: float = 0.08
    severity_standard_log10: float = 1.0
    severity_major_log10: float = 2.0
    # confounds
    confound_window_epochs: float = 5
    confound_window_frac: float = 0.25
    lr_change_rel: float = 0.1
    quantised_max_steps: float = 2
    quantised_max_distinct_frac: float = 0.2
    # tiers (hierarchy "at or below")
    minimal_coverage: float = 0.80
    minimal_hierarchy: float = -0.5
    minimal_quality: float = 1.0
    good_coverage: float = 0.95
    good_hierarchy: float = -0.7
    good_quality: float = 1.5
    excellent_coverage: float = 0.99
    excellent_hierarchy: float = -0.8
    excellent_quality: float = 2.0
    exceptional_coverage: float = 1.0
    exceptional_hierarchy: float = -0.82
    exceptional_quality: float = 2.2
    # infrastructure checks
    gpu_utilization_min: float = 80.0
    vram_peak_max: float = 0.95
    samples_per_sec_min: float = 2000.0
    max_duration_hours: float | None = None
    # phases
    phase_grid_points: int = 240
    phase_penalty_scale: float = 1.0
    phase_plateau_rate: float = 0.2
    phase_fast_rate: float = 2.0
    phase_min_delta: float = 0.01


def load_thresholds(path: str | Path | None) -> Thresholds:
    """Read thresholds from YAML (a partial mapping is fine); unknown keys raise ValueError."""
    if path is None or str(path) == "":
        return Thresholds()
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"thresholds file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0]
        raise ValueError(f"thresholds file {p} is not valid YAML: {first}") from None
    if not isinstance(data, dict):
        raise ValueError(f"thresholds file {p} must hold a mapping of threshold: value")
    unknown = sorted(set(data) - set(Thresholds.model_fields))
    if unknown:
        raise ValueError(f"thresholds file {p}: unknown threshold {unknown[0]!r}")
    try:
        return Thresholds(**data)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ValueError(f"thresholds file {p}: {err['loc'][0]}: {err['msg']}") from None
