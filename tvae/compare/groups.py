"""Runs grouped by config across seeds: a seed is one draw, a config is what a user chooses.

Runs whose params differ only in `train.seed` (or the runs of one sweep trial) form one group;
per group the table gives the mean and spread over its seeds of each key metric's best value,
and the band plots draw the mean over seeds by epoch inside a mean +- std band, with every
seed's grokking events marked.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from tvae import contract as C
from tvae.compare.runs import ComparedRun, align_by_epoch
from tvae.compare.table import KEY_METRICS, best_and_final

SEED_PARAM = "train.seed"


def config_key(
    run_name: str, params: Mapping[str, str], tags: Mapping[str, str]
) -> tuple[str, str]:
    """(group id, readable name) of a run: its sweep trial, else its params minus the seed."""
    if C.SWEEP_TRIAL in tags:
        study = tags.get(C.SWEEP_STUDY, "")
        return f"sweep:{study}:{tags[C.SWEEP_TRIAL]}", f"{study} trial {tags[C.SWEEP_TRIAL]}"
    rest = {k: v for k, v in params.items() if k != SEED_PARAM}
    digest = hashlib.sha256(json.dumps(rest, sort_keys=True).encode()).hexdigest()[:8]
    name = re.sub(r"-s\d+(?=-|$)", "", run_name or "run")  # run names carry -s<seed>
    return f"params:{digest}", f"{name} [{digest[:6]}]"


def groups(compared: Sequence[ComparedRun]) -> dict[str, list[ComparedRun]]:
    """Readable config name -> its runs, in the order first seen."""
    out: dict[str, list[ComparedRun]] = {}
    for item in compared:
        out.setdefault(item.config or item.label, []).append(item)
    return out


def has_seed_groups(compared: Sequence[ComparedRun]) -> bool:
    """Whether any config was run on more than one seed (else grouping adds nothing)."""
    return any(len(runs) > 1 for runs in groups(compared).values())


def group_table(compared: Sequence[ComparedRun]) -> pd.DataFrame:
    """One row per config: seeds, best-value mean and std over seeds per key metric, how many
    seeds grokked, the tiers; best first by mean best Q."""
    rows = []
    for name, runs in groups(compared).items():
        row: dict = {"config": name, "seeds": len(runs)}
        for key, short, higher in KEY_METRICS:
            best = np.array([best_and_final(r.history, key, higher)[0] for r in runs], float)
            finite = best[np.isfinite(best)]
            row[f"best_{short}_mean"] = finite.mean() if len(finite) else np.nan
            row[f"best_{short}_std"] = finite.std() if len(finite) else np.nan
        row["grokking"] = f"{sum(bool(r.analysis.events) for r in runs)}/{len(runs)}"
        tiers = pd.Series([r.analysis.tier for r in runs]).value_counts()
        row["tiers"] = ", ".join(f"{tier} x{n}" for tier, n in tiers.items())
        row["runs"] = " ".join(r.run_id for r in runs)
        rows.append(row)
    table = pd.DataFrame(rows)
    return table.sort_values("best_Q_mean", ascending=False, na_position="last", kind="stable")


def band_frame(runs: Sequence[ComparedRun], key: str) -> pd.DataFrame:
    """Mean, std, min and max over a group's seeds by epoch (epochs some seeds lack: the rest)."""
    aligned = align_by_epoch(runs, key)
    return pd.DataFrame(
        {
            "mean": aligned.mean(axis=1),
            "std": aligned.std(axis=1, ddof=0),
            "min": aligned.min(axis=1),
            "max": aligned.max(axis=1),
            "n": aligned.count(axis=1),
        }
    ).dropna(subset=["mean"])
