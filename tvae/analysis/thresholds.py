"""Every detection and tier threshold, nested by section, with the seed's values as defaults.

A thresholds YAML overrides any single value by its section, e.g. ``plateau: {min_epochs: 20}``
or ``tiers: {good: {coverage: 0.97}}``; everything not named keeps its default.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Plateau(_Section):
    """The stagnant stretch before a transition (seed: >= 15 epochs)."""

    min_epochs: float = 15
    candidate_min_epochs: float = 5  # shorter stagnation is not even a candidate
    band_frac: float = 0.25  # "stagnant": within this share of the jump of the plateau level


class Breakthrough(_Section):
    """The rise itself (seed: > 2 points within <= 3 epochs; scale-aware for long runs)."""

    points: float = 0.02  # accuracy roles: fraction, so 0.02 = 2 points
    slow_points: float = 0.1  # a rise slower than `epochs` must be at least this large
    val_loss_log10: float = 0.5  # loss roles: drop in decades
    epochs: float = 3
    sudden_ratio: float = 1.0  # or rise <= this share of the plateau (epochs or log-epochs)
    noise_sigmas: float = 4.0  # a swing must also exceed this many noise sigmas
    loss_span_log10: float = 1.5  # loss roles: a transition is its first decades of drop


class Sustain(_Section):
    """The new level must hold (seed: >= 5 epochs), and for a share of the rise's length."""

    epochs: float = 5
    rise_frac: float = 0.1


class Delay(_Section):
    """Grokking is delayed generalisation: the rise comes long after the training fit."""

    factor: float = 2.0  # generalised at >= factor x the epoch the training loss fitted
    fit_gap: float = 10.0  # fitted: training loss this factor below the validation loss ...
    fit_frac: float = 0.05  # ... or, without that gap, within this share of its drop
    min_drop: float = 2.0  # from its start to the plateau, having fallen at least this factor
    # (and, with both losses and no gap, not this factor more over the plateau's second half)


class Collapse(_Section):
    """A slow fall of the validation loss long after the fit (`tvae.analysis.collapse`)."""

    min_log10: float = 1.5  # decades from its level at the fit to its final level


class Severity(_Section):
    """Seed: micro (plateau 5-10, +1-3 points), standard (15-25, +3-8), major (25+, > 8)."""

    standard_plateau: float = 15
    major_plateau: float = 25
    standard_points: float = 0.03
    major_points: float = 0.08
    standard_log10: float = 1.0
    major_log10: float = 2.0


class Confounds(_Section):
    """False positives: scheduled changes, collapse-and-recovery, logging precision."""

    window_epochs: float = 5  # a control change this close before the jump is a confound
    window_frac: float = 0.25  # ... or within this share of the rise's or plateau's length
    lr_change_rel: float = 0.1
    recovery_frac: float = 0.8  # a level already reached before: a recovery, not an event
    partial_frac: float = 0.5  # a rise short of this share of the way a later confounded
    # jump of the same metric took it is that jump's start (a warm restart finished it)
    quantised_max_steps: float = 2
    quantised_max_distinct_frac: float = 0.2


class Tier(_Section):
    """One tier's bar: coverage above, hierarchy at or below, Q above."""

    coverage: float
    hierarchy: float
    quality: float


class Tiers(_Section):
    minimal: Tier = Tier(coverage=0.80, hierarchy=-0.5, quality=1.0)
    good: Tier = Tier(coverage=0.95, hierarchy=-0.7, quality=1.5)
    excellent: Tier = Tier(coverage=0.99, hierarchy=-0.8, quality=2.0)
    exceptional: Tier = Tier(coverage=1.0, hierarchy=-0.82, quality=2.2)


class Checks(_Section):
    gpu_utilization_min: float = 80.0
    vram_peak_max: float = 0.95
    samples_per_sec_min: float = 2000.0
    max_duration_hours: float | None = None


class Phases(_Section):
    grid_points: int = 240
    penalty_scale: float = 1.0
    plateau_rate: float = 0.2
    fast_rate: float = 2.0
    min_delta: float = 0.01


class Thresholds(_Section):
    """All configurable thresholds. Fractions are in [0, 1]; "points" are accuracy fractions."""

    plateau: Plateau = Plateau()
    breakthrough: Breakthrough = Breakthrough()
    sustain: Sustain = Sustain()
    delay: Delay = Delay()
    collapse: Collapse = Collapse()
    severity: Severity = Severity()
    confounds: Confounds = Confounds()
    tiers: Tiers = Tiers()
    checks: Checks = Checks()
    phases: Phases = Phases()

    def per_step(self, steps_per_epoch: float) -> Thresholds:
        """These thresholds for a run whose x-axis is optimizer steps: every length counted in
        epochs (`EPOCH_COUNTED`) becomes that many epochs' worth of steps."""
        update = {}
        for section, name in EPOCH_COUNTED:
            part = update.get(section) or getattr(self, section)
            scaled = steps_per_epoch * getattr(part, name)
            update[section] = part.model_copy(update={name: scaled})
        return self.model_copy(update=update)


#: The thresholds that count epochs (every other one is a ratio, a level or a fraction).
EPOCH_COUNTED = (
    ("plateau", "min_epochs"),
    ("plateau", "candidate_min_epochs"),
    ("breakthrough", "epochs"),
    ("sustain", "epochs"),
    ("confounds", "window_epochs"),
    ("severity", "standard_plateau"),
    ("severity", "major_plateau"),
)


def _merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_thresholds(path: str | Path | None) -> Thresholds:
    """Read thresholds from YAML (any subset, nested by section); bad input raises ValueError."""
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
        raise ValueError(f"thresholds file {p} must hold a mapping of section: {{name: value}}")
    try:
        return Thresholds.model_validate(_merge(Thresholds().model_dump(), data))
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(part) for part in err["loc"])
        what = "unknown threshold" if err["type"] == "extra_forbidden" else err["msg"]
        raise ValueError(f"thresholds file {p}: {where}: {what}") from None
