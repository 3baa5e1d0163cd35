"""The 3^9 ternary operations and their 3-adic valuations (the whole data set of TernaryVAE).

Row i of the operation table is the base-3 digits of i, least significant first, with digits
0, 1, 2 read as -1, 0, +1. The valuation v(i) is the number of trailing zero digits of i
(largest k with 3^k | i), with v(0) = 9 by convention, so levels v = 0..9 hold
13122, 4374, 1458, 486, 162, 54, 18, 6, 2, 1 operations.
"""

from __future__ import annotations

from functools import lru_cache

import torch

N_DIGITS = 9
N_OPS = 3**N_DIGITS  # 19683
N_LEVELS = N_DIGITS + 1
LEVEL_SIZES = (13122, 4374, 1458, 486, 162, 54, 18, 6, 2, 1)


@lru_cache(maxsize=1)
def _digits() -> torch.Tensor:
    idx = torch.arange(N_OPS, dtype=torch.long)
    powers = 3 ** torch.arange(N_DIGITS, dtype=torch.long)
    return (idx.unsqueeze(1) // powers) % 3  # (N_OPS, 9) in {0,1,2}


def ternary_ops() -> torch.Tensor:
    """(19683, 9) float32 in {-1, 0, +1}; row i = base-3 digits of i, least significant first."""
    return (_digits() - 1).to(torch.float32)


def valuation_of(n: torch.Tensor) -> torch.Tensor:
    """3-adic valuation of non-negative integers (|n| for negatives), capped at 9; v(0) = 9."""
    n = n.abs().to(torch.long)
    v = torch.zeros_like(n)
    for k in range(1, N_DIGITS + 1):
        v += (n % (3**k) == 0).long()
    return v


@lru_cache(maxsize=1)
def _valuations() -> torch.Tensor:
    return valuation_of(torch.arange(N_OPS, dtype=torch.long))


def valuations() -> torch.LongTensor:
    """(19683,) long: v(i) = largest k with 3^k | i, and v(0) = 9."""
    return _valuations().clone()
