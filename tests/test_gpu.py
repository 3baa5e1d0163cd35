"""CUDA checks (run by benchmarks/gpu_check.sh): AMP paths, fp32 geometry, device metrics."""

from __future__ import annotations

import warnings
from collections.abc import Callable
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
    native_bf16 = torch.cuda.get_device_capability()[0] >= 8
    expected = "fp16" if amp == "fp16" else ("bf16" if native_bf16 else "fp16")
    assert info["amp"] == expected and info["cuda"] == torch.version.cuda
    assert all(0.0 < m["perf/gpu_mem_peak_frac"] < 0.95 for m in seen)
    assert seen[-1]["eval/hierarchy_B"] < -0.3  # learns even in 4 epochs


def host_syncs(work: Callable[[], object]) -> list[str]:
    """What `work` did that made the host wait for the GPU (torch's sync debug mode warns on
    each synchronising call)."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            work()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return [str(w.message) for w in caught if "synchroniz" in str(w.message)]


def test_evaluation_waits_for_the_gpu_once():
    from tvae.config import load_config
    from tvae.metrics import evaluate_model
    from tvae.model import TernaryVAE
    from tvae.ops import ternary_ops, valuations

    model = TernaryVAE.from_config(load_config(REPO / "configs/smoke.yaml").model).cuda()
    ops, vals = ternary_ops().cuda(), valuations().cuda()
    evaluate_model(model, ops, vals)  # the fixed pair samples go to the GPU once
    syncs = host_syncs(lambda: evaluate_model(model, ops, vals))
    assert len(syncs) == 1, syncs  # the metrics' one copy to the host


def test_a_training_epoch_has_no_host_sync_per_step(tmp_path):
    from tvae.config import load_config
    from tvae.train import Trainer

    counts = {}
    for batch in (512, 4096):  # 39 steps, then 5
        overrides = {"train.device": "cuda", "train.amp": "auto", "train.batch_size": batch}
        trainer = Trainer(load_config(REPO / "configs/smoke.yaml", overrides), tmp_path, echo=False)
        trainer.setup()
        try:
            trainer.train_epoch(5, True)  # warm-up: kernels, allocator, cached samples
            counts[batch] = host_syncs(lambda t=trainer: t.train_epoch(5, True))
        finally:
            trainer.close()
    assert len(counts[512]) == len(counts[4096]), counts  # the same with 39 steps as with 5
