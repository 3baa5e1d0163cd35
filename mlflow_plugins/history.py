"""Pull a run's whole metric history into pandas, fast enough for 100,000-epoch runs.

`MlflowClient.get_metric_history` builds one ORM object and one `Metric` entity per row; for
2.5 M rows that alone takes tens of seconds. Against a SQL tracking store we instead read the
`metrics` table directly, one streamed query per key (the (run_uuid, key, step) index serves it),
fetched in pages of plain tuples. Any other store (REST server, file store) goes through the
public client, which pages itself. Either way: every key, every step, one pass per key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from mlflow_plugins.stepless import Rows, place_stepless
from tvae.analysis.confounds import history_frame
from tvae.contract import SYSTEM_PREFIX

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

PAGE_ROWS = 50_000
# The SQL store saves +-inf as +-float max (and NaN as is_nan=1); undo that so checks see them.
_FLOAT_MAX = 1.7976931348623157e308


def _sql_engine(client: MlflowClient):
    """The SQLAlchemy engine behind the client's tracking store, or None for other stores."""
    store = getattr(getattr(client, "_tracking_client", None), "store", None)
    engine = getattr(store, "engine", None)
    if engine is None or not hasattr(store, "ManagedSessionMaker"):
        return None
    return engine


def _ordered(steps: np.ndarray, values: np.ndarray, stamps: np.ndarray) -> Rows:
    """One key's rows sorted by (step, time), with the SQL store's +-float max back to +-inf."""
    order = np.lexsort((stamps, steps))
    values = values[order].astype(float, copy=True)
    values[values >= _FLOAT_MAX] = math.inf
    values[values <= -_FLOAT_MAX] = -math.inf
    return steps[order].astype(np.int64), values, stamps[order].astype(float)


def _series(steps: np.ndarray, values: np.ndarray, stamps: np.ndarray) -> pd.Series:
    """One key's rows -> Series indexed by step; a step logged twice keeps its latest value."""
    if len(steps) == 0:
        return pd.Series(dtype=float)
    steps, values, _ = _ordered(steps, values, stamps)
    last = np.append(steps[1:] != steps[:-1], True)  # last row of each step after sorting
    return pd.Series(values[last], index=steps[last])


_METRIC_ROWS = (
    "SELECT step, timestamp, value, is_nan FROM metrics WHERE run_uuid = :run AND key = :key"
)


def _fetch_rows(cursor: Any) -> Rows:
    """Page the DB-API cursor of _METRIC_ROWS as plain tuples (no ORM, no Row objects)."""
    chunks = []
    while rows := cursor.fetchmany(PAGE_ROWS):
        flat = np.fromiter((float(x) for row in rows for x in row), np.float64, 4 * len(rows))
        chunks.append(flat.reshape(-1, 4))
    table = np.concatenate(chunks) if chunks else np.empty((0, 4))
    values = np.where(table[:, 3] != 0, np.nan, table[:, 2])
    return table[:, 0].astype(np.int64), values, table[:, 1]


def _read_sql(engine, run_id: str, key: str) -> Rows:
    """One key's rows through the store's SQLAlchemy engine."""
    from sqlalchemy import text

    with engine.connect() as conn:
        return _fetch_rows(conn.execute(text(_METRIC_ROWS), {"run": run_id, "key": key}).cursor)


def _client_rows(client: MlflowClient, run_id: str, key: str) -> Rows:
    rows = client.get_metric_history(run_id, key)
    return (
        np.fromiter((m.step for m in rows), np.int64, len(rows)),
        np.fromiter((m.value for m in rows), np.float64, len(rows)),
        np.fromiter((m.timestamp for m in rows), np.float64, len(rows)),
    )


