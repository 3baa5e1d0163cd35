"""Grokking detection against the labelled corpus (tests/corpus), in every view and split.

    python benchmarks/detection_accuracy.py                  # every split, every view
    python benchmarks/detection_accuracy.py --split train -v # per-run lines (tune on train only)
    python benchmarks/detection_accuracy.py --steps-per-epoch 50  # runs logged by optimizer step
    python benchmarks/detection_accuracy.py --steps-per-epoch 50 --log-epoch  # ... with `epoch`
    python benchmarks/detection_accuracy.py --steps-per-epoch 50 --log-epoch --loss-rows 5
    python benchmarks/detection_accuracy.py --log-spaced 300  # rows at log-spaced epochs only
    python benchmarks/detection_accuracy.py --eval-every 10   # val_* keys every 10th row only
    python benchmarks/detection_accuracy.py --eval-every 2 --eval-apart  # no row holds both
    python benchmarks/detection_accuracy.py --no-steps        # log_metric(key, value), no step
    python benchmarks/detection_accuracy.py --train-steps 50  # train keys by step, val by epoch
    python benchmarks/detection_accuracy.py --sampled 500     # val_acc on 500 fresh examples
    python benchmarks/detection_accuracy.py --stop-after 30   # early stopping once generalised
    python benchmarks/detection_accuracy.py --perplexity      # losses logged as train/val_ppl
    python benchmarks/detection_accuracy.py --last-batch 0.5  # one batch's training loss

Per view and split it prints: recall (grokking runs whose `grokking.first_epoch` lies in the
labelled onset window), false alarms (runs labelled fast / none / lr_confound with any
confirmed event), onset error (distance outside the window, % of the run), events per
grokking run (one transition each), and the AUROC of `grokking.confidence` separating
grokking runs from the rest. Runs labelled `gradual` are listed, not scored.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import rankdata

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "corpus"))

from corpus import (  # noqa: E402
    NEGATIVE,
    VIEWS,
    as_perplexity,
    by_steps,
    eval_every,
    in_percent,
    index,
    last_batch,
    load_run,
    log_spaced,
    metric_map,
    sampled,
    stopped,
    train_by_step,
    without_steps,
)

from mlflow_plugins.stepless import place_stepless  # noqa: E402
from tvae.analysis import Roles, analyze, load_thresholds  # noqa: E402
from tvae.analysis.confounds import LOGGED_NAN  # noqa: E402


def auroc(pos: list[float], neg: list[float]) -> float:
    """Probability that a grokking run scores above a non-grokking one (ties count half)."""
    if not pos or not neg:
        return float("nan")
    ranks = rankdata(np.concatenate([pos, neg]))
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def score_run(entry: dict, report, n_epochs: float) -> dict:
    """One run's outcome against its label."""
    lab = entry["label"]
    events = report.confirmed
    first = events[0].breakthrough_epoch if events else None
    out = {"cls": lab["cls"], "events": len(events), "first": first, "conf": report.confidence}
    if lab["cls"] == "grokking":
        lo, hi = lab["window"]
        out["hit"] = first is not None and lo <= first <= hi
        if first is not None:
            out["onset_err"] = 100 * max(lo - first, first - hi, 0.0) / n_epochs
    return out


def summarise(rows: list[dict]) -> dict:
    grok = [r for r in rows if r["cls"] == "grokking"]
    neg = [r for r in rows if r["cls"] in NEGATIVE]
    errs = [r["onset_err"] for r in grok if "onset_err" in r]
    return {
        "recall": f"{sum(r['hit'] for r in grok)}/{len(grok)}",
        "false alarms": f"{sum(r['events'] > 0 for r in neg)}/{len(neg)}",
        "onset err % (median/max)": (f"{np.median(errs):.1f}/{max(errs):.1f}" if errs else "-"),
        "events per grokking run": (f"{np.mean([r['events'] for r in grok]):.2f}" if grok else "-"),
        "AUROC": f"{auroc([r['conf'] for r in grok], [r['conf'] for r in neg]):.3f}",
    }


