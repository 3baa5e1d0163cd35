"""eval/* metrics: Spearman equals scipy with ties; the hierarchy ceiling; metric definitions."""

import pytest
import torch
from scipy import stats

from tvae.metrics import EVAL_KEYS, compute_eval_metrics, dist_corr, richness, spearman
from tvae.ops import N_OPS, ternary_ops, valuations


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_spearman_matches_scipy_with_ties(seed):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randint(0, 6, (3000,), generator=gen)  # heavy ties
    b = torch.randint(0, 40, (3000,), generator=gen).float()  # ties too
    c = torch.randn(3000, generator=gen)  # no ties
    for x, y in ((a, b), (a, c), (c, b), (c, c * 2 + 1)):
        expect = stats.spearmanr(x.numpy(), y.numpy())[0]
        assert spearman(x, y).item() == pytest.approx(expect, abs=1e-6)


def test_hierarchy_ceiling_for_perfectly_ordered_radii():
    v = valuations()
    # strictly decreasing with valuation, distinct within a level
    radius = (9 - v).float() + torch.rand(N_OPS, generator=torch.Generator().manual_seed(0)) * 0.5
    h = spearman(v, radius).item()
    assert h == pytest.approx(-0.83205, abs=1e-5)
    assert h == pytest.approx(stats.spearmanr(v.numpy(), radius.numpy())[0], abs=1e-6)


def test_compute_eval_metrics_definitions():
    ops, v = ternary_ops(), valuations()
    gen = torch.Generator().manual_seed(3)
    recon = ops.clone()
    recon[:100, 0] = -recon[:100, 0] + 0.0  # flips -1<->+1, 0 stays: some rows still correct
    wrong = (recon != ops).any(1).float().mean().item()
    r_B = (9 - v).float() * 0.25 + torch.rand(N_OPS, generator=gen) * 0.05
    r_A = torch.rand(N_OPS, generator=gen)
    m = compute_eval_metrics(ops, v, recon, r_A, r_B)
    assert tuple(m) == EVAL_KEYS and all(isinstance(x, float) for x in m.values())
    assert m["eval/coverage"] == pytest.approx(1 - wrong)
    assert m["eval/hierarchy_B"] == pytest.approx(stats.spearmanr(v, r_B)[0], abs=1e-6)
    assert m["eval/hierarchy_A"] == pytest.approx(stats.spearmanr(v, r_A)[0], abs=1e-6)
    assert m["eval/Q"] == pytest.approx(m["eval/dist_corr"] + 1.5 * abs(m["eval/hierarchy_B"]))
    assert m["eval/r_v0"] == pytest.approx(r_B[v == 0].double().mean().item(), rel=1e-6)
    assert m["eval/r_v9"] == pytest.approx(r_B[0].item(), rel=1e-6)
    per_level = [r_B[v == k].double().var(unbiased=False).item() for k in range(9)]
    assert m["eval/richness"] == pytest.approx(sum(per_level) / 10, rel=1e-6)
    assert richness(r_B, v).item() == pytest.approx(m["eval/richness"])


def test_dist_corr_fixed_sample_and_sign():
    v = valuations()
    r = (9 - v).float() + torch.rand(N_OPS, generator=torch.Generator().manual_seed(4)) * 0.1
    first, second = dist_corr(r, v).item(), dist_corr(r.clone(), v).item()
    assert first == second and 0.85 < first < 0.92  # ceiling with within-level spread: 0.9147
    noise = torch.rand(N_OPS, generator=torch.Generator().manual_seed(5))
    assert abs(dist_corr(noise, v).item()) < 0.05
