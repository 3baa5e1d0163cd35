"""Figures for the report: trajectories with events, rejected candidates, phases and controls."""

from __future__ import annotations

import matplotlib

from tvae import contract as C

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from tvae.analysis.confounds import control_changes  # noqa: E402
from tvae.analysis.phases import FAST, MEMORISATION, PLATEAU, REGRESSION, SLOW  # noqa: E402
from tvae.analysis.report import AnalysisReport  # noqa: E402
from tvae.analysis.roles import LOG_ROLES, Roles  # noqa: E402
from tvae.analysis.thresholds import Thresholds  # noqa: E402
from tvae.analysis.units import loss_values, read_as  # noqa: E402

PLOT_ROLES = ("loss", "val_loss", "accuracy", "hierarchy", "quality")
PHASE_COLORS = {
    FAST: "#8fd18f",
    SLOW: "#cfe8cf",
    PLATEAU: "#e6e6e6",
    REGRESSION: "#f2b8b8",
    MEMORISATION: "#f5deb3",
}


def _decorate(ax, report: AnalysisReport, changes, shade: bool = True) -> None:
    if shade:
        for p in report.phases:
            ax.axvspan(p.start, p.end, color=PHASE_COLORS[p.character], alpha=0.35, lw=0)
    for c in changes:
        ax.axvline(c.epoch, color="0.35", ls=":", lw=0.9)
    for c in report.confirmed:
        ax.axvspan(c.plateau_end, c.rise_end, color="tab:green", alpha=0.25, lw=0)
        ax.axvline(c.breakthrough_epoch, color="tab:green", lw=2)
    for c in report.rejected:
        ax.axvline(c.breakthrough_epoch, color="tab:red", ls="--", lw=1.5)


def plot_report(
    history: pd.DataFrame, report: AnalysisReport, roles: Roles | None = None
) -> dict[str, Figure]:
    """``{"trajectories.png": fig, "phases.png": fig}`` for the mapped roles that have data."""
    roles = roles or Roles()
    hist = history[[c for c in history.columns if not str(c).startswith(C.SYSTEM_PREFIX)]]
    hist = hist.sort_index()
    present = [
        (r, getattr(roles, r))
        for r in PLOT_ROLES
        if getattr(roles, r) in hist.columns and np.isfinite(hist[getattr(roles, r)]).any()
    ]
    changes = control_changes(hist, roles.control_columns(hist.columns), roles.lr, Thresholds())
    figs: dict[str, Figure] = {}

    n = max(len(present), 1)
    fig, axes = plt.subplots(n, 1, figsize=(10, 2.2 * n + 0.8), sharex=True, squeeze=False)
    for ax, (role, key) in zip(axes[:, 0], present, strict=False):
        s = hist[key].replace([np.inf, -np.inf], np.nan).dropna()
        if role in LOG_ROLES:  # as the detector reads it: a perplexity as its log
            s = pd.Series(loss_values(key, s.to_numpy(dtype=float)), index=s.index)
            if (s > 0).all():
                ax.set_yscale("log")
        ax.plot(s.index, s.to_numpy(), lw=1.2, color="tab:blue")
        ax.set_ylabel(read_as(role, key), fontsize=9)
        _decorate(ax, report, changes)
    if not present:
        axes[0, 0].text(0.5, 0.5, "no mapped metric has data", ha="center", va="center")
    axes[-1, 0].set_xlabel(report.x_unit)
    title = (
        f"{len(report.confirmed)} grokking event(s) (green), {len(report.rejected)} rejected "
        f"(red dashed), control changes dotted; tier {report.tier.name if report.tier else 'n/a'}"
    )
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    figs["trajectories.png"] = fig

    fig2, ax = plt.subplots(figsize=(10, 3.2))
    key = present[0][1] if present else None
    for role, k in present:
        if role in ("accuracy", "val_loss", "quality"):
            key = k
            break
    if key is not None:
        s = hist[key].replace([np.inf, -np.inf], np.nan).dropna()
        ax.plot(s.index, s.to_numpy(), color="k", lw=1.2)
        ax.set_ylabel(key)
    _decorate(ax, report, changes)
    for p in report.phases:
        ax.text(
            (p.start + p.end) / 2,
            1.01,
            p.character,
            transform=ax.get_xaxis_transform(),
            ha="center",
            fontsize=7,
            rotation=0,
        )
    ax.set_xlabel(report.x_unit)
    ax.set_title(f"{len(report.phases)} phase(s)", fontsize=10, pad=14)
    fig2.tight_layout()
    figs["phases.png"] = fig2
    return figs
