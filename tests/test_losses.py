"""Loss terms: targets, hinge behaviour on ordered/disordered radii, finite gradients."""

import pytest
import torch

from tvae.config import LossConfig, ModelConfig
from tvae.losses import TERMS, LossComputer, kl_divergence, radial_targets
from tvae.model import TernaryVAE
from tvae.ops import ternary_ops, valuations


def _fake_out(r_B: torch.Tensor, n_latent: int = 4) -> dict[str, torch.Tensor]:
    n = r_B.numel()
    z = (
        torch.nn.functional.normalize(torch.randn(n, n_latent), dim=-1)
        * torch.tanh(r_B / 2)[:, None]
    )
    zeros = torch.zeros(n, n_latent)
    return {
        "logits": torch.zeros(n, 9, 3),
        "mu_A": zeros,
        "logvar_A": zeros,
        "mu_B": zeros,
        "logvar_B": zeros,
        "z_A": z,
        "z_B": z,
        "radius_A": r_B,
        "radius_B": r_B,
    }


def test_radial_targets_decrease_evenly():
    t = radial_targets(LossConfig())
    steps = t[:-1] - t[1:]
    assert (steps > 0).all() and torch.allclose(steps, steps[0].expand_as(steps))


def test_kl_zero_at_prior():
    assert kl_divergence(torch.zeros(5, 3), torch.zeros(5, 3)).item() == 0.0
    assert kl_divergence(torch.ones(5, 3), torch.zeros(5, 3)).item() == pytest.approx(1.5)


def test_ordered_radii_have_no_rank_or_separation_loss():
    torch.manual_seed(0)
    cfg = LossConfig()
    lc = LossComputer(cfg, torch.device("cpu"))
    ops, v = ternary_ops()[:2000], valuations()[:2000]
    tgt = (ops + 1).long()
    good = lc.targets[v] + torch.rand(2000) * 1e-3
    _, terms = lc(_fake_out(good), ops, tgt, v, epoch=10, geodesic_active=False)
    t = dict(zip(TERMS, terms.tolist(), strict=True))
    assert t["rank"] == 0.0 and t["separation"] == 0.0 and t["geodesic"] == 0.0
    assert t["radial"] < 1e-5
    assert t["recon"] == pytest.approx(torch.log(torch.tensor(3.0)).item(), rel=1e-5)
    bad = lc.targets[9 - v]  # reversed hierarchy
    _, terms = lc(_fake_out(bad), ops, tgt, v, epoch=10, geodesic_active=True)
    t = dict(zip(TERMS, terms.tolist(), strict=True))
    assert t["rank"] > 0.1 and t["separation"] > 0.0 and t["radial"] > 1.0 and t["geodesic"] > 0


def test_richness_penalises_collapsed_levels():
    cfg = LossConfig()
    lc = LossComputer(cfg, torch.device("cpu"))
    ops, v = ternary_ops()[:2000], valuations()[:2000]
    tgt = (ops + 1).long()
    _, collapsed = lc(_fake_out(lc.targets[v]), ops, tgt, v, 10, False)
    spread = lc.targets[v] + torch.randn(2000) * 0.5
    _, spread_terms = lc(_fake_out(spread), ops, tgt, v, 10, False)
    i = TERMS.index("richness")
    assert collapsed[i] > 0 and spread_terms[i] < collapsed[i]


def test_all_terms_give_finite_gradients_through_the_model():
    torch.manual_seed(0)
    model = TernaryVAE.from_config(ModelConfig())
    lc = LossComputer(LossConfig(), torch.device("cpu"))
    ops, v = ternary_ops()[:512], valuations()[:512]
    total, terms = lc(model(ops), ops, (ops + 1).long(), v, 1, True)
    assert terms.shape == (len(TERMS),) and torch.isfinite(terms).all()
    assert total.item() == pytest.approx(terms.sum().item())
    total.backward()
    # every parameter gets a finite gradient, except encoder A's direction net: no loss reads
    # the direction of z_A (A's hyperbolic head is trained on its radius only)
    for name, p in model.named_parameters():
        if name.startswith("projection_A.direction"):
            assert p.grad is None
        else:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_kl_warmup():
    lc = LossComputer(LossConfig(), torch.device("cpu"))
    kl = LossConfig().kl
    assert lc.kl_weight(1) == pytest.approx(kl.beta / kl.warmup_epochs)
    assert lc.kl_weight(kl.warmup_epochs + 3) == pytest.approx(kl.beta)


def test_single_sample_batch_is_finite():
    torch.manual_seed(0)
    model = TernaryVAE.from_config(ModelConfig())
    lc = LossComputer(LossConfig(), torch.device("cpu"))
    ops, v = ternary_ops()[5:6], valuations()[5:6]
    total, terms = lc(model(ops), ops, (ops + 1).long(), v, 30, True)
    assert torch.isfinite(terms).all() and terms[TERMS.index("geodesic")] == 0.0


def test_branch_shares_sum_to_the_kl_and_radial_terms():
    """Each branch carries its own encoder's share; combined they are the DESIGN terms."""
    torch.manual_seed(0)
    model = TernaryVAE.from_config(ModelConfig())
    lc = LossComputer(LossConfig(), torch.device("cpu"))
    ops, v = ternary_ops()[:300], valuations()[:300]
    out = model(ops)
    _, terms = lc(out, ops, (ops + 1).long(), v, 2, True)
    t = dict(zip(TERMS, terms.tolist(), strict=True))
    kl = kl_divergence(out["mu_A"], out["logvar_A"]) + kl_divergence(out["mu_B"], out["logvar_B"])
    assert t["kl"] == pytest.approx(lc.kl_weight(2) * kl.item(), rel=1e-5)
    target = lc.targets[v]
    radial = ((out["radius_A"] - target) ** 2 + (out["radius_B"] - target) ** 2).mean()
    assert t["radial"] == pytest.approx(LossConfig().radial.weight * radial.item(), rel=1e-5)


@pytest.mark.parametrize("size", [512, 256, 200])  # 1, 2 and 3 pair shifts per batch
def test_epoch_contexts_match_per_batch_contexts_exactly(size):
    """branch_B's model-free inputs computed for a whole epoch at once (one pass per batch
    size) give the same bits as computing them batch by batch, last short batch included."""
    torch.manual_seed(0)
    lc = LossComputer(LossConfig(), torch.device("cpu"))
    perm = torch.randperm(3 * size + 77)
    ops, v = ternary_ops()[perm], valuations()[perm]
    batches = [(ops[i : i + size], v[i : i + size]) for i in range(0, perm.numel(), size)]
    contexts = lc.epoch_contexts(batches)
    assert len(contexts) == 4 and "rank_sign" in contexts[0] and "geo_target" in contexts[0]
    model = TernaryVAE.from_config(ModelConfig())
    for (x, vb), ctx in zip(batches, contexts, strict=True):
        single = {k: t[0] for k, t in lc.batch_contexts(x[None], vb[None]).items()}
        assert ctx.keys() == single.keys()
        assert all(torch.equal(ctx[k], single[k]) for k in ctx)
        out = model(x)
        given = lc.branch_B(out, x, vb, (x + 1).long(), 30, True, ctx)
        assert torch.equal(given, lc.branch_B(out, x, vb, (x + 1).long(), 30, True))