def by_class(rows: list[dict]) -> str:
    """Per class: grokking runs found in their window; other classes: runs with an event."""
    parts = []
    for cls in sorted({r["cls"] for r in rows}):
        mine = [r for r in rows if r["cls"] == cls]
        if cls == "grokking":
            parts.append(f"grokking {sum(r['hit'] for r in mine)}/{len(mine)} found")
        else:
            note = "" if cls in NEGATIVE else " (not scored)"
            parts.append(
                f"{cls} {sum(r['events'] > 0 for r in mine)}/{len(mine)} with events{note}"
            )
    return "; ".join(parts)


def split_names(runs: dict[str, dict]) -> list[str]:
    """The corpus's splits in the order they were made: train, test, test2, test3, ..."""
    made = {entry["split"] for entry in runs.values()}
    return ["train", "test"] + sorted(made - {"train", "test"}, key=lambda s: (len(s), s))


def replay(entry: dict, frame: pd.DataFrame, args: argparse.Namespace) -> pd.DataFrame:
    """``frame`` as the options log it; ``entry``'s onset window moved onto that axis."""
    frame = _replay(entry, frame, args)
    return as_perplexity(frame) if args.perplexity else frame


def _replay(entry: dict, frame: pd.DataFrame, args: argparse.Namespace) -> pd.DataFrame:
    k = args.steps_per_epoch
    frame = last_batch(stopped(frame, entry["label"], args.stop_after), args.last_batch)
    gap = float(np.median(np.diff(frame.index.to_numpy(dtype=float))))
    frame = eval_every(log_spaced(frame, args.log_spaced), args.eval_every, args.eval_apart)
    frame = sampled(frame, args.sampled)
    frame = in_percent(frame) if args.percent else frame
    window = entry["label"].get("window")
    if args.no_steps:
        return _without_steps(entry, frame, window, args.loss_rows)
    if args.train_steps:
        return _placed(train_by_step(frame, args.train_steps))
    frame = by_steps(frame, k, args.log_epoch, args.loss_rows)
    if window:
        window = [k * w for w in window]
        if args.eval_every > 1:  # widened by the evaluated rows around it
            pad = args.eval_every * k * gap
            window = [window[0] - pad, window[1] + pad]
        if args.log_spaced:  # widened to the logged rows around it
            x = frame.index.to_numpy()
            lo = x[max(np.searchsorted(x, window[0], side="right") - 1, 0)]
            hi = x[min(np.searchsorted(x, window[1]), len(x) - 1)]
            window = [float(lo), float(hi)]
        entry["label"]["window"] = window
    return frame


