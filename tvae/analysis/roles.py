"""Analysis roles: which metric key plays which part, so any MLflow run can be analysed."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from dataclasses import dataclass, fields, replace

from tvae import contract as C

#: Roles that name a single metric key (``controls`` is the one multi-key role).
SINGLE_ROLES = ("loss", "accuracy", "val_loss", "hierarchy", "quality", "grad_norm", "lr")

#: Direction of improvement per role: +1 higher is better, -1 lower is better.
DIRECTION = {"loss": -1, "accuracy": 1, "val_loss": -1, "hierarchy": -1, "quality": 1}

#: Roles whose values are compared in log terms (losses span decades).
LOG_ROLES = ("loss", "val_loss")

#: Roles that measure generalisation: where grokking is looked for.
GENERALISATION_ROLES = ("accuracy", "val_loss", "quality", "hierarchy")


def key_words(key: str) -> list[str]:
    """A metric key's lower-case words (`eval/top1_acc` -> eval, top1, acc)."""
    return [w for w in re.split(r"[^a-z0-9]+", key.lower()) if w]


@dataclass(frozen=True)
class Roles:
    """Role -> metric key. Defaults are TernaryVAE's keys (DESIGN.md metric contract)."""

    loss: str | None = C.TRAIN_LOSS
    accuracy: str | None = C.COVERAGE
    val_loss: str | None = None
    hierarchy: str | None = C.HIERARCHY_B
    quality: str | None = C.QUALITY
    grad_norm: str | None = C.GRAD_NORM
    lr: str | None = C.LR
    controls: tuple[str, ...] = (C.STATE_PREFIX + "*",)
    epoch: str | None = "epoch"  # the epoch at each step, as HF Trainer and Lightning log it

    @classmethod
    def from_metric_map(cls, text: str | None, base: Roles | None = None) -> Roles:
        """Parse ``"accuracy=val_acc,loss=train_loss"`` over ``base`` (default: our roles).

        An empty value unsets a role (``val_loss=``); ``controls`` takes ``|``-separated keys
        or glob patterns. Raises ValueError (one line) on malformed text or unknown roles.
        """
        roles = base or cls()
        if text is None or not text.strip():
            return roles
        known = {f.name for f in fields(cls)}
        updates: dict[str, object] = {}
        for item in text.split(","):
            item = item.strip()
            if not item:
                continue
            if "=" not in item:
                raise ValueError(f"entry {item!r} is not role=key")
            role, key = (part.strip() for part in item.split("=", 1))
            if role not in known:
                raise ValueError(f"unknown role {role!r} (known: {', '.join(sorted(known))})")
            if role in updates:
                raise ValueError(f"role {role!r} given twice")
            if role == "controls":
                updates[role] = tuple(k.strip() for k in key.split("|") if k.strip())
            else:
                updates[role] = key or None
        return replace(roles, **updates)

    def mapping(self) -> dict[str, str]:
        """Single-key roles that are set: role -> key."""
        return {r: getattr(self, r) for r in SINGLE_ROLES if getattr(self, r)}

    def missing(self, columns: Iterable[str]) -> list[str]:
        """Roles whose key is set but absent from ``columns`` (these roles get skipped)."""
        cols = set(columns)
        return [role for role, key in self.mapping().items() if key not in cols]

    def control_columns(self, columns: Iterable[str]) -> list[str]:
        """Columns that are scheduled control signals: ``lr`` plus every ``controls`` match."""
        cols = [c for c in columns if not c.startswith(C.SYSTEM_PREFIX)]
        out = [self.lr] if self.lr in cols else []
        for c in cols:
            if c not in out and any(fnmatch.fnmatchcase(c, pat) for pat in self.controls):
                out.append(c)
        return out
