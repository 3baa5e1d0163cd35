"""Poincaré-ball functions against closed forms, and finite near the boundary under autocast."""

import math

import pytest
import torch

from tvae.geometry import dist, dist0, expmap0, logmap0, project, radius_from_norm


def test_dist0_closed_form():
    for r in (0.0, 0.1, 0.5, 0.9, 0.99):
        x = torch.tensor([[r, 0.0, 0.0]])
        assert dist0(x).item() == pytest.approx(math.log((1 + r) / (1 - r)), abs=1e-5)


def test_dist_closed_form_and_symmetry():
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(64, 5, generator=gen) * 0.3
    y = torch.rand(64, 5, generator=gen) * 0.3
    d = dist(x, y).double()
    x2, y2 = (x.double() ** 2).sum(-1), (y.double() ** 2).sum(-1)
    arg = 1 + 2 * ((x.double() - y.double()) ** 2).sum(-1) / ((1 - x2) * (1 - y2))
    assert torch.allclose(d, torch.acosh(arg), atol=1e-5)
    assert torch.allclose(dist(x, y), dist(y, x))
    assert torch.allclose(dist(x, torch.zeros_like(x)), dist0(x), atol=1e-5)
    assert dist(x, x).abs().max().item() < 1e-5


def test_exp_log_inverse():
    v = torch.randn(32, 8, generator=torch.Generator().manual_seed(2))
    y = expmap0(v)
    assert (y.norm(dim=-1) < 1).all()
    assert torch.allclose(logmap0(y), v, atol=1e-4)
    # |expmap0(v)| = tanh(|v|), so dist0(expmap0(v)) = 2|v|
    assert torch.allclose(dist0(y), 2 * v.norm(dim=-1), atol=1e-3)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_finite_at_radius_0999_under_autocast(dtype):
    x = torch.nn.functional.normalize(torch.randn(16, 8), dim=-1) * 0.999
    x.requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        xin = x.to(dtype)
        r = dist0(xin)
        d = dist(xin, xin.flip(0))
        n = radius_from_norm(xin.norm(dim=-1))
    for t in (r, d, n):
        assert t.dtype == torch.float32 and torch.isfinite(t).all()
    (r.sum() + d.sum() + n.sum()).backward()
    assert torch.isfinite(x.grad).all()
    if dtype == torch.float32:  # (in bf16, 0.999 rounds to 1.0 and is clamped to 1 - EPS)
        assert r.max().item() == pytest.approx(math.log(1.999 / 0.001), rel=1e-3)


def test_project_caps_norm():
    x = torch.tensor([[3.0, 4.0], [0.1, 0.0]])
    p = project(x, 0.9)
    assert p[0].norm().item() == pytest.approx(0.9, abs=1e-6)
    assert torch.equal(p[1], x[1])
