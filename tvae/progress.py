"""One console line per epoch: the numbers a person watches while a run trains."""

from __future__ import annotations

from tvae import contract as C


def format_epoch_line(epoch: int, total: int, metrics: dict[str, float]) -> str:
    """e.g. 'epoch  12/50 loss 0.4312 cov 0.9871 hB -0.8011 Q 2.034 | 142,113 samples/s'."""
    frozen = "".join(
        name for name, key in (("A", C.FROZEN_A), ("B", C.FROZEN_B)) if metrics.get(key, 0.0) >= 0.5
    )
    width = len(str(total))
    return (
        f"epoch {epoch:>{width}}/{total} loss {metrics[C.TRAIN_LOSS]:.4f} "
        f"cov {metrics[C.COVERAGE]:.4f} hB {metrics[C.HIERARCHY_B]:+.4f} "
        f"Q {metrics[C.QUALITY]:.3f} lr {metrics[C.LR]:.2e} "
        f"| {metrics[C.SAMPLES_PER_SEC]:,.0f} samples/s" + (f" | frozen {frozen}" if frozen else "")
    )
