"""``analyze()``: one pass over a run's metric history -> AnalysisReport."""

from __future__ import annotations

import numpy as np
import pandas as pd

from tvae import contract as C
from tvae.analysis.checks import run_checks
from tvae.analysis.confounds import LOGGED_NAN, control_changes, nonfinite_stretches
from tvae.analysis.grokking import detect_grokking
from tvae.analysis.phases import detect_phases
from tvae.analysis.questions import answer_questions
from tvae.analysis.report import AnalysisReport
from tvae.analysis.roles import GENERALISATION_ROLES, Roles
from tvae.analysis.steps import in_steps, on_axis, run_epochs
from tvae.analysis.thresholds import Thresholds
from tvae.analysis.tiers import judge_tier
from tvae.analysis.transitions import Metric
from tvae.analysis.units import as_fraction, perplexity_as_loss


def _clean(history: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Numeric metrics sorted by epoch (duplicates: last wins), and the ``system/`` columns;
    both keep ``history.attrs`` (a reader's `LOGGED_NAN`)."""
    if not isinstance(history, pd.DataFrame):
        raise TypeError("history must be a pandas DataFrame (index = epoch)")
    df = history.copy()
    df.index = pd.to_numeric(pd.Index(df.index), errors="coerce")
    df = df[~np.isnan(df.index.to_numpy(dtype=float))] if len(df) else df
    df = df.apply(pd.to_numeric, errors="coerce") if len(df.columns) else df
    df = df[~df.index.duplicated(keep="last")].sort_index()
    df.index.name = "epoch"
    sys_cols = [c for c in df.columns if str(c).startswith(C.SYSTEM_PREFIX)]
    return df.drop(columns=sys_cols), df[sys_cols]


#: reported with the tier when the run logs them (never judged: the tiers stay on eval/Q)
REPORTED_WITH_TIER = {C.DIST_CORR_LATENT: "dist_corr_latent", C.Q_LATENT: "quality_latent"}


def _finite(hist: pd.DataFrame, key: str) -> pd.Series:
    return hist[key].replace([np.inf, -np.inf], np.nan).dropna()


def _reported(hist: pd.DataFrame, present: set[str], epochs: dict[str, float]):
    """The REPORTED_WITH_TIER values at the epoch the tier's quality was taken from (else
    their last finite value)."""
    out = {}
    for key, name in REPORTED_WITH_TIER.items():
        if key in present:
            s = _finite(hist, key)
            at = epochs.get("quality")
            out[name] = float(s.loc[at]) if at in s.index else float(s.iloc[-1])
    return out


def _tier(hist: pd.DataFrame, roles: Roles, present: set[str], t: Thresholds):
    keys = [roles.accuracy, roles.hierarchy, roles.quality]
    if not all(k and k in present for k in keys):
        return None, None
    final, best, fe, be = [], [], {}, {}
    for name, k, pick in (
        ("coverage", keys[0], "max"),
        ("hierarchy", keys[1], "min"),
        ("quality", keys[2], "max"),
    ):
        s = _finite(hist, k)
        final.append(float(s.iloc[-1]))
        fe[name] = float(s.index[-1])
        idx = s.idxmax() if pick == "max" else s.idxmin()
        best.append(float(s.loc[idx]))
        be[name] = float(idx)
    return (
        judge_tier(*final, t, basis="final", epochs=fe, reported=_reported(hist, present, fe)),
        judge_tier(*best, t, basis="best", epochs=be, reported=_reported(hist, present, be)),
    )


def analyze(
    history: pd.DataFrame,
    roles: Roles | None = None,
    thresholds: Thresholds | None = None,
    *,
    system: pd.DataFrame | None = None,
    run_status: str | None = None,
) -> AnalysisReport:
    """Grokking events, phases, tier, checks and answers for one run's metric history."""
    roles = roles or Roles()
    t = thresholds or Thresholds()
    hist, sys_hist = _clean(history)
    hist, unit_note = as_fraction(hist, roles)
    hist, ppl_note = perplexity_as_loss(hist, roles)
    if system is not None and len(system.columns):
        sys_hist = pd.concat(
            [sys_hist.reset_index(drop=True), system.reset_index(drop=True)], axis=1
        )
    present = {c for c in hist.columns if np.isfinite(hist[c].to_numpy(dtype=float)).any()}
    report = AnalysisReport(run_status=run_status, n_epochs=int(len(hist)))
    if len(hist):
        report.span = (float(hist.index[0]), float(hist.index[-1]))
    t, axis_note = on_axis(hist, roles, t)
    report.notes += [note for note in (unit_note, ppl_note, axis_note) if note]
    for role, key in roles.mapping().items():
        if key not in hist.columns:
            report.skipped_roles[role] = f"{key} not logged"
        elif key not in present:
            report.skipped_roles[role] = f"{key} has no finite values"
    nonfinite = nonfinite_stretches(hist, hist.attrs.get(LOGGED_NAN))
    controls = control_changes(hist, roles.control_columns(present), roles.lr, t)
    if len(hist):
        report.candidates, report.confidence = detect_grokking(
            hist, roles, present, controls, nonfinite, t
        )
        report.phases = detect_phases(hist, roles, present, t)
        report.tier, report.tier_best = _tier(hist, roles, present, t)
    if not report.candidates and not any(
        getattr(roles, r) in present for r in GENERALISATION_ROLES
    ):
        report.notes.append("no accuracy/val_loss/quality/hierarchy role: grokking not assessed")
    elif len(hist):
        report.notes += _unchecked(hist, roles, present)
    report.checks = run_checks(hist, sys_hist, nonfinite, run_status, t)
    report.answers = answer_questions(report, hist, roles, present, controls)
    if axis_note and len(hist):
        _in_steps(report, hist, roles.epoch)
    return report


def _unchecked(hist: pd.DataFrame, roles: Roles, present: set[str]) -> list[str]:
    """What the detector could not rule out for want of a training loss (two rows a log
    scale can read, as `RunContext.train_loss` asks) or an LR."""
    notes = []
    loss = Metric.load(hist, "loss", roles.loss) if roles.loss in present else None
    if loss is None or len(loss.raw) < 2:
        notes.append(
            "no training loss (the loss role): whether the training set was fitted first, and "
            "how long before, is not checked, so a held-out metric that merely starts late "
            "can read as grokking"
        )
    if not (roles.lr and roles.lr in present):
        notes.append(
            "no learning rate (the lr role): a rise that an LR schedule causes (a step, a "
            "warm restart) cannot be told from grokking"
        )
    return notes


def _in_steps(report: AnalysisReport, hist: pd.DataFrame, epoch_key: str) -> None:
    """A run on a step axis: its events and phases were found and are said in steps; the
    tags give the run's own epochs (``epoch_key``'s value there)."""
    report.x_unit = "step"
    onsets = run_epochs(hist, epoch_key, [c.breakthrough_epoch for c in report.candidates])
    for c, epoch in zip(report.candidates, onsets, strict=True):
        c.details["run_epoch"] = epoch
        c.reason = in_steps(c.reason)
    report.boundary_epochs = run_epochs(hist, epoch_key, report.boundaries)
    report.answers = {q: in_steps(a) for q, a in report.answers.items()}
