"""Issue 18: eval/dist_corr_latent and eval/Q_latent, and the latent ranking loss term."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats
from scipy.spatial.distance import pdist

from tvae.analysis import analyze
from tvae.config import LossConfig, load_config
from tvae.contract import EVAL_KEYS, LATENT_EVAL_KEYS
from tvae.losses import TERMS, LossComputer
from tvae.metrics import (
    LATENT_SAMPLE,
    average_ranks,
    compute_eval_metrics,
    dist_corr_latent,
    latent_sample,
    latent_sample_dist_corr,
)
from tvae.ops import N_OPS, ternary_ops, valuations
from tvae.train import Trainer

REPO = Path(__file__).resolve().parents[1]


def _scipy_dist_corr(z: torch.Tensor, v: torch.Tensor) -> float:
    """The research code's definition, straight from scipy."""
    dz = pdist(z.double().numpy())
    dv = pdist(v.double().numpy()[:, None], "cityblock")
    return float(stats.spearmanr(dz, dv)[0])


def test_latent_sample_is_fixed_and_distinct():
    rows = latent_sample()
    assert rows.numel() == LATENT_SAMPLE == 1000 and rows.unique().numel() == 1000
    assert torch.equal(rows, latent_sample().clone()) and int(rows.max()) < N_OPS


@pytest.mark.parametrize("seed", [0, 1])
def test_dist_corr_latent_equals_scipy_on_the_fixed_sample(seed):
    gen = torch.Generator().manual_seed(seed)
    v = valuations()
    rows = latent_sample()
    # some geometry (radius falls with v) plus noise, and a duplicated point (a tie in d)
    z = torch.randn(N_OPS, 16, generator=gen) * 0.01
    z[:, 0] += 0.9 - 0.08 * v.float()
    z[rows[1]] = z[rows[0]]
    expect = _scipy_dist_corr(z[rows], v[rows])
    assert latent_sample_dist_corr(z).item() == pytest.approx(expect, abs=1e-9)
    assert dist_corr_latent(z[rows], v[rows]).item() == pytest.approx(expect, abs=1e-9)
    assert 0.3 < expect < 0.95


def test_dist_corr_latent_bounds():
    v = valuations()
    gen = torch.Generator().manual_seed(2)
    noise = torch.randn(N_OPS, 16, generator=gen)
    assert abs(latent_sample_dist_corr(noise).item()) < 0.05
    # levels on one ray, each a tight cluster: near the tie-limited ceiling (~0.91)
    ray = torch.zeros(N_OPS, 16)
    ray[:, 0] = 0.9 - 0.08 * v.float() + torch.rand(N_OPS, generator=gen) * 1e-3
    assert 0.88 < latent_sample_dist_corr(ray).item() < 0.93
    with pytest.raises(ValueError, match="19683"):
        latent_sample_dist_corr(ray[:100])


def test_average_ranks_match_scipy_with_ties():
    gen = torch.Generator().manual_seed(7)
    for x in (torch.randint(0, 5, (4000,), generator=gen).double(), torch.randn(999)):
        assert np.allclose(average_ranks(x).numpy(), stats.rankdata(x.numpy()))


def test_compute_eval_metrics_with_and_without_latent_points():
    ops, v = ternary_ops(), valuations()
    gen = torch.Generator().manual_seed(3)
    r_B = (9 - v).float() * 0.25 + torch.rand(N_OPS, generator=gen) * 0.05
    z_B = torch.randn(N_OPS, 16, generator=gen)
    plain = compute_eval_metrics(ops, v, ops, r_B, r_B)
    assert tuple(plain) == EVAL_KEYS
    m = compute_eval_metrics(ops, v, ops, r_B, r_B, z_B)
    assert tuple(m) == EVAL_KEYS + LATENT_EVAL_KEYS
    assert all(m[k] == plain[k] for k in EVAL_KEYS)
    rows = latent_sample()
    dcl = m["eval/dist_corr_latent"]
    assert dcl == pytest.approx(_scipy_dist_corr(z_B[rows], v[rows]), abs=1e-9)
    assert m["eval/Q_latent"] == pytest.approx(dcl + 1.5 * abs(m["eval/hierarchy_B"]))


