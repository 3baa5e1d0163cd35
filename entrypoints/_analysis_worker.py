"""The pure half of `analyze` (tvae.analysis + plots), run in a forked process when possible.

Importing MLflow and opening its store (~3 s) and importing the analysis stack (pandas, scipy,
ruptures, matplotlib: ~2 s) are both single-threaded start-up costs; forking before either lets
them overlap on two cores. The parent talks to MLflow (validation, history, writes), the worker
parses roles/thresholds, analyses and renders the PNGs, and they swap plain picklable data over
a pipe. Where fork is unavailable or unsafe (threads already running) the same functions run
inline, so behaviour never depends on the mode.

Against a local SQLite store (MLFLOW_TRACKING_URI=sqlite:///..., as `mlflow run` sets it) the
worker does not wait for the parent's history: it reads the run itself with the standard
library (mlflow_plugins.history.read_sqlite) and has the analysis and plots ready by the time
the parent has loaded MLflow and validated the inputs. The parent uses that result only after
its own validation passed; otherwise it sends the history as before.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
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


def _plotter() -> Any:
    """tvae.analysis.plots.plot_report with matplotlib on Agg, or None without matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    try:
        from tvae.analysis.plots import plot_report
    except ImportError:  # plots are optional
        return None
    return plot_report


def analyse(history, system, roles, thresholds, status: str, folder: str) -> dict[str, Any]:
    """Analyse one history, write its PNGs into `folder`; return the report as plain data."""
    from mlflow_plugins.analysis_writer import save_figures
    from tvae.analysis import analyze

    report = analyze(history, roles, thresholds, system=system, run_status=status)
    plot_report = _plotter()
    figures = plot_report(history, report, roles) if plot_report is not None else {}
    save_figures(figures, Path(folder))
    return {
        "report": report.to_dict(),
        "tags": report.tags(),
        "summary": report.summary(),
        "tier": report.tier.name if report.tier else "None",
        "confirmed": len(report.confirmed),
    }


def _early_analysis(run_id: str, folder: str, roles, thresholds) -> dict[str, Any] | None:
    """The analysis of `run_id` read straight from a local SQLite store, or None."""
    from mlflow_plugins.history import read_sqlite, sqlite_path

    path = sqlite_path(os.environ.get("MLFLOW_TRACKING_URI", ""))
    if not (run_id and folder and path):
        return None
    try:
        read = read_sqlite(path, run_id)
        return None if read is None else analyse(*read[:2], roles, thresholds, read[2], folder)
    except Exception:  # noqa: BLE001 - the parent's own history path reports real problems
        return None


def _serve(conn: Any, metric_map: str, config: str, run_id: str, folder: str) -> None:
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
        _plotter()  # import matplotlib while the parent still imports MLflow (~0.5 s)
        early = _early_analysis(run_id, folder, roles, thresholds)
        job = conn.recv()
        if job is not None and job[0] == "own":
            if early is not None:
                conn.send(("ok", early))
                return
            conn.send(("need", None))
            job = conn.recv()
        if job is None:
            return
        _, history, system, status, job_folder = job
        conn.send(("ok", analyse(history, system, roles, thresholds, status, job_folder)))
    except Exception as err:  # noqa: BLE001 - reported by the parent as one line
        conn.send(("error", f"{type(err).__name__}: {err}"))
    finally:
        conn.close()


class AnalysisWorker:
    """Start the analysis half now (forked when safe); ask for its results when needed."""

    def __init__(
        self,
        metric_map: str,
        config: str,
        *,
        run_id: str = "",
        folder: str = "",
        fork: bool | None = None,
    ) -> None:
        """`run_id` and `folder` (where the PNGs go) let a forked worker start on its own."""
        self.metric_map, self.config = metric_map, config
        if fork is None:
            fork = hasattr(os, "fork") and threading.active_count() == 1
        self.conn = self.process = None
        self._parsed: tuple[Any, Any] | None = None
        if fork and os.environ.get("TVAE_ANALYZE_INLINE") != "1":
            import multiprocessing

            ctx = multiprocessing.get_context("fork")
            self.conn, child = ctx.Pipe()
            self.process = ctx.Process(
                target=_serve, args=(child, metric_map, config, run_id, folder), daemon=True
            )
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
        return kind if kind == "need" else value

    def check_inputs(self) -> None:
        """Raise InputError (one line) when the metric map or thresholds file is bad."""
        if not self.forked:
            self._parsed = parse_inputs(self.metric_map, self.config)
            return
        self._answer()

    def analyse(
        self, load: Callable[[], tuple[Any, Any]], status: str, folder: str
    ) -> dict[str, Any]:
        """The analysis as plain data, PNGs written into `folder`.

        `load()` returns (history, system); it is called only when the worker has not read the
        run itself.
        """
        if not self.forked:
            roles, thresholds = self._parsed or parse_inputs(self.metric_map, self.config)
            return analyse(*load(), roles, thresholds, status, folder)
        self.conn.send(("own",))
        answer = self._answer()
        if answer != "need":
            return answer
        self.conn.send(("given", *load(), status, folder))
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
