"""Training configuration as plain, validated data.

One pydantic model per YAML section; unknown keys, wrong types and out-of-range values are
rejected with one line naming the dotted field, so a typo never trains silently.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)


class ConfigError(ValueError):
    """A config file or override is invalid; the message is one line naming the field."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Section):
    stratified: bool = False
    stratified_share: float = Field(0.25, ge=0.0, le=1.0)
    stratified_min_valuation: int = Field(2, ge=1, le=9)


class ModelConfig(_Section):
    encoder_hidden: list[int] = Field(default_factory=lambda: [256, 128, 64], min_length=1)
    decoder_hidden: list[int] = Field(default_factory=lambda: [32, 64], min_length=1)
    latent_dim: int = Field(16, ge=2, le=256)
    projection_hidden: int = Field(32, ge=4, le=1024)
    max_radius: float = Field(0.95, gt=0.0, lt=1.0)
    activation: Literal["silu", "relu"] = "silu"
    # recompute the encoders' and decoder's activations in backward instead of keeping them
    # (torch.utils.checkpoint): less memory for more compute; results unchanged
    activation_checkpointing: bool = False


class TrainConfig(_Section):
    epochs: int = Field(50, ge=1, le=1_000_000)
    batch_size: int = Field(512, ge=1, le=19683)
    lr: float = Field(8e-4, gt=0.0, le=1.0)
    weight_decay: float = Field(1e-4, ge=0.0, le=1.0)
    grad_clip: float = Field(1.0, gt=0.0)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"
    device: str = "auto"
    eval_every: int = Field(1, ge=1)
    checkpoint_every: int = Field(10, ge=1)
    # CPU threads: with 2 or more, branches A and B train at once, B on a worker thread
    # (tvae.branches), each with threads // 2 intra-op threads; 0 = torch's default (all cores)
    threads: int = Field(2, ge=0, le=1024)
    # the live grokking detector follows the run as it trains (grokking.live.* tags)
    live: bool = True
    # stop this many epochs after the live detector confirms grokking (FINISHED); None: never
    stop_after_grokking: int | None = Field(None, ge=0)

    @field_validator("device")
    @classmethod
    def _known_device(cls, device: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", device):
            raise ValueError("not one of auto, cpu, cuda, cuda:N, mps")
        return device


class ScheduleConfig(_Section):
    """Multi-phase LR: exploration (cosine warm restarts), grokking search, fine tuning."""

    exploration_frac: float = Field(0.4, gt=0.0, lt=1.0)
    restarts: int = Field(2, ge=1, le=100)
    search_frac: float = Field(0.3, ge=0.0, lt=1.0)
    search_lr_scale: float = Field(0.5, gt=0.0, le=1.0)
    final_lr_scale: float = Field(0.02, ge=0.0, le=1.0)
    min_lr_scale: float = Field(0.1, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _fractions_fit(self) -> ScheduleConfig:
        if self.exploration_frac + self.search_frac >= 1.0:
            raise ValueError("exploration_frac + search_frac must be < 1")
        return self


class WeightTerm(_Section):
    weight: float = Field(1.0, ge=0.0)


class KLTerm(WeightTerm):
    beta: float = Field(0.001, ge=0.0)
    warmup_epochs: int = Field(5, ge=0)


class RadialTerm(WeightTerm):
    inner_radius: float = Field(0.1, gt=0.0, lt=1.0)
    outer_radius: float = Field(0.85, gt=0.0, lt=1.0)

    @model_validator(mode="after")
    def _ordered(self) -> RadialTerm:
        if self.inner_radius >= self.outer_radius:
            raise ValueError("inner_radius must be < outer_radius")
        return self


class PairTerm(WeightTerm):
    pairs: int = Field(512, ge=1)
    margin: float = Field(0.02, ge=0.0)


class GeodesicTerm(WeightTerm):
    pairs: int = Field(512, ge=1)
    start_epoch: int = Field(20, ge=0)
    scale: float = Field(2.0, gt=0.0)


class SeparationTerm(WeightTerm):
    """Per-level mean radii ordered, margin per level of valuation gap."""

    margin: float = Field(0.01, ge=0.0)


class LatentTerm(WeightTerm):
    """Ranking hinge on Euclidean distances of B's points: of two in-batch pairs, the one with
    the larger |dv| must be at least `margin` farther apart (eval/dist_corr_latent's order)."""

    pairs: int = Field(512, ge=1)
    margin: float = Field(0.02, ge=0.0)


class RichnessTerm(WeightTerm):
    min_spread: float = Field(0.01, ge=0.0)


class LossConfig(_Section):
    recon: WeightTerm = Field(default_factory=WeightTerm)
    kl: KLTerm = Field(default_factory=KLTerm)
    radial: RadialTerm = Field(default_factory=RadialTerm)
    rank: PairTerm = Field(default_factory=lambda: PairTerm(weight=0.5))
    geodesic: GeodesicTerm = Field(default_factory=lambda: GeodesicTerm(weight=0.3))
    richness: RichnessTerm = Field(default_factory=lambda: RichnessTerm(weight=0.1))
    separation: SeparationTerm = Field(default_factory=lambda: SeparationTerm(weight=0.1))
    latent: LatentTerm = Field(default_factory=lambda: LatentTerm(weight=0.0))


class HomeostasisConfig(_Section):
    enabled: bool = True
    warmup_epochs: int = Field(10, ge=0)
    hysteresis_epochs: int = Field(5, ge=0)
    patience: int = Field(5, ge=1)
    coverage_freeze: float = Field(0.995, ge=0.0, le=1.0)
    coverage_unfreeze: float = Field(0.98, ge=0.0, le=1.0)
    hierarchy_tolerance: float = Field(0.002, ge=0.0)


class TVAEConfig(_Section):
    name: str = Field("v5.12.4", min_length=1, max_length=100)
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    homeostasis: HomeostasisConfig = Field(default_factory=HomeostasisConfig)


# keys that once existed and no longer change anything: dropped, so the configs stored in
# older checkpoints and runs still load
RETIRED_KEYS = (("train", "branch_workers"),)


def _one_line(err: ValidationError, source: str, given: Mapping[str, str]) -> str:
    """The first error in one line, blaming where its value came from: the option that gave
    it (``given``: dotted field -> option), else ``source``."""
    first = err.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or "<root>"
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    elif first["type"] == "value_error":  # a validator's own words, without pydantic's prefix
        msg = str(first["ctx"]["error"])
    extra = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    if field in given:
        return f"{given[field]}: invalid value {first.get('input')!r}: {msg}{extra}"
    return f"{source}: invalid config field '{field}': {msg}{extra}"


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    node = data
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override '{dotted}': '{part}' is not a section")
    node[parts[-1]] = value


def config_from_dict(
    data: dict[str, Any],
    overrides: dict[str, Any] | None = None,
    source: str = "config",
    given: Mapping[str, str] | None = None,
) -> TVAEConfig:
    """Validate a raw mapping plus dotted overrides (e.g. {"train.lr": 1e-3}); ``given``
    names the option each override came from, for the error."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: top level must be a mapping, got {type(data).__name__}")
    merged = yaml.safe_load(yaml.safe_dump(data))  # deep copy of plain data
    for section, key in RETIRED_KEYS:
        if isinstance(merged.get(section), dict):
            merged[section].pop(key, None)
    for key, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(merged, key, value)
    try:
        return TVAEConfig.model_validate(merged)
    except ValidationError as err:
        raise ConfigError(_one_line(err, source, given or {})) from None


def load_config(
    path: str | Path,
    overrides: dict[str, Any] | None = None,
    given: Mapping[str, str] | None = None,
) -> TVAEConfig:
    """Read a YAML config file, apply dotted overrides, validate (``given``: as in
    `config_from_dict`)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {str(err).splitlines()[0]}") from None
    if not data:  # an empty file would silently train every default
        raise ConfigError(f"config file {path} is empty (give at least its name, or omit --config)")
    return config_from_dict(data, overrides, source=str(path), given=given)


def flatten_config(config: TVAEConfig) -> dict[str, str]:
    """Dotted key -> string value, for MLflow params (e.g. 'loss.geodesic.start_epoch')."""
    out: dict[str, str] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            out[prefix] = ",".join(map(str, node)) if isinstance(node, list) else str(node)

    walk("", config.model_dump(mode="json"))
    return out


def config_to_yaml(config: TVAEConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