def load_history(
    client: MlflowClient, run_id: str, *, fast: bool = True
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(history_df, system_df) of a run: one column per metric key, index = step (epoch).

    `system/*` keys (MLflow's system metrics, stepped by sample) go to system_df so detectors
    never see them; everything else goes to history_df. `fast=False` forces the public
    `get_metric_history` path (the benchmark's baseline). Keys logged without a step, or on
    another kind of step than the rest, are placed by when they were logged (`stepless`), and
    `history.attrs["notes"]` says so. The step ranges each key logged NaN over are in
    `history.attrs[LOGGED_NAN]` (`tvae.analysis.confounds`): the frame's NaN cells include steps
    a key was not logged at.
    """
    run = client.get_run(run_id)
    engine = _sql_engine(client) if fast else None
    read = partial(_read_sql, engine) if engine is not None else partial(_client_rows, client)
    rows = {key: read(run_id, key) for key in sorted(run.data.metrics)}
    logged, note = place_stepless({k: r for k, r in rows.items() if not _system(k)})
    history = history_frame({key: _series(*r) for key, r in logged.items()})
    history.attrs["notes"] = [note] if note else []
    return history, history_frame({key: _series(*r) for key, r in rows.items() if _system(key)})


def _system(key: str) -> bool:
    return key.startswith(SYSTEM_PREFIX)


# -- incremental reads: only the rows logged since the last read --------------------------------

#: Rows the REST `get-history-bulk-interval` call returns unsampled at most (MLflow's cap).
REST_MAX_ROWS = 2500
_REST_NEW_ROWS = "/api/2.0/mlflow/metrics/get-history-bulk-interval"
_FIRST_STEP, _LAST_STEP = -(2**53), 2**53  # the whole step range, JSON-safe
_RUN_STATUS = (
    "SELECT r.status, r.lifecycle_stage, m.key FROM runs r "
    "LEFT JOIN latest_metrics m ON m.run_uuid = r.run_uuid WHERE r.run_uuid = :run"
)
_KEYS_PER_QUERY = 100  # SQLite allows 500 selects in one compound statement
_KEY_ROWS = (  # the key as its position in the query: all-number rows convert in C
    "SELECT {i}, step, timestamp, value, is_nan FROM metrics "
    "WHERE run_uuid = :run AND key = :k{i} AND step >= :s{i} "
    "AND (step > :s{i} OR timestamp > :t{i})"
)


@dataclass(frozen=True)
class RunStatus:
    """What a poll needs to know about a run: its status, whether deleted, its metric keys."""

    status: str
    lifecycle_stage: str
    keys: tuple[str, ...]


def _rest_host(client: MlflowClient):
    """The host credentials of a REST tracking store (an `mlflow server`), else None."""
    store = getattr(getattr(client, "_tracking_client", None), "store", None)
    get = getattr(store, "get_host_creds", None)
    return get if callable(get) else None


class MetricReader:
    """Reads one run a poll at a time: `poll` returns its status and, per metric key, only the
    rows after the last one it returned for that key: a step above it, or its step logged again
    later (a value logged again, or a key logged without a step: every row at step 0). A key
    seen for the first time: all its rows.

    What a poll costs, by store:
    - SQL store (SQLite, PostgreSQL, MySQL): two statements on one connection: the run's row
      joined with its keys in `latest_metrics`, then one ``UNION ALL`` of a ``step >= last``
      select per key, each served by the (run_uuid, key, step) index: O(new rows) (a key
      logged without a step: O(its rows)).
      (`get_run` alone costs tens of milliseconds of ORM work.)
    - REST (`mlflow server`): `get_run`, then per key the public
      `GET /api/2.0/mlflow/metrics/get-history-bulk-interval` from ``last``, which the
      server answers unsampled up to 2,500 rows: O(new rows) while fewer than 2,500 rows of a
      key arrive between two polls. A longer burst (the first poll of a long run) falls back to
      `get_metric_history`, the key's whole history, that once; a key logged without a step
      (all its rows at one step) reads them all every poll, the whole history once they pass
      2,500.
    - any other store: `get_run` and `get_metric_history` per key, O(history) every poll.
    """

    def __init__(self, client: MlflowClient, run_id: str) -> None:
        self.client = client
        self.run_id = run_id
        self.engine = _sql_engine(client)
        self.rest = None if self.engine is not None else _rest_host(client)
        self.path = "sql" if self.engine is not None else "rest" if self.rest else "client"
        self.last: dict[str, tuple[int, float]] = {}  # key -> (step, time) of its last row read
        self.full_reads = 0  # reads of a key's whole history (first reads, bursts, other stores)

    def status(self) -> RunStatus | None:
        """The run's status, lifecycle stage and metric keys; None when it no longer exists."""
        if self.engine is not None:
            from sqlalchemy import text

            with self.engine.connect() as conn:
                return self._sql_status(conn, text)
        return self._client_status()

    def rewind(self) -> None:
        """The next poll reads every row again."""
        self.last.clear()

    def poll(self) -> tuple[RunStatus | None, dict[str, Rows]]:
        """(status, {key: its new rows (steps, values, times) in (step, time) order}) for the
        run's keys other than MLflow's ``system/`` ones; (None, {}) when the run no longer
        exists."""
        if self.engine is not None:
            from sqlalchemy import text

            with self.engine.connect() as conn:
                status = self._sql_status(conn, text)
                if status is None:
                    return None, {}
                rows = self._sql_rows(conn, text, self._keys(status))
        else:
            status = self._client_status()
            if status is None:
                return None, {}
            read = self._rest if self.rest is not None else self._client
            rows = {key: read(key, self.last.get(key)) for key in self._keys(status)}
        out = {}
        for key, (steps, values, stamps) in rows.items():
            if len(steps):
                steps, values, stamps = _ordered(steps, values, stamps)
                self.last[key] = max(self.last.get(key, _BEFORE), (int(steps[-1]), stamps[-1]))
                out[key] = (steps, values, stamps)
        return status, out

    @staticmethod
    def _keys(status: RunStatus) -> list[str]:
        return [k for k in status.keys if not _system(k)]

    def _sql_status(self, conn, text) -> RunStatus | None:
        rows = conn.execute(text(_RUN_STATUS), {"run": self.run_id}).fetchall()
        if not rows:
            return None
        keys = tuple(k for _, _, k in rows if k is not None)
        return RunStatus(str(rows[0][0]), str(rows[0][1]), keys)

    def _sql_rows(self, conn, text, keys: list[str]) -> dict[str, Rows]:
        out = {}
        for at in range(0, len(keys), _KEYS_PER_QUERY):
            part = keys[at : at + _KEYS_PER_QUERY]
            args: dict[str, Any] = {"run": self.run_id}
            for i, key in enumerate(part):
                args[f"k{i}"] = key
                args[f"s{i}"], args[f"t{i}"] = self.last.get(key, _BEFORE)
            query = " UNION ALL ".join(_KEY_ROWS.format(i=i) for i in range(len(part)))
            rows = conn.execute(text(query), args).cursor.fetchall()  # plain tuples, no Rows
            if not rows:
                continue
            table = np.array(rows, dtype=np.float64)
            values = np.where(table[:, 4] != 0, np.nan, table[:, 3])
            for i in np.unique(table[:, 0]).astype(int):
                sel = table[:, 0] == i
                out[part[i]] = (table[sel, 1].astype(np.int64), values[sel], table[sel, 2])
        return out

    def _client_status(self) -> RunStatus | None:
        from mlflow.exceptions import MlflowException

        from mlflow_plugins.store_writes import is_not_found

        try:
            run = self.client.get_run(self.run_id)
        except MlflowException as err:
            if is_not_found(err):
                return None
            raise
        return RunStatus(run.info.status, run.info.lifecycle_stage, tuple(run.data.metrics))

    def _rest(self, key: str, since: tuple[int, float] | None) -> Rows:
        from mlflow.utils.rest_utils import http_request, verify_rest_response

        params = {
            "run_ids": [self.run_id],
            "metric_key": key,
            "start_step": _FIRST_STEP if since is None else since[0],
            "end_step": _LAST_STEP,
            "max_results": REST_MAX_ROWS,
        }
        response = http_request(self.rest(), _REST_NEW_ROWS, "GET", params=params, max_retries=1)
        rows = verify_rest_response(response, _REST_NEW_ROWS).json().get("metrics", [])
        if len(rows) >= REST_MAX_ROWS:  # the server sampled the range: read it all instead
            return self._client(key, since)
        return _after(
            (
                np.fromiter((int(r.get("step", 0)) for r in rows), np.int64, len(rows)),
                np.fromiter((float(r.get("value", "nan")) for r in rows), np.float64, len(rows)),
                np.fromiter((float(r.get("timestamp", 0)) for r in rows), np.float64, len(rows)),
            ),
            since,
        )

    def _client(self, key: str, since: tuple[int, float] | None) -> Rows:
        self.full_reads += 1
        return _after(_client_rows(self.client, self.run_id, key), since)


_BEFORE = (-(2**62), -1.0)  # (step, time) before any row


def _after(rows: Rows, since: tuple[int, float] | None) -> Rows:
    """The rows logged after `since`: a later step, or its step at a later time."""
    if since is None:
        return rows
    steps, values, stamps = rows
    new = (steps > since[0]) | ((steps == since[0]) & (stamps > since[1]))
    return steps[new], values[new], stamps[new]
