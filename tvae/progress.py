"""One console line per epoch: the numbers a person watches while a run trains."""

from __future__ import annotations


def format_epoch_line(epoch: int, total: int, metrics: dict[str, float]) -> str:
    """e.g. 'epoch  12/50 loss 0.4312 cov 0.9871 hB -0.8011 Q 2.034 | 142,113 samples/s'."""
    frozen = "".join(
        name
        for name, key in (("A", "state/frozen_encoder_A"), ("B", "state/frozen_encoder_B"))
        if metrics.get(key, 0.0) >= 0.5
    )
    width = len(str(total))
    return (
        f"epoch {epoch:>{width}}/{total} loss {metrics['train/loss']:.4f} "
        f"cov {metrics['eval/coverage']:.4f} hB {metrics['eval/hierarchy_B']:+.4f} "
        f"Q {metrics['eval/Q']:.3f} lr {metrics['opt/lr']:.2e} "
        f"| {metrics['perf/samples_per_sec']:,.0f} samples/s"
        + (f" | frozen {frozen}" if frozen else "")
    )
