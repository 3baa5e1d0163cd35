"""The live watcher against the final analysis, replaying the detection corpus (tests/corpus).

    python benchmarks/watch_agreement.py                       # every labelled run, every view
    python benchmarks/watch_agreement.py --view acc+loss --pace 25 -v

Each labelled corpus run is replayed into a RUNNING run of a temporary SQLite store, ``pace``
logged rows per poll, while `mlflow_plugins.watch.Watch` follows it in lockstep (one poll after
each batch: a fixed pace, no sleeping). At the end the run is ended FINISHED and `analyze` reads
its whole history back from the store. Per view it prints:

- agreement: events the final analysis confirms that were raised live (a live `confirmed`
  that is the final event's transition: its epoch from the plateau start to the end of rise, or
  its rise overlapping the final one, as `live_assess.same_transition` matches them), and live
  `confirmed` events the final analysis rejects (runs, by label; withdrawn live or not);
- latency: polls between the first poll holding the data that confirms an event (its end of
  rise plus the sustain period it needs, as the final analysis places them) and the poll that
  raised it (0 = at that poll), and the same in epochs;
- the final `grokking.live.state` tag against `analyze` (must always agree);
- watcher CPU seconds (its polls: reads, detector, writes; not the replay).

Then the cost: a synthetic 100,000-epoch run (5 keys, textbook grokking at 60 %) logged
1,000 epochs per poll (and 200 per poll), watched to its end; watcher CPU in all.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "corpus"))
sys.path.insert(0, str(HERE.parent / "tests"))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from corpus import NEGATIVE, VIEWS, index, load_run, metric_map  # noqa: E402

from tvae import contract as C  # noqa: E402
from tvae.analysis import Roles, Thresholds, analyze  # noqa: E402
from tvae.analysis.live_assess import same_transition  # noqa: E402


def store() -> str:
    """A fresh SQLite store in a temporary folder, as the process default."""
    import mlflow

    folder = tempfile.mkdtemp(prefix="tvae-watch-bench-")
    uri = f"sqlite:///{folder}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    return uri


def log_rows(client, run_id: str, frame: pd.DataFrame) -> None:
    from mlflow.entities import Metric

    ts = int(time.time() * 1000)
    metrics = [
        Metric(key, float(v), ts + int(epoch), int(epoch))
        for key in frame.columns
        for epoch, v in frame[key].dropna().items()
    ]
    for i in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[i : i + 1000])


def replay(client, frame: pd.DataFrame, roles: Roles, pace: int, name: str) -> dict:
    """Replay ``frame`` into a new RUNNING run, polling after each ``pace`` rows."""
    from mlflow_plugins.watch import Watch

    run_id = client.create_run("0", run_name=name).info.run_id
    watch = Watch(client, run_id=run_id, roles=roles, echo=lambda line: None)
    first_seen: dict[float, int] = {}  # live event epoch -> poll index it was first raised at
    rises: dict[float, tuple[float, float]] = {}  # live event epoch -> its rise then
    steps = []  # last logged step at each poll
    plain = []  # CPU of each poll that did not run the detector
    for poll, i in enumerate(range(0, len(frame), pace)):
        log_rows(client, run_id, frame.iloc[i : i + pace])
        cpu, runs = watch.cpu_seconds, sum(w.detector.analyses for w in watch.runs.values())
        watch.poll()
        if sum(w.detector.analyses for w in watch.runs.values()) == runs:
            plain.append((poll, watch.cpu_seconds - cpu))
        steps.append(int(frame.index[min(i + pace, len(frame)) - 1]))
        state = watch.runs[run_id].detector.state
        for epoch, rise in zip(state.event_epochs, state.event_rises, strict=True):
            first_seen.setdefault(epoch, poll)
            rises.setdefault(epoch, rise)
    client.set_terminated(run_id, "FINISHED")
    watch.poll()
    from mlflow_plugins.history import load_history

    history, _ = load_history(client, run_id)
    final = analyze(history, roles)
    last_live = watch.runs[run_id].changes[-2] if len(watch.runs[run_id].changes) > 1 else None
    return {
        "watch": watch,
        "frame": frame,
        "roles": roles,
        "final": final,
        "first_seen": first_seen,
        "rises": rises,
        "steps": np.array(steps),
        "state_tag": client.get_run(run_id).data.tags.get(C.GROKKING_LIVE_STATE),
        "last_live": last_live,
        "plain": plain,
    }


def score(out: dict, t: Thresholds) -> dict:
    """Agreement and latency of one replay."""
    final, first_seen, steps = out["final"], out["first_seen"], out["steps"]
    raised, late_polls, late_epochs, matched = [], [], [], set()
    after_prefix = []  # a late event's polls after the first poll whose history confirms it
    for c in final.confirmed:
        need = max(t.sustain.epochs, t.sustain.rise_frac * float(c.details["rise_epochs"]))
        live = [e for e in first_seen if same_transition(c, e, out["rises"][e], t.sustain.epochs)]
        matched.update(live)
        raised.append(bool(live))
        if live:
            poll = min(first_seen[e] for e in live)
            due = c.rise_end + need
            data_poll = int(np.searchsorted(steps, due))  # first poll holding that step
            late_polls.append(poll - data_poll)
            late_epochs.append(float(steps[poll]) - due)
            if poll > data_poll:
                after_prefix.append(poll - first_confirming_poll(out, c, data_poll, poll, t))
    false = sorted(e for e in first_seen if e not in matched)
    standing = (
        out["last_live"] is not None
        and out["last_live"].state == "confirmed"
        and any(e in false for e in out["last_live"].event_epochs)
    )
    return {
        "events": len(final.confirmed),
        "raised": sum(raised),
        "false_epochs": false,
        "false_standing": standing,  # still confirmed live when the run ended
        "late_polls": late_polls,
        "late_epochs": late_epochs,
        "after_prefix": after_prefix,
        "tag_ok": out["state_tag"] == ("confirmed" if final.confirmed else "none"),
        "cpu": out["watch"].cpu_seconds,
        "polls": out["watch"].polls,
        "analyses": sum(w.detector.analyses for w in out["watch"].runs.values()),
    }


def first_confirming_poll(out: dict, c, start: int, stop: int, t: Thresholds) -> int:
    """The first poll from ``start`` whose history so far (`analyze` on that prefix) confirms
    event ``c``'s transition; ``stop`` when none before it does. A slow rise that the whole
    run places early is often confirmed by no prefix until later."""
    frame, steps = out["frame"], out["steps"]
    for k in range(start, stop):
        prefix = analyze(frame[frame.index <= steps[k]], out["roles"]).confirmed
        rises = ((x.breakthrough_epoch, (x.plateau_end, x.rise_end)) for x in prefix)
        if any(same_transition(c, e, r, t.sustain.epochs) for e, r in rises):
            return k
    return stop


def agreement(views: list[str], pace: int, names: list[str] | None, verbose: bool) -> None:
    from mlflow.tracking import MlflowClient

    runs = {n: e for n, e in index().items() if "label" in e}
    names = names or sorted(runs)
    t = Thresholds()
    for view in views:
        store()
        client = MlflowClient()
        roles = Roles.from_metric_map(metric_map(view))
        rows, started = [], time.perf_counter()
        for name in names:
            frame = load_run(name)
            out = replay(client, frame, roles, pace, name)
            row = score(out, t)
            row.update(name=name, cls=runs[name]["label"]["cls"])
            rows.append(row)
            if verbose or row["false_epochs"] or row["raised"] < row["events"]:
                changes = "->".join(
                    f"{s.state}@{s.seen_at_step}" + ("(W)" if s.withdrawn else "")
                    for s in out["watch"].runs[next(iter(out["watch"].runs))].changes
                )
                print(
                    f"  {view:9s} {name:26s} {row['cls']:11s} final {row['events']} raised "
                    f"{row['raised']} late(polls) {row['late_polls']} false {row['false_epochs']}"
                    f"{' STANDING' if row['false_standing'] else ''}  {changes[:160]}"
                )
        report(view, rows, pace, time.perf_counter() - started)


def report(view: str, rows: list[dict], pace: int, took: float) -> None:
    events = sum(r["events"] for r in rows)
    raised = sum(r["raised"] for r in rows)
    polls = [p for r in rows for p in r["late_polls"]]
    epochs = [e for r in rows for e in r["late_epochs"]]
    false = [r for r in rows if r["false_epochs"]]
    scored = [r for r in false if r["cls"] != "gradual"]
    standing = [r for r in false if r["false_standing"]]
    print(f"\n== view {view}: {len(rows)} runs, {pace} rows per poll ({took:.0f} s)")
    print(f"  final-analysis events raised live: {raised}/{events}")
    print(
        f"  runs with a live `confirmed` the final analysis rejects: {len(false)} "
        f"({len(scored)} outside `gradual`: "
        + ", ".join(f"{r['name']} ({r['cls']})" for r in scored)
        + f"); still standing when the run ended: {len(standing)}"
    )
    if polls:
        print(
            f"  latency, polls after the one holding the confirming data: max {max(polls)}, "
            f"{sum(p <= 0 for p in polls)}/{len(polls)} at that poll or before, "
            f"{sum(p <= 1 for p in polls)}/{len(polls)} within one poll after it (the target); "
            "epochs beyond "
            f"end of rise + sustain: median {np.median(epochs):.0f}, max {max(epochs):.0f}"
        )
        late = [(r["name"], p) for r in rows for p in r["late_polls"] if p > 0]
        if late:
            print("  later than that poll: " + ", ".join(f"{n} ({p})" for n, p in late))
            after = [p for r in rows for p in r["after_prefix"]]
            print(
                f"  of those, polls after the first poll whose history so far confirms the "
                f"event (`analyze` on that prefix): {', '.join(map(str, after))}; "
                f"{sum(p <= 0 for p in after)}/{len(after)} at that poll"
            )
    print(f"  final grokking.live.state = analyze's verdict: {sum(r['tag_ok'] for r in rows)}/"
          f"{len(rows)}")  # fmt: skip
    cpu = sum(r["cpu"] for r in rows)
    print(
        f"  watcher CPU {cpu:.1f} s over {sum(r['polls'] for r in rows)} polls "
        f"({sum(r['analyses'] for r in rows)} detector runs)"
    )
    negatives = [r for r in rows if r["cls"] in NEGATIVE]
    alarms = sum(bool(r["false_epochs"]) for r in negatives)
    print(f"  non-grokking runs (fast/none/lr_confound) with a live `confirmed`: {alarms}/"
          f"{len(negatives)}")  # fmt: skip


def synthetic(n: int = 100_000, seed: int = 0) -> pd.DataFrame:
    """A 100,000-epoch grokking run as a foreign script logs it: 5 keys, every epoch."""
    rng = np.random.default_rng(seed)
    e = np.arange(1, n + 1)
    up = np.clip((e - 0.6 * n) / (0.002 * n), 0.0, 1.0)
    fit = np.minimum(1.0, e / (0.005 * n))
    return pd.DataFrame(
        {
            "train_loss": 2 * np.exp(-e / (0.001 * n)) + 1e-3 * (1 + rng.normal(0, 0.01, n)),
            "train_acc": np.clip(fit + rng.normal(0, 0.002, n), 0, 1),
            "val_acc": 0.02 + 0.96 * up + rng.normal(0, 0.004, n),
            "val_loss": 10 ** (0.6 - 1.9 * up + rng.normal(0, 0.01, n)),
            "lr": 1e-3,
        },
        index=pd.Index(e, name="epoch"),
    )


def cost(paces: list[int]) -> None:
    from mlflow.tracking import MlflowClient

    frame = synthetic()
    roles = Roles.from_metric_map(metric_map("acc+loss"))
    final = analyze(frame, roles).confirmed
    for pace in paces:
        store()
        client = MlflowClient()
        out = replay(client, frame, roles, pace, f"synthetic-100k-{pace}")
        watch = out["watch"]
        w = next(iter(watch.runs.values()))
        live = [s for s in w.changes if s.state == "confirmed"]
        why = ", ".join(
            f"{k} {w.detector.reasons.count(k)}" for k in dict.fromkeys(w.detector.reasons)
        )
        print(
            f"\n== 100,000 epochs x 5 keys, {pace} epochs per poll: watcher CPU "
            f"{watch.cpu_seconds:.2f} s in all over {watch.polls} polls "
            f"({1000 * watch.cpu_seconds / watch.polls:.1f} ms per poll; detector "
            f"{w.detector.cpu_seconds:.2f} s over {w.detector.analyses} runs: {why})"
        )
        plain = out["plain"]
        tenth = max(1, len(plain) // 10)
        early = 1000 * np.median([c for _, c in plain[:tenth]])
        late = 1000 * np.median([c for _, c in plain[-tenth:]])
        print(
            f"  a poll without a detector run: {early:.1f} ms (median, first tenth of the "
            f"run) vs {late:.1f} ms (last tenth): the same new rows, 10x the history"
        )
        print(
            f"  final event at epoch {final[0].breakthrough_epoch:g}; live confirmed at step "
            f"{live[0].seen_at_step if live else None}, first epoch "
            f"{live[0].first_epoch if live else None}; reads {w.reader.path}, "
            f"{w.reader.full_reads} whole-history reads"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--view", choices=tuple(VIEWS), action="append")
    parser.add_argument("--pace", type=int, default=25, help="logged rows per poll")
    parser.add_argument("--run", action="append", help="only these corpus runs")
    parser.add_argument("--skip-agreement", action="store_true")
    parser.add_argument("--skip-cost", action="store_true")
    parser.add_argument("-v", "--verbose", action="store_true", help="one line per run")
    args = parser.parse_args()
    if not args.skip_agreement:
        agreement(args.view or list(VIEWS), args.pace, args.run, args.verbose)
    if not args.skip_cost:
        cost([1000, 200])
    print(f"\n(sustain period: {Thresholds().sustain.epochs:g} epochs or a tenth of the rise)")


if __name__ == "__main__":
    main()
