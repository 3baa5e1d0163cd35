"""Units a metric is logged in that the detector reads otherwise.

An accuracy in percent (many training scripts log 97.3, not 0.973): the `accuracy` role is a
fraction (DESIGN.md) and the detector's sizes are written in its points, so a percent accuracy
read as logged makes every wobble of a point a rise of 100. One whose finite values lie in
[0, 100] with some above 1 is read as that fraction instead.

A perplexity (`val_ppl`, language-model trainers): the exponential of a cross-entropy, so it
falls to 1, not 0, and a loss's fall over decades is a perplexity's fall to 1.0001. A loss role
whose key names one is read as its log, the cross-entropy it was computed from.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import pandas as pd

from tvae.analysis.roles import LOG_ROLES, Roles, key_words

#: Words that name a perplexity in a key ...
PERPLEXITY = ("ppl", "perplexity")
#: ... unless the key also names its log or a loss (`val_log_ppl`, `ppl_loss`): the cross-entropy.
CROSS_ENTROPY = ("loss", "nll", "ce", "xent")

#: Above this an accuracy is not a fraction (float noise on 1.0 aside) ...
FRACTION_MAX = 1.0 + 1e-9
#: ... and up to this it is a percent.
PERCENT_MAX = 100.0 + 1e-9


def percent_scale(history: pd.DataFrame, key: str | None) -> float:
    """0.01 when ``key`` holds a percent accuracy, else 1."""
    if not key or key not in history.columns:
        return 1.0
    v = history[key].to_numpy(dtype=float)
    v = v[np.isfinite(v)]
    if len(v) and v.min() >= 0.0 and FRACTION_MAX < v.max() <= PERCENT_MAX:
        return 0.01
    return 1.0


def as_fraction(history: pd.DataFrame, roles: Roles) -> tuple[pd.DataFrame, str | None]:
    """``history`` with a percent accuracy as a fraction, and a note saying so."""
    key = roles.accuracy
    if percent_scale(history, key) == 1.0:
        return history, None
    out = history.copy()
    out[key] = out[key] / 100.0
    top = float(np.nanmax(history[key].to_numpy(dtype=float)))
    return out, f"{key} read as a percent (largest value {top:g}): divided by 100"


@cache  # asked for each batch of rows the live follower reads
def is_perplexity(key: str | None) -> bool:
    """Whether ``key`` names a perplexity (`val_ppl`, `eval/perplexity`), not its log."""
    words = key_words(key or "")
    return any(w in PERPLEXITY for w in words) and not any(
        w == "log" or w in CROSS_ENTROPY for w in words
    )


def loss_values(key: str, values: np.ndarray) -> np.ndarray:
    """A loss role's values as a loss: a perplexity's log (1 reads as 0; a placeholder 0 stays
    0, for `series.as_loss` to read as it reads a loss's), else as logged."""
    if not is_perplexity(key):
        return values
    values = np.asarray(values, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(values > 0, np.log(values), np.minimum(values, 0.0))


def read_as(role: str, key: str) -> str:
    """How the detector reads ``key`` in ``role``, to name its values: `log(val_ppl)`."""
    return f"log({key})" if role in LOG_ROLES and is_perplexity(key) else key


def perplexity_as_loss(history: pd.DataFrame, roles: Roles) -> tuple[pd.DataFrame, str | None]:
    """``history`` with each loss role that names a perplexity as its log, and a note."""
    keys = [
        k
        for k in dict.fromkeys(getattr(roles, r) for r in LOG_ROLES)
        if k in history.columns and is_perplexity(k)
    ]
    if not keys:
        return history, None
    out = history.copy()
    for k in keys:
        out[k] = loss_values(k, out[k].to_numpy(dtype=float))
    return out, f"{', '.join(keys)} read as perplexities: their logs (cross-entropies) analysed"
