"""CUDA checks (run by benchmarks/gpu_check.sh): AMP paths, fp32 geometry, device metrics."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from scipy import stats

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

REPO = Path(__file__).resolve().parents[1]


def test_geometry_fp32_and_finite_under_autocast():
    from tvae.geometry import dist, dist0

    x = torch.nn.functional.normalize(torch.randn(64, 16, device="cuda"), dim=-1) * 0.999
    for dtype in (torch.bfloat16, torch.float16):
        with torch.autocast("cuda", dtype=dtype):
            h = torch.nn.Linear(16, 16, device="cuda")(x)  # autocast output in low precision
            assert h.dtype == dtype
            r, d = dist0(x.to(dtype)), dist(x, x.flip(0))
        assert r.dtype == torch.float32 and torch.isfinite(r).all() and torch.isfinite(d).all()


def test_spearman_on_cuda_matches_scipy():
    from tvae.metrics import spearman
    from tvae.ops import valuations

    v = valuations()
    r = -v.float() + torch.rand(v.numel()) * 3
    got = spearman(v.cuda(), r.cuda())
    assert got.device.type == "cuda"
    assert got.item() == pytest.approx(stats.spearmanr(v.numpy(), r.numpy())[0], abs=1e-6)


@pytest.mark.parametrize("amp", ["auto", "fp16"])
def test_smoke_training_on_cuda(tmp_path, amp):
    from tvae.callbacks import TrainLogger
    from tvae.config import load_config
    from tvae.train import Trainer

    seen: list[dict] = []
    info: dict = {}

    class Rec(TrainLogger):
        def on_train_start(self, i):
            info.update(i)

        def on_epoch_end(self, epoch, metrics):
            seen.append(metrics)

    cfg = load_config(REPO / "configs/smoke.yaml", {"train.device": "cuda", "train.amp": amp})
    result = Trainer(cfg, tmp_path, Rec(), echo=False).fit()
    assert result.status == "FINISHED", result.reason
    expected = "fp16" if amp == "fp16" else ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
    assert info["amp"] == expected and info["cuda"] == torch.version.cuda
    assert all(0.0 < m["perf/gpu_mem_peak_frac"] < 0.95 for m in seen)
    assert seen[-1]["eval/hierarchy_B"] < -0.3  # learns even in 4 epochs
