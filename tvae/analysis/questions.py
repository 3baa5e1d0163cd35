"""The seed's checklist, immediate and deep analysis questions, answered where data allows."""

from __future__ import annotations

import numpy as np
import pandas as pd

from tvae import contract as C
from tvae.analysis.confounds import ControlChange
from tvae.analysis.roles import Roles
from tvae.analysis.units import read_as


def _lr_phases(history: pd.DataFrame, roles: Roles, present: set[str]):
    """(key, list of (start epoch, end epoch, value)) for the LR-phase signal, if any."""
    for key in (C.LR_PHASE, roles.lr):
        if key and key in present:
            s = history[key].dropna()
            if s.empty:
                continue
            change = s.ne(s.shift()).cumsum()
            spans = [
                (float(g.index[0]), float(g.index[-1]), float(g.iloc[0]))
                for _, g in s.groupby(change)
            ]
            return key, spans
    return None, []


def answer_questions(
    report, history: pd.DataFrame, roles: Roles, present: set[str], controls: list[ControlChange]
) -> dict[str, str]:
    a: dict[str, str] = {}
    conf, rej = report.confirmed, report.rejected
    a["Did grokking occur?"] = (
        f"yes: {len(conf)} confirmed event(s)" if conf else "no confirmed grokking event"
    )
    if conf:
        c = conf[0]
        a["When and how severe was the first event?"] = (
            f"epoch {c.breakthrough_epoch:g}, {c.severity}, +{c.size:.3g} {c.size_unit} after a "
            f"{c.plateau_end - c.plateau_start:g}-epoch plateau"
        )
        a["Was the improvement sustained?"] = "; ".join(
            f"epoch {x.breakthrough_epoch:g}: {x.sustained_for:g} epochs" for x in conf
        )
        a["Which metrics moved together?"] = "; ".join(
            f"epoch {x.breakthrough_epoch:g}: {', '.join(x.metrics)}" for x in conf
        )
    a["Were candidates rejected, and why?"] = (
        "; ".join(f"epoch {x.breakthrough_epoch:g}: {x.reason}" for x in rej) if rej else "none"
    )
    if report.tier:
        a["What tier was reached, and what kept it from the next?"] = (
            f"{report.tier.name} (final); " + (report.tier.blocking or "top tier")
        )
    failed = [c.name for c in report.checks if c.status == "fail"]
    a["Did the infrastructure checks pass?"] = (
        f"failed: {', '.join(failed)}" if failed else "no failures among measured checks"
    )
    if report.phases:
        a["How many training phases, and where?"] = f"{len(report.phases)}; boundaries at " + (
            ", ".join(f"{b:g}" for b in report.boundaries) or "none"
        )
    # deep questions
    key, spans = _lr_phases(history, roles, present)
    if key and conf:
        where = []
        for c in conf:
            for s0, s1, val in spans:
                if s0 <= c.breakthrough_epoch <= s1:
                    where.append(f"epoch {c.breakthrough_epoch:g} in {key}={val:g} ({s0:g}-{s1:g})")
        a["Which LR phase did each event fall in?"] = "; ".join(where) or "unknown"
    freezes = [c for c in controls if c.key in (C.FROZEN_A, C.FROZEN_B)]
    if freezes and report.candidates:
        near = []
        for c in report.candidates:
            hits = [
                f
                for f in freezes
                if abs(f.epoch - c.plateau_end) <= max(5.0, 0.25 * (c.rise_end - c.plateau_end))
            ]
            if hits:
                near.append(
                    f"epoch {c.breakthrough_epoch:g} near {hits[0].key} change at {hits[0].epoch:g}"
                )
        a["Were events near a freeze/unfreeze?"] = "; ".join(near) or "no"
    if key and len(spans) > 1:
        parts = []
        for s0, s1, val in spans:
            moves = []
            for role in ("accuracy", "loss", "hierarchy", "quality"):
                k = getattr(roles, role)
                if k and k in present:
                    seg = history[k].loc[s0:s1].dropna()
                    if len(seg) >= 2:
                        moves.append(f"{read_as(role, k)} {seg.iloc[0]:.4g}->{seg.iloc[-1]:.4g}")
            parts.append(f"{key}={val:g} ({s0:g}-{s1:g}): " + (", ".join(moves) or "no data"))
        a["How did each LR phase move the key metrics?"] = "; ".join(parts)
    acc = roles.accuracy
    if acc and acc in present:
        s = history[acc].dropna()
        s = s[np.isfinite(s)]
        if len(s):
            a["Did the model regress after its best?"] = (
                f"best {s.max():.4g} at epoch {s.idxmax():g}, final {s.iloc[-1]:.4g}"
            )
    return a
