"""A run's durable outbox: every write meant for the tracking server, kept on local disk first.

`<work folder>/journal.jsonl` holds one JSON line per operation (a metric batch, an artifact
upload by file reference, the run's end), appended and fsynced before the operation is tried;
`journal.done` holds the sequence number of the newest operation the store took. Operations
are applied in order by one worker, so one number says what is left. While the tracking server
is away the journal grows and training goes on; `python -m mlflow_plugins.sync <run id>` replays
what is left later. Replaying is harmless: a metric batch keeps its timestamps, and the store
drops a (key, step, timestamp, value) it already holds; an artifact upload overwrites itself.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

JOURNAL_FILE = "journal.jsonl"
DONE_FILE = "journal.done"


class Journal:
    """Append-only operations with a done offset (thread-safe)."""

    def __init__(self, workdir: Path) -> None:
        self.path = Path(workdir) / JOURNAL_FILE
        self._done_path = Path(workdir) / DONE_FILE
        self._lock = threading.Lock()
        self._seq = max((r["seq"] for r in self.records()), default=0)

    def records(self) -> list[dict[str, Any]]:
        """Every operation in the journal, oldest first (a torn last line is ignored)."""
        if not self.path.is_file():
            return []
        out = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue  # killed mid-append: that operation was never submitted
        return out

    def done_seq(self) -> int:
        try:
            return int(self._done_path.read_text().strip() or 0)
        except (OSError, ValueError):
            return 0

    def pending(self) -> list[dict[str, Any]]:
        """Operations the store has not confirmed, oldest first."""
        done = self.done_seq()
        return [r for r in self.records() if r["seq"] > done]

    def append(self, op: str, **fields: Any) -> int:
        """Write the operation durably (fsync) and return its sequence number."""
        with self._lock:
            self._seq += 1
            record = {"seq": self._seq, "op": op, **fields}
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
                f.flush()
                os.fsync(f.fileno())
            return self._seq

    def mark_done(self, seq: int) -> None:
        """Record that the store took every operation up to `seq` (atomic replace)."""
        with self._lock:
            if seq <= self.done_seq():
                return
            tmp = self._done_path.with_suffix(".tmp")
            tmp.write_text(str(seq))
            os.replace(tmp, self._done_path)
