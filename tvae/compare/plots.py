"""Overlay plots of a comparison and the folder of files a compare run keeps."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from tvae.compare.groups import band_frame, group_table, groups, has_seed_groups  # noqa: E402
from tvae.compare.runs import ComparedRun, align_by_epoch  # noqa: E402
from tvae.compare.table import KEY_METRICS, ranking_lines, table_html  # noqa: E402


def _mark_events(ax, item: ComparedRun, series: pd.Series, color) -> bool:
    for event in item.analysis.events:
        at = series.index[series.index <= event.epoch]
        y = series.loc[at[-1]] if len(at) else series.iloc[0]
        ax.axvline(event.epoch, color=color, ls=":", lw=1, alpha=0.6)
        ax.scatter([event.epoch], [y], marker="*", s=140, color=color, edgecolor="black", zorder=5)
    return bool(item.analysis.events)


def overlay_figure(compared: Sequence[ComparedRun], key: str, name: str) -> Figure:
    """One line per run over epochs; each confirmed grokking event marked on its run's line."""
    aligned = align_by_epoch(compared, key)
    fig, ax = plt.subplots(figsize=(10, 5.5), dpi=100)
    cmap = plt.get_cmap("tab20" if len(compared) > 10 else "tab10")
    marked = False
    for i, item in enumerate(compared):
        if item.label not in aligned.columns:
            continue
        series = aligned[item.label].dropna()  # irregular steps still draw one connected line
        if series.empty:
            continue
        color = cmap(i % cmap.N)
        label = f"{item.label} [{item.analysis.tier}]"
        ax.plot(series.index, series.to_numpy(), color=color, lw=1.4, label=label)
        marked = _mark_events(ax, item, series, color) or marked
    ax.set_xlabel("epoch")
    ax.set_ylabel(key)
    ax.set_title(f"{name} by epoch ({len(compared)} runs; * = confirmed grokking event)")
    ax.grid(alpha=0.3)
    if marked:
        ax.scatter([], [], marker="*", s=140, color="white", edgecolor="black",
                   label="confirmed grokking event")  # fmt: skip
    if aligned.shape[1]:
        ax.legend(fontsize=7, loc="best", ncol=2 if len(compared) > 8 else 1)
    else:
        ax.text(0.5, 0.5, f"no run logs {key}", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    return fig


def band_figure(compared: Sequence[ComparedRun], key: str, name: str) -> Figure:
    """One mean line per config over its seeds by epoch, in a mean +- std band; each seed's
    confirmed grokking events marked on the mean line."""
    by_config = groups(compared)
    fig, ax = plt.subplots(figsize=(10, 5.5), dpi=100)
    cmap = plt.get_cmap("tab20" if len(by_config) > 10 else "tab10")
    for i, (config, runs) in enumerate(by_config.items()):
        band = band_frame(runs, key)
        if band.empty:
            continue
        color = cmap(i % cmap.N)
        x = band.index.to_numpy()
        label = f"{config} ({len(runs)} seed{'s' if len(runs) > 1 else ''})"
        ax.plot(x, band["mean"].to_numpy(), color=color, lw=1.6, label=label)
        low, high = band["mean"] - band["std"], band["mean"] + band["std"]
        ax.fill_between(x, low.to_numpy(), high.to_numpy(), color=color, alpha=0.2, lw=0)
        for item in runs:
            _mark_events(ax, item, band["mean"], color)
    ax.set_xlabel("epoch")
    ax.set_ylabel(key)
    ax.set_title(f"{name} by epoch: mean over seeds, band +- std (* = a seed's grokking event)")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=7, loc="best", ncol=2 if len(by_config) > 8 else 1)
    fig.tight_layout()
    return fig


def write_comparison(
    compared: Sequence[ComparedRun], table: pd.DataFrame, folder: Path
) -> list[str]:
    """Write `<name>.png` per key metric, table.csv, table.html and ranking.txt into folder,
    and, when a config ran on several seeds, `<name>_by_config.png`, configs.csv and
    configs.html; returns the file names, sorted."""
    folder.mkdir(parents=True, exist_ok=True)
    for key, name, _ in KEY_METRICS:
        fig = overlay_figure(compared, key, name)
        fig.savefig(folder / f"{name}.png")
        plt.close(fig)
    table.to_csv(folder / "table.csv", index=False)
    title = f"TernaryVAE run comparison ({len(table)} runs)"
    (folder / "table.html").write_text(table_html(table, title), encoding="utf-8")
    (folder / "ranking.txt").write_text("\n".join(ranking_lines(table)) + "\n")
    if has_seed_groups(compared):  # a config on several seeds: its mean and spread too
        for key, name, _ in KEY_METRICS:
            fig = band_figure(compared, key, name)
            fig.savefig(folder / f"{name}_by_config.png")
            plt.close(fig)
        by_config = group_table(compared)
        by_config.to_csv(folder / "configs.csv", index=False)
        (folder / "configs.html").write_text(by_config.to_html(index=False), encoding="utf-8")
    return sorted(p.name for p in folder.iterdir())
