"""Poincaré-ball geometry (curvature -1), always evaluated in fp32.

Under autocast a bf16/fp16 artanh near the boundary is NaN/Inf-prone, so every function here
casts its inputs to fp32 and runs with autocast disabled. Norms are clamped to 1 - EPS, which
keeps radius 0.999 (and anything closer to the boundary) finite.
"""

from __future__ import annotations

import contextlib

import torch

EPS = 1e-5  # fp32 can resolve 1 - 1e-5 exactly enough for artanh


def _fp32(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype == torch.float32 else x.float()


def no_autocast(x: torch.Tensor) -> contextlib.AbstractContextManager:
    """Autocast off for the block; a no-op (cheaper than entering torch.autocast) when it is."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.autocast(device_type=x.device.type, enabled=False)
    return contextlib.nullcontext()


def radius_from_norm(norm: torch.Tensor) -> torch.Tensor:
    """Hyperbolic distance to the origin of a point with Euclidean norm `norm`: 2 artanh(norm)."""
    with no_autocast(norm):
        n = _fp32(norm).clamp(0.0, 1.0 - EPS)
        return 2.0 * torch.atanh(n)


def dist0(x: torch.Tensor) -> torch.Tensor:
    """Hyperbolic distance from the origin to each point x (..., d)."""
    with no_autocast(x):
        return radius_from_norm(_fp32(x).norm(dim=-1))


def dist(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Hyperbolic distance between points x and y (..., d), broadcastable.

    d = arcosh(1 + 2|x-y|^2 / ((1-|x|^2)(1-|y|^2))), written as 2 asinh(sqrt(q)) with
    q = |x-y|^2 / ((1-|x|^2)(1-|y|^2)), which stays accurate for nearby points (arcosh(1+e)
    loses all precision for small e) and has a finite gradient at zero via the clamp.
    """
    with no_autocast(x):
        x, y = _fp32(x), _fp32(y)
        x2 = (x * x).sum(-1).clamp(max=(1.0 - EPS) ** 2)
        y2 = (y * y).sum(-1).clamp(max=(1.0 - EPS) ** 2)
        diff2 = ((x - y) ** 2).sum(-1)
        q = diff2 / ((1.0 - x2) * (1.0 - y2))
        return 2.0 * torch.asinh(torch.sqrt(q.clamp_min(1e-15)))


def expmap0(v: torch.Tensor) -> torch.Tensor:
    """Exponential map at the origin: tangent vector v -> tanh(|v|) v/|v| (norm < 1 - EPS)."""
    with no_autocast(v):
        v = _fp32(v)
        n = v.norm(dim=-1, keepdim=True).clamp_min(1e-15)
        return torch.tanh(n).clamp(max=1.0 - EPS) * v / n


def logmap0(y: torch.Tensor) -> torch.Tensor:
    """Logarithmic map at the origin: point y -> artanh(|y|) y/|y| (inverse of expmap0)."""
    with no_autocast(y):
        y = _fp32(y)
        n = y.norm(dim=-1, keepdim=True).clamp(1e-15, 1.0 - EPS)
        return torch.atanh(n) * y / n


def project(x: torch.Tensor, max_norm: float = 1.0 - EPS) -> torch.Tensor:
    """Scale points whose norm exceeds max_norm back onto the ball of radius max_norm."""
    with no_autocast(x):
        x = _fp32(x)
        n = x.norm(dim=-1, keepdim=True).clamp_min(1e-15)
        return x * (max_norm / n).clamp(max=1.0)