def _batch(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    idx = torch.randperm(N_OPS, generator=torch.Generator().manual_seed(seed))[:n]
    return ternary_ops()[idx], valuations()[idx]


def _latent_term(lc: LossComputer, z: torch.Tensor, x: torch.Tensor, v: torch.Tensor):
    r = torch.full((x.shape[0],), 1.0)
    out = {"mu_B": torch.zeros_like(z), "logvar_B": torch.zeros_like(z), "radius_B": r, "z_B": z}
    return lc.branch_B(out, x, v, None, 10, False)[-1]  # the latent term is B's last


def test_latent_term_is_zero_when_distances_rank_with_dv():
    lc = LossComputer(LossConfig(latent={"weight": 1.0, "margin": 0.02, "pairs": 1024}), "cpu")
    x, v = _batch(256, 0)
    line = torch.zeros(256, 4)
    line[:, 0] = 0.05 * v.float()  # |z_i - z_j| = 0.05 |dv|: every larger |dv| is >= 0.05 apart
    assert _latent_term(lc, line, x, v).item() == 0.0
    flipped = line.clone()
    flipped[:, 0] = 0.05 * (v % 2).float()  # far apart at odd |dv|, together at even
    assert _latent_term(lc, flipped, x, v).item() > 0.0


def test_latent_term_off_finite_and_trains_the_metric():
    x, v = _batch(512, 1)
    off = LossComputer(LossConfig(), "cpu")  # weight 0 by default: no context, a zero term
    assert "latent_sign" not in off.batch_contexts(x[None], v[None])
    assert _latent_term(off, torch.randn(512, 8), x, v).item() == 0.0
    lc = LossComputer(LossConfig(latent={"weight": 1.0}), "cpu")
    one = _latent_term(lc, torch.randn(1, 8), x[:1], v[:1])
    assert torch.isfinite(one) and one.item() == 0.0  # a single sample has no pairs
    gen = torch.Generator().manual_seed(5)
    z = torch.nn.Parameter(torch.randn(512, 8, generator=gen) * 0.3)
    z.data[:2] = 0.0  # a zero distance: the gradient must stay finite
    before = dist_corr_latent(z.detach(), v).item()
    opt = torch.optim.Adam([z], lr=0.01)
    for _ in range(150):
        opt.zero_grad()
        perm = torch.randperm(512, generator=gen)
        term = _latent_term(lc, z[perm], x[perm], v[perm])
        term.backward()
        assert torch.isfinite(z.grad).all()
        opt.step()
    after = dist_corr_latent(z.detach(), v).item()
    assert abs(before) < 0.1 and after > 0.7


@pytest.fixture(scope="module")
def latent_run(tmp_path_factory):
    """Two epochs of the smoke config with the latent term on, serial and threaded branches."""

    class Keep:
        def __init__(self):
            self.epochs = {}

        def __getattr__(self, name):
            return lambda *a, **k: None

        def on_epoch_end(self, epoch, metrics):
            self.epochs[epoch] = metrics

    out = {}
    for threads in (1, 2):
        cfg = load_config(
            REPO / "configs/smoke.yaml",
            {
                "train.device": "cpu",
                "train.epochs": 2,
                "train.threads": threads,
                "loss.latent.weight": 0.5,
                "loss.geodesic.weight": 0.0,
            },
        )
        work = tmp_path_factory.mktemp(f"latent{threads}")
        keep = Keep()
        result = Trainer(cfg, work, keep, echo=False).fit()
        assert result.status == "FINISHED"
        out[threads] = (keep.epochs, torch.load(work / "checkpoints/last.pt", weights_only=True))
    return out


def test_a_short_run_logs_the_latent_keys_and_term(latent_run):
    epochs, _ = latent_run[1]
    assert sorted(epochs) == [1, 2] and "latent" in TERMS
    for m in epochs.values():
        for key in (*LATENT_EVAL_KEYS, "train/loss_latent"):
            assert np.isfinite(m[key]), key
        assert m["train/loss_latent"] > 0.0 and m["state/geodesic_active"] == 0.0
        expect = m["eval/dist_corr_latent"] + 1.5 * abs(m["eval/hierarchy_B"])
        assert m["eval/Q_latent"] == pytest.approx(expect)


def test_the_latent_term_trains_alike_on_one_thread_and_two(latent_run):
    (e1, c1), (e2, c2) = latent_run[1], latent_run[2]
    assert c1["model"].keys() == c2["model"].keys()
    assert all(torch.equal(c1["model"][k], c2["model"][k]) for k in c1["model"])
    assert e1[2]["eval/dist_corr_latent"] == e2[2]["eval/dist_corr_latent"]


def test_the_tier_report_shows_the_latent_values_beside_the_tier():
    epochs = range(1, 21)
    hist = pd.DataFrame(
        {
            "train/loss": np.linspace(1.0, 0.1, 20),
            "eval/coverage": np.linspace(0.5, 1.0, 20),
            "eval/hierarchy_B": np.full(20, -0.832),
            "eval/Q": np.linspace(2.0, 2.16, 20),
            "eval/dist_corr_latent": np.linspace(0.7, 0.9, 20),
            "eval/Q_latent": np.linspace(1.95, 2.15, 20),
        },
        index=pd.Index(epochs, name="epoch"),
    )
    report = analyze(hist)
    assert report.tier.reported == {"dist_corr_latent": 0.9, "quality_latent": 2.15}
    assert report.tier.to_dict()["reported"]["quality_latent"] == 2.15
    assert "quality_latent 2.1500" in report.summary()
    no_latent = analyze(hist.drop(columns=list(LATENT_EVAL_KEYS)))
    assert no_latent.tier.reported == {} and no_latent.tier.name == report.tier.name


def test_registry_takes_the_latent_values_at_the_model_step():
    from types import SimpleNamespace

    from mlflow_plugins.registry import LATENT_VALUE_KEYS, logged_values

    run = SimpleNamespace(data=SimpleNamespace(tags={"model.step": "2"}))
    client = SimpleNamespace(get_run=lambda run_id: run)
    cols = ("coverage", "hierarchy_B", "Q", "richness", "dist_corr_latent", "Q_latent")
    hist = pd.DataFrame(
        {f"eval/{k}": [0.1 * i + j for j in range(3)] for i, k in enumerate(cols)},
        index=[1, 2, 3],
    )
    values = logged_values(client, "run", hist)
    assert LATENT_VALUE_KEYS == ("dist_corr_latent", "Q_latent")
    assert values["dist_corr_latent"] == pytest.approx(1.4) and values["Q"] == pytest.approx(1.2)
    older = logged_values(client, "run", hist.drop(columns=["eval/dist_corr_latent"]))
    assert "dist_corr_latent" not in older and older["Q_latent"] == pytest.approx(1.5)
