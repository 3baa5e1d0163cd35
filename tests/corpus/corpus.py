"""Read the detection corpus: runs, labels, splits, and the views a user would map."""

from __future__ import annotations

import json
from pathlib import Path

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


def metric_map(view: str) -> str:
    return VIEWS[view] + UNSET
