"""A sweep's input: the search space (YAML over dotted config keys), the metric and its
direction, and the validated `SweepSpec` every worker gets. Everything here is checked before
any run or study is written (`SweepInputError`, one line)."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tvae import contract as C
from tvae.config import ConfigError, load_config
from tvae.losses import TERMS

DEFAULT_STORAGE_FILE = "optuna-journal.log"
#: metrics a sweep may optimise (the training run's per-epoch contract keys)
METRICS = (
    C.EVAL_KEYS
    + C.LATENT_EVAL_KEYS
    + (C.TRAIN_LOSS,)
    + tuple(C.loss_term(t) for t in TERMS)
    + (C.SAMPLES_PER_SEC, C.EPOCH_SECONDS)
)


class SweepInputError(ValueError):
    """Bad sweep input; the message is one line. Raised before anything is written."""


#: The sweep's pruners (`sweep_pruner.make_pruner`), the default first.
PRUNERS = ("grokking", "median", "none")


@dataclass(frozen=True)
class Dimension:
    key: str
    kind: str  # float | int | categorical
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()

    def distribution(self) -> Any:
        import optuna.distributions as d

        if self.kind == "float":
            return d.FloatDistribution(self.low, self.high, log=self.log)
        if self.kind == "int":
            return d.IntDistribution(self.low, self.high, log=self.log)
        return d.CategoricalDistribution(list(self.choices))

    def describe(self) -> str:
        if self.kind == "categorical":
            return "categorical[" + ",".join(map(str, self.choices)) + "]"
        return f"{self.kind}[{self.low},{self.high}]" + (" log" if self.log else "")

    def extremes(self) -> list[Any]:
        return list(self.choices) if self.kind == "categorical" else [self.low, self.high]


@dataclass(frozen=True)
class SweepSpec:
    """Everything a worker needs (picklable: spawned workers get a copy)."""

    space_path: str
    dims: tuple[Dimension, ...]
    fixed: dict[str, Any]
    config_path: str
    trials: int
    seeds: int
    metric: str
    direction: str  # minimize | maximize
    study: str
    storage: str  # URL (RDB) or journal file path
    workers: int = 1
    timeout: float | None = None
    tracking_uri: str = ""
    pruner: str = "grokking"  # one of PRUNERS
    register: bool = False  # register the best trial's best seed's model at the end
    model_name: str = "TernaryVAE"
    min_tier: str = "Good"  # the tier a registered model needs, as analyze's min_tier
    heartbeat: int = 60  # seconds between a running trial's heartbeats (database storage)

    @property
    def all_categorical(self) -> bool:
        return all(d.kind == "categorical" for d in self.dims)

    @property
    def grid_size(self) -> int:
        return math.prod(len(d.choices) for d in self.dims) if self.all_categorical else 0

    @property
    def sampler_name(self) -> str:
        return "GridSampler" if self.all_categorical else "TPESampler"

    @property
    def target(self) -> int:
        """How many trials the study ends with (a grid has no more points than its size)."""
        return min(self.trials, self.grid_size) if self.all_categorical else self.trials

    def overrides(self, params: dict[str, Any], seed: int) -> dict[str, Any]:
        return {**self.fixed, **params, "train.seed": seed}


def _number(value: Any, what: str, integer: bool) -> float | int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SweepInputError(f"{what} must be a number, got {value!r}")
    if integer and not float(value).is_integer():
        raise SweepInputError(f"{what} must be an integer, got {value!r}")
    return int(value) if integer else float(value)


def _dimension(path: str, key: str, body: Any) -> Dimension:
    where = f"{path}: '{key}'"
    if not isinstance(body, dict):
        raise SweepInputError(f"{where} must be a mapping with a 'type' (float, int, categorical)")
    kind = body.get("type")
    if kind == "categorical":
        unknown = set(body) - {"type", "choices"}
        choices = body.get("choices")
        if not isinstance(choices, list) or not choices:
            raise SweepInputError(f"{where}: 'choices' must be a non-empty list")
        for c in choices:
            if c is not None and not isinstance(c, bool | int | float | str):
                raise SweepInputError(f"{where}: choice {c!r} is not a number, string or bool")
        if len({json.dumps(c) for c in choices}) != len(choices):
            raise SweepInputError(f"{where}: 'choices' has duplicates")
        if unknown:
            raise SweepInputError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
        return Dimension(key, kind, choices=tuple(choices))
    if kind in ("float", "int"):
        unknown = set(body) - {"type", "low", "high", "log"}
        if unknown:
            raise SweepInputError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
        if "low" not in body or "high" not in body:
            raise SweepInputError(f"{where}: a {kind} range needs 'low' and 'high'")
        low = _number(body["low"], f"{where} low", kind == "int")
        high = _number(body["high"], f"{where} high", kind == "int")
        log = body.get("log", False)
        if not isinstance(log, bool):
            raise SweepInputError(f"{where}: 'log' must be true or false")
        if low >= high:
            raise SweepInputError(f"{where}: low ({low}) must be below high ({high})")
        if log and low <= 0:
            raise SweepInputError(f"{where}: a log range needs low > 0, got {low}")
        return Dimension(key, kind, low=low, high=high, log=log)
    raise SweepInputError(f"{where}: type must be float, int or categorical, got {kind!r}")


def parse_space(path: str | Path) -> tuple[tuple[Dimension, ...], dict[str, Any]]:
    """(dimensions, fixed overrides) of a space file; SweepInputError (one line) when bad."""
    path = Path(path)
    if not path.is_file():
        raise SweepInputError(f"space file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise SweepInputError(f"{path}: not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict) or not data:
        raise SweepInputError(f"{path}: must be a mapping of dotted config keys to ranges")
    data = dict(data)
    fixed = data.pop("fixed", None) or {}
    if not isinstance(fixed, dict):
        raise SweepInputError(f"{path}: 'fixed' must be a mapping of dotted config keys to values")
    dims = tuple(_dimension(str(path), str(k), v) for k, v in data.items())
    if not dims:
        raise SweepInputError(f"{path}: no dimension to search (only 'fixed')")
    for key in [d.key for d in dims] + list(fixed):
        if key == "train.seed":
            raise SweepInputError(f"{path}: 'train.seed' is set by the sweep (seeds=K), not here")
    both = sorted({d.key for d in dims} & set(fixed))
    if both:
        raise SweepInputError(f"{path}: '{both[0]}' is both searched and fixed")
    return dims, {str(k): v for k, v in fixed.items()}


def direction_for(metric: str, direction: str | None) -> str:
    """minimize | maximize: given, else from the key (losses and hierarchy minimise)."""
    if metric not in METRICS:
        raise SweepInputError(
            f"metric '{metric}' is not a training metric; use one of {', '.join(METRICS)}"
        )
    if direction:
        d = direction.strip().lower()
        named = {"min": "minimize", "minimize": "minimize", "max": "maximize"}
        named["maximize"] = "maximize"
        if d not in named:
            raise SweepInputError(f"direction '{direction}' is not minimize or maximize")
        return named[d]
    lower_better = "loss" in metric or metric.startswith("eval/hierarchy") or "seconds" in metric
    return "minimize" if lower_better else "maximize"


def check_configs(config_path: str, dims: tuple[Dimension, ...], fixed: dict[str, Any]) -> None:
    """Every dimension's bounds (or choices) load with the base config and the fixed values:
    an unknown key or out-of-range value is a ConfigError before anything runs."""
    load_config(config_path, fixed)
    for dim in dims:
        for value in dim.extremes():
            try:
                load_config(config_path, {**fixed, dim.key: value})
            except ConfigError as err:
                raise SweepInputError(f"space '{dim.key}'={value!r}: {err}") from None


def default_storage(tracking_uri: str) -> str:
    """A journal file beside the MLflow store (SQLite or file store), else in this folder."""
    folder = Path.cwd()
    if tracking_uri.startswith("sqlite:///"):
        folder = Path(tracking_uri[len("sqlite:///") :]).expanduser().resolve().parent
    elif tracking_uri.startswith("file:"):
        folder = Path("/" + tracking_uri[len("file:") :].lstrip("/")).resolve().parent
    elif tracking_uri and "://" not in tracking_uri:
        folder = Path(tracking_uri).expanduser().resolve().parent
    return str(folder / DEFAULT_STORAGE_FILE)


def mask_password(url: str) -> str:
    """postgresql://user:secret@host/db -> postgresql://user:***@host/db"""
    return re.sub(r"(://[^:/@]*:)[^/]*@", r"\1***@", url)


def is_url(storage: str) -> bool:
    return "://" in storage and not storage.startswith("journal:")
