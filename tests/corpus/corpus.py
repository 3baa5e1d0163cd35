"""Read the detection corpus: runs, labels, splits, the views a user would map, and the runs
as other loggers would have logged them (by step, at log-spaced epochs, sparse evaluation,
accuracy in percent, without steps, evaluated on a fresh sample each time, stopped early, the
losses as perplexities, the training loss of one batch)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
RUNS_DIR = HERE / "runs"
INDEX = HERE / "index.json"

#: How users map a run's keys: with accuracy and losses, loss-only, the README's foreign-run
#: example (validation accuracy and training loss), and the training accuracy as `accuracy`.
VIEWS = {
    "acc+loss": "accuracy=val_acc,loss=train_loss,val_loss=val_loss,lr=lr",
    "loss-only": "accuracy=,loss=train_loss,val_loss=val_loss,lr=lr",
    "val_acc": "accuracy=val_acc,loss=train_loss,lr=lr",
    "train_acc": "accuracy=train_acc,loss=train_loss,val_loss=val_loss,lr=lr",
}
#: Roles the corpus runs never log (TernaryVAE's defaults), unset in every view.
UNSET = ",hierarchy=,quality=,grad_norm="

#: Classes scored as runs without a grokking event (`gradual` is reported, not scored).
NEGATIVE = ("fast", "none", "lr_confound")


def index() -> dict[str, dict]:
    """Every run's spec, facts, label and split, by name."""
    return json.loads(INDEX.read_text())


def load_run(name: str) -> pd.DataFrame:
    """A run's logged history (index = epoch; train/val loss and accuracy, lr)."""
    return pd.read_csv(RUNS_DIR / f"{name}.csv.gz", index_col="epoch")


#: The keys a run logs its losses under as perplexities (language-model trainers log both so).
PERPLEXITY_KEYS = {"train_loss": "train_ppl", "val_loss": "val_ppl"}


def metric_map(view: str, perplexity: bool = False) -> str:
    """``view``'s map; ``perplexity``: with the losses' keys those of `as_perplexity`."""
    text = VIEWS[view] + UNSET
    for loss, ppl in PERPLEXITY_KEYS.items() if perplexity else ():
        text = text.replace(f"={loss}", f"={ppl}")
    return text


def log_spaced(df: pd.DataFrame, rows: int) -> pd.DataFrame:
    """The rows of ``df`` nearest ``rows`` log-spaced epochs over its span (all if 0)."""
    if not rows:
        return df
    e = df.index.to_numpy(dtype=float)
    want = np.geomspace(max(e[0], 1.0), e[-1], rows)
    return df.iloc[np.unique(np.searchsorted(e, want).clip(0, len(e) - 1))].copy()


