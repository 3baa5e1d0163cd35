"""The corpus labelling rule (tests/corpus/README.md), applied to a run's logged accuracies.

The detector never sees these labels; the benchmark scores it against them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

FIT_ACC = 0.99  # the training set is fitted once train accuracy reaches this
GEN_FRAC = 0.95  # generalised: val accuracy covers this share of the way from chance to its top
NEAR_FRAC = 0.10  # near chance: val accuracy below this share of the way from chance to its top
MIN_GAIN = 0.5  # a generalising run's top val accuracy covers this share of chance-to-1
DELAY = 3.0  # grokking: generalised at >= DELAY x the fit epoch ...
QUIET = 2.0  # ... with val accuracy near chance until >= QUIET x the fit epoch


def _first(epochs: np.ndarray, mask: np.ndarray) -> float | None:
    return float(epochs[np.argmax(mask)]) if mask.any() else None


def label(history: pd.DataFrame, classes: int, lr_steps: list[int]) -> dict:
    """Class and onset window of one run.

    Classes: ``grokking`` (one delayed transition, onset window [last near-chance epoch, first
    generalised epoch]); ``fast`` (generalised within DELAY x the fit: no delay); ``none`` (never
    generalised, or never fitted); ``lr_confound`` (the transition's window holds a scheduled LR
    jump); ``gradual`` (generalised late, but val accuracy left chance soon after the fit).
    """
    e = history.index.to_numpy(dtype=float)
    train = history["train_acc"].to_numpy(dtype=float)
    val = history["val_acc"].to_numpy(dtype=float)
    chance = 1.0 / classes
    smooth = pd.Series(val).rolling(5, center=True, min_periods=1).median().to_numpy()
    top = float(smooth.max())
    fit = _first(e, train >= FIT_ACC)
    out: dict = {"chance": chance, "top": round(top, 6), "fit": fit}
    if fit is None or top - chance < MIN_GAIN * (1 - chance):
        out.update(cls="none", generalised=None, window=None)
        return out
    gen = _first(e, val >= chance + GEN_FRAC * (top - chance))
    near = val <= chance + NEAR_FRAC * (top - chance)
    before = (e < gen) & near
    last_near = float(e[before][-1]) if before.any() else None
    out.update(generalised=gen, last_near_chance=last_near, delay=round(gen / fit, 3))
    if gen < DELAY * fit:
        out.update(cls="fast", window=None)
    elif last_near is None or last_near < QUIET * fit:
        out.update(cls="gradual", window=None)
    elif any(last_near - 0.25 * (gen - last_near) <= s <= gen for s in lr_steps):
        out.update(cls="lr_confound", window=None)
    else:
        out.update(cls="grokking", window=[last_near, gen])
    return out
