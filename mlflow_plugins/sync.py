"""`python -m mlflow_plugins.sync <run id | work folder>` (`tvae-sync`): upload what a training
kept in its journal while the tracking server was away, in order, then end the run.

The offline counterpart of a training's last minutes (W&B's `wandb sync` is the model): metric
batches keep their original timestamps, checkpoints and logs are read from the work folder, the
best model is logged from the local best.pt, and the run ends with the trainer's status. Safe to
run again: it starts where the last attempt stopped, and a replayed batch is dropped by the store.
Exit 0 when everything is uploaded (the work folder is then removed, as training does), 1 when
the server is still away (one line, the journal kept), 2 for a run with no work folder here.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

from mlflow_plugins.journal import Journal
from mlflow_plugins.runs import RUN_MARKER, work_dir
from mlflow_plugins.store_writes import set_tags

EXIT_FAILED = 1  # the exit codes of the CLIs (entrypoints._cli), which sit above this module
EXIT_BAD_INPUT = 2


def _folder(target: str) -> Path:
    path = Path(target).expanduser()
    return path if path.is_dir() and (path / RUN_MARKER).is_file() else work_dir(target)


def _apply(client: Any, run_id: str, record: dict[str, Any]) -> None:
    from mlflow.entities import Metric

    from mlflow_plugins.tracking import finish_run

    op = record["op"]
    if op == "metrics":
        batch = [Metric(k, float(v), int(ts), int(step)) for k, v, ts, step in record["metrics"]]
        client.log_batch(run_id, metrics=batch, synchronous=True)
    elif op == "artifact":
        path = Path(record["path"])
        if path.is_file():  # a later record of the same file uploads its newest version
            client.log_artifact(run_id, str(path), record.get("artifact_path"))
    elif op == "tags":
        set_tags(client, run_id, record["tags"], record.get("delete", []))
    elif op == "end":
        finish_run(
            client,
            run_id,
            record["status"],
            record.get("reason"),
            record.get("best_checkpoint"),
            record.get("best_epoch"),
            bool(record.get("log_model")),
        )
        client.set_terminated(run_id, record["status"])
    else:
        raise ValueError(f"unknown journal operation {op!r} (seq {record.get('seq')})")


def replay(client: Any, run_id: str, journal: Journal, end: bool = True) -> str | None:
    """Apply the journal's pending operations in order, each marked done once the store took
    it; the first that fails is raised. Without `end` the run's end is skipped (a resume ends
    the run itself). Returns the status the run was ended with, if it was."""
    ended = None
    for record in journal.pending():
        if record["op"] == "end" and not end:
            journal.mark_done(record["seq"])
            continue
        _apply(client, run_id, record)
        journal.mark_done(record["seq"])
        if record["op"] == "end":
            ended = str(record["status"])
    return ended


def sync(target: str) -> int:
    """Replay the journal of run `target`; print one line saying what happened; exit code."""
    import mlflow

    from mlflow_plugins.store_writes import SYNC_COMMAND, is_unreachable

    folder = _folder(target)
    try:
        marker = json.loads((folder / RUN_MARKER).read_text())
        run_id, uri = str(marker["run_id"]), str(marker["tracking_uri"])
    except (OSError, ValueError, KeyError, TypeError):
        line = f"error: no work folder with a {RUN_MARKER} for {target!r} at {folder}"
        print(line, file=sys.stderr)
        return EXIT_BAD_INPUT
    mlflow.set_tracking_uri(uri)  # the model is logged through the fluent API
    client = mlflow.MlflowClient(uri)
    journal = Journal(folder)
    count = len(journal.pending())
    try:
        ended = replay(client, run_id, journal)
    except Exception as err:
        if not is_unreachable(err):
            raise
        print(
            f"error: tracking server {uri} still unreachable; {len(journal.pending())} "
            f"operations kept in {journal.path}; run again later: {SYNC_COMMAND} {run_id}",
            file=sys.stderr,
        )
        return EXIT_FAILED
    if ended is not None or any(r["op"] == "end" for r in journal.records()):
        shutil.rmtree(folder, ignore_errors=True)  # the store holds everything now
    status = f"; run {run_id} {ended}" if ended else ""
    print(f"synced {count} operations of run {run_id} to {uri}{status}")
    return 0


def main(argv: list[str] | None = None) -> None:
    """Console-script entry (`tvae-sync`)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] in ("-h", "--help"):
        print(f"usage: tvae-sync <run id | work folder>\n\n{__doc__}", file=sys.stderr)
        sys.exit(0 if args and args[0] in ("-h", "--help") else EXIT_BAD_INPUT)
    sys.exit(sync(args[0]))


if __name__ == "__main__":
    main()
