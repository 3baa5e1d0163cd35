"""The comparison table, its ranking and its HTML page.

Best first: tier (order from `tvae.analysis.tiers`), then best Q, then best hierarchy_B
(lower is better), then the number of confirmed grokking events.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from tvae import contract as C
from tvae.analysis.tiers import TIER_ORDER
from tvae.compare.runs import ComparedRun

#: (metric key, short name, higher is better): the overlay plots and best/final columns.
KEY_METRICS: tuple[tuple[str, str, bool], ...] = (
    (C.COVERAGE, "coverage", True),
    (C.HIERARCHY_B, "hierarchy_B", False),
    (C.QUALITY, "Q", True),
    (C.TRAIN_LOSS, "loss", False),
)


def best_and_final(history: pd.DataFrame, key: str, higher: bool) -> tuple[float, float]:
    series = history[key].dropna() if key in history.columns else pd.Series(dtype=float)
    finite = series[np.isfinite(series.to_numpy(dtype=float))]
    best = (finite.max() if higher else finite.min()) if len(finite) else np.nan
    return best, (series.iloc[-1] if len(series) else np.nan)


def _row(item: ComparedRun) -> dict[str, Any]:
    history, analysis = item.history, item.analysis
    row: dict[str, Any] = {
        "run": item.label,
        "run_id": item.run_id,
        "status": item.status,
        "tier": analysis.tier,
        "events": len(analysis.events),
        "event_epochs": ",".join(str(e.epoch) for e in analysis.events),
        "severity": analysis.severity,
        "analysis": analysis.source,
    }
    for key, name, higher in KEY_METRICS:
        row[f"best_{name}"], row[f"final_{name}"] = best_and_final(history, key, higher)
    row["epochs"] = int(history.index.nunique())
    row["wall_s"] = item.wall_s
    sps = history[C.SAMPLES_PER_SEC].dropna() if C.SAMPLES_PER_SEC in history else pd.Series([])
    row["samples_per_s"] = float(sps.mean()) if len(sps) else np.nan
    return row


def _tier_rank(tier: str) -> int:
    return TIER_ORDER.index(tier) if tier in TIER_ORDER else -1


def build_table(compared: Sequence[ComparedRun]) -> pd.DataFrame:
    """One row per run, best first, with a 1-based `rank` column."""
    table = pd.DataFrame([_row(c) for c in compared])
    table["_tier"] = table["tier"].map(_tier_rank)
    table = table.sort_values(
        ["_tier", "best_Q", "best_hierarchy_B", "events"],
        ascending=[False, False, True, False],
        na_position="last",
        kind="stable",
    ).drop(columns="_tier")
    table.insert(0, "rank", range(1, len(table) + 1))
    return table.reset_index(drop=True)


def fmt(value: Any, digits: int = 4) -> str:
    """A table cell as text: floats to `digits` significant digits, NaN as "-"."""
    if isinstance(value, float | np.floating):
        return "-" if math.isnan(value) else f"{value:.{digits}g}"
    return str(value)


def ranking_lines(table: pd.DataFrame) -> list[str]:
    """The short printed ranking: one line per run."""
    lines = []
    for row in table.itertuples(index=False):
        grok = (
            f"{row.events} event(s) at {row.event_epochs} ({row.severity})"
            if row.events
            else "no grokking"
        )
        lines.append(
            f"{row.rank:>2}. {row.run} [{row.tier}] Q={fmt(row.best_Q)} "
            f"hierarchy_B={fmt(row.best_hierarchy_B)} coverage={fmt(row.best_coverage)} "
            f"{grok}; {row.epochs} epochs"
        )
    return lines


_STYLE = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:16px;color:#1f2328}
table{border-collapse:collapse;font-size:12px}
th,td{border:1px solid #d0d7de;padding:3px 6px;text-align:left;white-space:nowrap}
th{background:#f6f8fa;position:sticky;top:0}
tr:nth-child(even) td{background:#fbfcfd}
.Exceptional{color:#6f42c1;font-weight:600}.Excellent{color:#1a7f37;font-weight:600}
.Good{color:#1a7f37}.Minimal{color:#9a6700}.None{color:#6e7781}
"""


def _html_view(table: pd.DataFrame) -> pd.DataFrame:
    """The table as shown on the page: best and final of a metric share one "best / final" cell."""
    view = table.drop(columns=["run_id"])
    for _, name, _ in KEY_METRICS:
        best, final = view.pop(f"best_{name}"), view.pop(f"final_{name}")
        view[f"{name} best / final"] = [
            f"{fmt(b)} / {fmt(f)}" for b, f in zip(best, final, strict=True)
        ]
    for col in ("epochs", "wall_s", "samples_per_s"):
        view[col] = view.pop(col)
    return view


def _cell(value: Any) -> str:
    return html.escape(fmt(value))


def _tier_cell(tier: Any) -> str:
    text = html.escape(str(tier))
    return f'<span class="{text}">{text}</span>'


def table_html(table: pd.DataFrame, title: str) -> str:
    """A standalone HTML page of the table (the MLflow artifact viewer shows it as is)."""
    view = _html_view(table)
    formatters = {col: (_tier_cell if col == "tier" else _cell) for col in view.columns}
    body = view.to_html(index=False, escape=False, formatters=formatters, border=0)
    ids = "".join(
        f"<li>{html.escape(r)}: <code>{html.escape(i)}</code></li>"
        for r, i in zip(table["run"], table["run_id"], strict=True)
    )
    title = html.escape(title)
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{title}</title><style>{_STYLE}</style></head><body>"
        f"<h2>{title}</h2>{body}<h3>Run ids</h3><ul>{ids}</ul></body></html>"
    )
