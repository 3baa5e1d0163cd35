"""Pull a run's whole metric history into pandas, fast enough for 100,000-epoch runs.

`MlflowClient.get_metric_history` builds one ORM object and one `Metric` entity per row; for
2.5 M rows that alone takes tens of seconds. Against a SQL tracking store we instead read the
`metrics` table directly, one streamed query per key (the (run_uuid, key, step) index serves it),
fetched in pages of plain tuples. Any other store (REST server, file store) goes through the
public client, which pages itself. Either way: every key, every step, one pass per key.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

SYSTEM_PREFIX = "system/"
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


def _series(steps: np.ndarray, values: np.ndarray, stamps: np.ndarray) -> pd.Series:
    """One key's rows -> Series indexed by step; a step logged twice keeps its latest value."""
    if len(steps) == 0:
        return pd.Series(dtype=float)
    order = np.lexsort((stamps, steps))
    steps, values = steps[order], values[order].astype(float, copy=True)
    last = np.append(steps[1:] != steps[:-1], True)  # last row of each step after sorting
    steps, values = steps[last], values[last]
    values[values >= _FLOAT_MAX] = math.inf
    values[values <= -_FLOAT_MAX] = -math.inf
    return pd.Series(values, index=steps.astype(np.int64))


_METRIC_ROWS = (
    "SELECT step, timestamp, value, is_nan FROM metrics WHERE run_uuid = :run AND key = :key"
)


def _fetch_series(cursor: Any) -> pd.Series:
    """Page the DB-API cursor of _METRIC_ROWS as plain tuples (no ORM, no Row objects)."""
    chunks = []
    while rows := cursor.fetchmany(PAGE_ROWS):
        flat = np.fromiter((float(x) for row in rows for x in row), np.float64, 4 * len(rows))
        chunks.append(flat.reshape(-1, 4))
    table = np.concatenate(chunks) if chunks else np.empty((0, 4))
    values = np.where(table[:, 3] != 0, np.nan, table[:, 2])
    return _series(table[:, 0].astype(np.int64), values, table[:, 1])


def _read_sql(engine, run_id: str, key: str) -> pd.Series:
    """One key's rows through the store's SQLAlchemy engine."""
    from sqlalchemy import text

    with engine.connect() as conn:
        return _fetch_series(conn.execute(text(_METRIC_ROWS), {"run": run_id, "key": key}).cursor)


def _read_client(client: MlflowClient, run_id: str, key: str) -> pd.Series:
    rows = client.get_metric_history(run_id, key)
    return _series(
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
    `get_metric_history` path (the benchmark's baseline).
    """
    run = client.get_run(run_id)
    keys = sorted(run.data.metrics)
    engine = _sql_engine(client) if fast else None
    columns: dict[str, pd.Series] = {}
    for key in keys:
        series = _read_sql(engine, run_id, key) if engine is not None else None
        columns[key] = series if series is not None else _read_client(client, run_id, key)
    return _split(columns)


def _split(columns: dict[str, pd.Series]) -> tuple[pd.DataFrame, pd.DataFrame]:
    history = _frame({k: s for k, s in columns.items() if not k.startswith(SYSTEM_PREFIX)})
    system = _frame({k: s for k, s in columns.items() if k.startswith(SYSTEM_PREFIX)})
    return history, system


def _frame(columns: dict[str, pd.Series]) -> pd.DataFrame:
    if not columns:
        return pd.DataFrame(index=pd.Index([], dtype=np.int64, name="epoch"))
    frame = pd.concat(columns, axis=1).sort_index()
    frame.index = frame.index.astype(np.int64)
    frame.index.name = "epoch"
    return frame
