"""Roles for a run that logs none of TernaryVAE's keys, read off common key names.

Other trainers name their metrics alike: HF Trainer `eval_accuracy`, `eval_loss`, `loss`,
`learning_rate`; Keras `val_accuracy`, `val_loss`, `loss`, `lr`; Lightning whatever the
`self.log` calls say, often `val_acc`, `val/loss`, `train_loss` (`train_loss_step` and
`train_loss_epoch` when logged both ways), and `lr-AdamW` from its LearningRateMonitor;
TensorBoard-style names add `epoch_` (`epoch_loss`). A loss may be named for what it is
(`test_nll`, `val_mse`, `val_ppl`; a perplexity is analysed as its log). A key is split into
lower-case words; the held-out accuracy and loss are the keys naming a held-out split and what
they measure, the training loss one naming training (or a bare loss word), the LR `lr` or
`learning rate`. Of several, a series beats a key logged once (HF Trainer's end-of-run
`train_loss` beside its per-log `loss`), then the first held-out word below wins, then the
first measure word below (`val_loss` over `val_mse`), then a per-epoch key over a per-step one,
then the shortest key. An error rate (`val_error`, `val_top1_err`) is neither: it falls as an
accuracy rises.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from tvae import contract as C
from tvae.analysis.roles import GENERALISATION_ROLES, Roles, key_words
from tvae.analysis.units import CROSS_ENTROPY, PERPLEXITY

HELD_OUT = ("val", "valid", "validation", "eval", "test", "dev")
TRAINING = ("train", "training")
ACCURACY = ("acc", "accuracy", "top1", "acc1")
LOSS = (*CROSS_ENTROPY, "bce", "mse", "rmse", "mae", *PERPLEXITY)
ERROR = ("err", "error")  # an error rate: 1 - accuracy, named with an accuracy's words
WHEN = ("epoch", "step")  # words that say when a value was logged, not what it measures
#: Our own roles a guessed map unsets (no other trainer logs them).
UNSET = ("hierarchy", "quality", "grad_norm")


def _pick(keys: list[str], rank, rows: Mapping[str, int]) -> str | None:
    """The key with the lowest (logged once, rank, per-step, length, name) among keys ranked
    (not None): Lightning logs ``x_step`` and ``x_epoch`` for a metric logged both ways; the
    epoch's wins. ``rows``: rows per key, where known."""
    ranked = [
        (rows.get(k, 2) <= 1, r, "step" in words, len(k), k)
        for k in keys
        if (r := rank(words := key_words(k))) is not None
    ]
    return min(ranked)[-1] if ranked else None


def _measure(words: list[str], what: tuple[str, ...]) -> int | None:
    """The first of ``what`` that ``words`` name, by its place in ``what``."""
    found = [what.index(w) for w in words if w in what]
    return min(found) if found else None


def _unclear(words: list[str]) -> bool:
    """A key naming an accuracy and a loss (`val_acc_ce`) is neither: which it is, is unsaid;
    nor is one naming an error rate (`val_top1_err`)."""
    if any(w in ERROR for w in words):
        return True
    return _measure(words, ACCURACY) is not None and _measure(words, LOSS) is not None


def _held_out(what: tuple[str, ...]):
    def rank(words: list[str]) -> tuple[int, int] | None:
        measure = _measure(words, what)
        split = [HELD_OUT.index(w) for w in words if w in HELD_OUT]
        return None if measure is None or not split or _unclear(words) else (min(split), measure)

    return rank


def _training_loss(words: list[str]) -> tuple[int, int] | None:
    measure = _measure(words, LOSS)
    if measure is None or _unclear(words) or any(w in HELD_OUT for w in words):
        return None
    if any(w in TRAINING for w in words):
        return 0, measure
    return (1, measure) if len([w for w in words if w not in WHEN]) == 1 else None


def _lr(words: list[str]) -> int | None:
    if _measure(words, LOSS + ACCURACY) is not None:  # `lr_loss`: a loss, not the LR
        return None
    if "lr" in words:
        return 0
    return 1 if "learning" in words and "rate" in words else None


def guess_roles(
    keys: Iterable[str], rows: Mapping[str, int] | None = None
) -> tuple[Roles, str] | None:
    """(roles, the `metric_map` that says them) from ``keys``' names (and ``rows``, the rows
    each was logged, where known); None when none of them names a held-out accuracy or loss
    (nothing to find grokking in)."""
    keys = [k for k in keys if not k.startswith(C.SYSTEM_PREFIX)]
    rows = rows or {}
    found = {
        "accuracy": _pick(keys, _held_out(ACCURACY), rows),
        "val_loss": _pick(keys, _held_out(LOSS), rows),
        "loss": _pick(keys, _training_loss, rows),
        "lr": _pick(keys, _lr, rows),
    }
    if not (found["accuracy"] or found["val_loss"]):
        return None
    text = ",".join([f"{r}={k or ''}" for r, k in found.items()] + [f"{r}=" for r in UNSET])
    return Roles.from_metric_map(text), text


def roles_for(
    keys: Iterable[str], rows: Mapping[str, int] | None = None
) -> tuple[Roles, str | None] | None:
    """Without a metric_map: (our roles, None) when ``keys`` hold one of our generalisation
    keys, else (the guessed roles, their metric_map); None when neither finds one."""
    keys = list(keys)
    ours = Roles()
    if any(getattr(ours, r) in keys for r in GENERALISATION_ROLES):
        return ours, None
    return guess_roles(keys, rows)
