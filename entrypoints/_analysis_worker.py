"""The pure half of `analyze` (tvae.analysis + plots), run in a forked process when possible.

Importing MLflow and opening its store (~3 s) and importing the analysis stack (pandas, scipy,
ruptures, matplotlib: ~2 s) are both single-threaded start-up costs; forking before either lets
them overlap on two cores. The parent talks to MLflow (validation, history, writes), the worker
parses roles/thresholds, analyses and renders the PNGs, and they swap plain picklable data over
a pipe. Where fork is unavailable or unsafe (threads already running) the same functions run
inline, so behaviour never depends on the mode.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any


class InputError(ValueError):
    """A metric map or thresholds file is invalid; the message is one line for the user."""


def parse_inputs(metric_map: str, config: str) -> tuple[Any, Any]:
    """(Roles, Thresholds or None) from the CLI strings; InputError (one line) if invalid."""
    from tvae.analysis import Roles, load_thresholds

    try:
        roles = Roles.from_metric_map(metric_map) if metric_map else Roles()
    except ValueError as err:
        raise InputError(f"--metric-map: {err}") from None
    if not config:
        return roles, None
    if not os.path.isfile(config):
        raise InputError(f"--config: thresholds file not found: {config}")
    try:
        return roles, load_thresholds(config)
    except ValueError as err:
        raise InputError(f"--config: {err}") from None


def analyse(history, system, roles, thresholds, status: str, folder: str) -> dict[str, Any]:
    """Analyse one history, write its PNGs into `folder`; return the report as plain data."""
    import matplotlib

    matplotlib.use("Agg")
    from mlflow_plugins.analysis_writer import save_figures
    from tvae.analysis import analyze

    report = analyze(history, roles, thresholds, system=system, run_status=status)
    try:
        from tvae.analysis.plots import plot_report
    except ImportError:  # plots are optional
        figures = {}
    else:
        figures = plot_report(history, report, roles)
    save_figures(figures, Path(folder))
    return {
        "report": report.to_dict(),
        "tags": report.tags(),
        "summary": report.summary(),
        "tier": report.tier.name if report.tier else "None",
        "confirmed": len(report.confirmed),
    }


def _serve(conn: Any, metric_map: str, config: str) -> None:
    """Worker process: check the inputs, then analyse one history; errors go back as text.

    Roles and thresholds stay here: unpickling them in the parent would import the whole
    analysis stack there and undo the overlap.
    """
    try:
        try:
            roles, thresholds = parse_inputs(metric_map, config)
        except InputError as err:
            conn.send(("input", str(err)))
            return
        conn.send(("ok", None))
        job = conn.recv()
        if job is None:
            return
        conn.send(("ok", analyse(job[0], job[1], roles, thresholds, *job[2:])))
    except Exception as err:  # noqa: BLE001 - reported by the parent as one line
        conn.send(("error", f"{type(err).__name__}: {err}"))
    finally:
        conn.close()


class AnalysisWorker:
    """Start the analysis half now (forked when safe); ask for its results when needed."""

    def __init__(self, metric_map: str, config: str, *, fork: bool | None = None) -> None:
        self.metric_map, self.config = metric_map, config
        if fork is None:
            fork = hasattr(os, "fork") and threading.active_count() == 1
        self.conn = self.process = None
        self._parsed: tuple[Any, Any] | None = None
        if fork and os.environ.get("TVAE_ANALYZE_INLINE") != "1":
            import multiprocessing

            ctx = multiprocessing.get_context("fork")
            self.conn, child = ctx.Pipe()
            self.process = ctx.Process(target=_serve, args=(child, metric_map, config), daemon=True)
            self.process.start()
            child.close()

    @property
    def forked(self) -> bool:
        return self.process is not None

    def _answer(self) -> Any:
        try:
            kind, value = self.conn.recv()
        except EOFError:
            raise RuntimeError("analysis worker exited without an answer") from None
        if kind == "input":
            raise InputError(value)
        if kind == "error":
            raise RuntimeError(value)
        return value

    def check_inputs(self) -> None:
        """Raise InputError (one line) when the metric map or thresholds file is bad."""
        if not self.forked:
            self._parsed = parse_inputs(self.metric_map, self.config)
            return
        self._answer()

    def analyse(self, history, system, status: str, folder: str) -> dict[str, Any]:
        """The analysis of `history` as plain data, PNGs written into `folder`."""
        if not self.forked:
            roles, thresholds = self._parsed or parse_inputs(self.metric_map, self.config)
            return analyse(history, system, roles, thresholds, status, folder)
        self.conn.send((history, system, status, folder))
        return self._answer()

    def close(self) -> None:
        """Stop the worker (if still waiting) and reap it."""
        if not self.forked:
            return
        try:
            self.conn.send(None)
        except (OSError, ValueError):
            pass
        self.conn.close()
        self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join()