def in_percent(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with its accuracies logged in percent (97.3, not 0.973)."""
    for key in [c for c in df.columns if c.endswith("_acc")]:
        df[key] = df[key] * 100.0
    return df


def stopped(df: pd.DataFrame, label: dict, after: int) -> pd.DataFrame:
    """``df`` ended ``after`` epochs past the epoch its label says it generalised (early
    stopping); a run that never generalised is kept whole."""
    done = label.get("generalised")
    return df.loc[: done + after].copy() if after and done is not None else df


def last_batch(df: pd.DataFrame, sd: float, seed: int = 0) -> pd.DataFrame:
    """``df`` with its training loss scattered by a lognormal factor (``sd`` in ln) at each
    row, as a script that logs its last batch's loss each epoch, not the epoch's mean, logs it."""
    if sd:
        rng = np.random.default_rng(seed)
        df["train_loss"] = df["train_loss"] * np.exp(rng.normal(0.0, sd, len(df)))
    return df


def as_perplexity(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with each loss logged as its perplexity, exp(loss), under `PERPLEXITY_KEYS`; a
    loss above 700 (the digits runs' squared errors; no cross-entropy gets there) as exp(700),
    not as the overflow to inf."""
    ppl = {k: np.exp(np.minimum(df[k], 700.0)) for k in PERPLEXITY_KEYS if k in df}
    return df.assign(**ppl).rename(columns=PERPLEXITY_KEYS)


def sampled(df: pd.DataFrame, n: int, seed: int = 0) -> pd.DataFrame:
    """``df`` with its val_acc measured on ``n`` examples drawn afresh at each evaluation (as
    nanoGPT's `estimate_loss` draws its batches): binomial noise around the logged value."""
    if n:
        rng = np.random.default_rng(seed)
        p = df["val_acc"].to_numpy(dtype=float, copy=True)
        ok = np.isfinite(p)
        p[ok] = rng.binomial(n, np.clip(p[ok], 0, 1)) / n
        df["val_acc"] = p
    return df


def eval_every(df: pd.DataFrame, every: int, apart: bool = False) -> pd.DataFrame:
    """``df`` with its val_* keys on every ``every``-th row only; ``apart``: its train_* keys
    on the other rows only, so no row holds both (evaluation logged at its own steps)."""
    if every > 1:
        drop = np.arange(len(df)) % every != every - 1
        for key in [c for c in df.columns if c.startswith("val_")]:
            df.loc[drop, key] = np.nan
        for key in [c for c in df.columns if apart and c.startswith("train_")]:
            df.loc[~drop, key] = np.nan
    return df


def by_steps(df: pd.DataFrame, k: int, log_epoch: bool, loss_rows: int) -> pd.DataFrame:
    """``df`` logged against optimizer steps (x = epoch x k), the epoch beside them as `epoch`
    if ``log_epoch``, and the training loss ``loss_rows`` times an epoch."""
    e = df.index.to_numpy(dtype=float)
    if log_epoch:
        df["epoch"] = e
    df.index = np.round(e * k).astype(np.int64)
    if loss_rows > 1:
        loss = df["train_loss"].to_numpy(dtype=float)
        steps = np.arange(round((e[0] - 1) * k), round(e[-1] * k) + 1, k / loss_rows)[1:]
        steps = np.round(steps).astype(np.int64)
        tiny = np.nanmin(loss[loss > 0])
        at = steps / k
        extra = {"train_loss": np.exp(np.interp(at, e, np.log(np.maximum(loss, tiny))))}
        if log_epoch:
            extra["epoch"] = at
        rows = pd.DataFrame(extra, index=steps)
        df = pd.concat([rows, df.drop(columns="train_loss")]).groupby(level=0).last()
    return df


def without_steps(
    df: pd.DataFrame, batches: int = 1, t0: int = 0
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``df``'s rows (steps, values, timestamps) as a script logs them with
    `mlflow.log_metric(key, value)`: no step (every row at step 0), one call a key a row in
    column order, 2 ms apart; with ``batches`` > 1 the training loss that many times a row
    before the other keys (falling to the row's value, logged last)."""
    out: dict[str, list] = {key: [] for key in df.columns}
    ts = t0
    for row in df.itertuples(index=False):
        values = dict(zip(df.columns, row, strict=True))
        for b in range(batches - 1):
            out["train_loss"].append((0, values["train_loss"] * (1.5 - b / batches), ts))
            ts += 2
        for key, value in values.items():
            if not np.isnan(value):
                out[key].append((0, value, ts))
                ts += 2
    return _as_rows(out)


def _as_rows(out: dict[str, list]) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """{key: [(step, value, time), ...]} as the (steps, values, times) arrays a store read gives."""
    return {
        key: tuple(
            np.array([r[i] for r in rows], dtype=d) for i, d in enumerate((np.int64, float, float))
        )
        for key, rows in out.items()
    }


def train_by_step(df: pd.DataFrame, k: int) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``df``'s rows (steps, values, timestamps) as a script logs them with the training keys
    (train_*, lr) against optimizer steps, ``k`` an epoch (the epoch's value at its last step),
    and the val_* keys against epochs after them, 2 ms apart."""
    out: dict[str, list] = {key: [] for key in df.columns}
    ts = 0
    for epoch, row in zip(df.index, df.itertuples(index=False), strict=True):
        values = dict(zip(df.columns, row, strict=True))
        for key in sorted(values, key=lambda c: c.startswith("val_")):
            step = int(epoch) if key.startswith("val_") else int(round(epoch * k))
            if not np.isnan(values[key]):
                out[key].append((step, values[key], ts))
                ts += 2
    return _as_rows(out)