def as_read(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` as `load_history` returns it: the corpus logs no NaN, so each NaN cell is a
    step its key was not logged at, which the reader knows (``attrs[LOGGED_NAN]``)."""
    frame.attrs[LOGGED_NAN] = {}
    return frame


def _without_steps(entry: dict, frame: pd.DataFrame, window, batches: int) -> pd.DataFrame:
    """``frame`` logged without steps and read back as load_history places it (the n-th row
    logged is step n); the onset window moved onto those rows."""
    epochs = frame.index.to_numpy(dtype=float)
    if window:
        lo = int(np.searchsorted(epochs, window[0], side="left"))
        hi = max(int(np.searchsorted(epochs, window[1], side="right")) - 1, lo)
        entry["label"]["window"] = [lo, hi]
    return _placed(without_steps(frame, batches))


def _placed(rows: dict) -> pd.DataFrame:
    """``rows`` read back as `load_history` places them (a step logged twice: its last row)."""
    placed, _ = place_stepless(rows)
    return pd.DataFrame(
        {k: pd.Series(v, index=s).groupby(level=0).last() for k, (s, v, _) in placed.items()}
    ).sort_index()


def main() -> None:
    runs = index()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", choices=(*split_names(runs), "all"), default="all")
    parser.add_argument("--view", choices=tuple(VIEWS), action="append")
    parser.add_argument("--thresholds", help="a thresholds YAML (default: the built-in ones)")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="one line per run")
    parser.add_argument(
        "--steps-per-epoch",
        type=int,
        default=1,
        help="log each run against optimizer steps (epoch x this), as e.g. HF Trainer does",
    )
    parser.add_argument(
        "--log-epoch",
        action="store_true",
        help="with --steps-per-epoch: log the epoch at each step as `epoch`, as HF Trainer and "
        "Lightning do",
    )
    parser.add_argument(
        "--loss-rows",
        type=int,
        default=1,
        help="log the training loss this many times an epoch (between epochs: interpolated "
        "in log), the other keys once, as a trainer logging every few steps does",
    )
    parser.add_argument(
        "--log-spaced",
        type=int,
        default=0,
        help="keep only the rows nearest this many log-spaced epochs (runs logged for log-x "
        "plots); onsets count as in the window when they fall between the logged rows around it",
    )
    parser.add_argument(
        "--eval-every",
        type=int,
        default=1,
        help="keep the val_* keys on every this-many-th row only (evaluation every few epochs, "
        "the training keys every epoch); a window widens by that many rows",
    )
    parser.add_argument(
        "--eval-apart",
        action="store_true",
        help="with --eval-every: the training keys on the other rows only, so no row holds a "
        "training and a validation key (evaluation logged at steps of its own)",
    )
    parser.add_argument(
        "--percent", action="store_true", help="log the accuracies in percent (97.3, not 0.973)"
    )
    parser.add_argument(
        "--no-steps",
        action="store_true",
        help="log every key without a step, one call a key an epoch (with --loss-rows: the "
        "training loss that many times an epoch), read back in the order logged",
    )
    parser.add_argument(
        "--train-steps",
        type=int,
        default=0,
        metavar="K",
        help="log the training keys against optimizer steps, K an epoch, and the val_* keys "
        "against epochs, read back as load_history places them",
    )
    parser.add_argument(
        "--sampled",
        type=int,
        default=0,
        metavar="N",
        help="measure val_acc on N examples drawn afresh at each evaluation (binomial noise, "
        "seed 0), as a trainer estimating it on random batches does",
    )
    parser.add_argument(
        "--stop-after",
        type=int,
        default=0,
        metavar="N",
        help="end each run N epochs after the epoch its label says it generalised, as early "
        "stopping does (a run that never generalised is kept whole)",
    )
    parser.add_argument(
        "--last-batch",
        type=float,
        default=0.0,
        metavar="SD",
        help="scatter the training loss by a lognormal factor (SD in ln, seed 0) at each row, "
        "as a script that logs its last batch's loss each epoch does",
    )
    parser.add_argument(
        "--perplexity",
        action="store_true",
        help="log the losses as perplexities, exp(loss), under train_ppl and val_ppl (as "
        "language-model trainers do), mapped so",
    )
    args = parser.parse_args()
    if args.eval_apart and args.eval_every < 2:
        parser.error("--eval-apart needs --eval-every 2 or more")
    thresholds = load_thresholds(args.thresholds)
    splits = split_names(runs) if args.split == "all" else [args.split]
    histories = {n: as_read(replay(entry, load_run(n), args)) for n, entry in runs.items()}
    started, analysed = time.perf_counter(), 0
    for split in splits:
        names = [n for n in sorted(runs) if runs[n]["split"] == split]
        classes = sorted({runs[n]["label"]["cls"] for n in names})
        count = ", ".join(
            f"{sum(runs[n]['label']['cls'] == c for n in names)} {c}" for c in classes
        )
        print(f"\n== {split} split: {len(names)} runs ({count})")
        for view in args.view or VIEWS:
            roles = Roles.from_metric_map(metric_map(view, args.perplexity))
            rows = []
            for name in names:
                df = histories[name]
                report = analyze(df, roles, thresholds)
                analysed += 1
                row = score_run(runs[name], report, float(df.index[-1]))
                rows.append(row)
                if args.verbose:
                    lab = runs[name]["label"]
                    mark = "ok" if row.get("hit", row["events"] == 0) else "XX"
                    if row["cls"] == "gradual":
                        mark = "--"
                    print(
                        f"  {mark} {view:9s} {name:26s} {row['cls']:11s} "
                        f"window={lab.get('window')} events={row['events']} "
                        f"first={row['first']} conf={row['conf']:.2f}"
                    )
                    if mark == "XX" or args.verbose > 1:
                        for c in report.candidates:
                            print(f"       {c.verdict} @{c.breakthrough_epoch:g}: {c.reason}")
            stats = summarise(rows)
            print(f"  {view:9s} " + "  ".join(f"{k}: {v}" for k, v in stats.items()))
            print(f"  {'':9s} by class: {by_class(rows)}")
    took = time.perf_counter() - started
    print(f"\n{analysed} analyses in {took:.1f} s ({1000 * took / max(analysed, 1):.0f} ms each)")


if __name__ == "__main__":
    main()
