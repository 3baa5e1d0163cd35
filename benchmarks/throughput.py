"""Training throughput of the TernaryVAE trainer, all loss terms on, vs a conventional loop.

Both loops train the same model with the same losses on the same device in this process:
  baseline  the textbook loop: DataLoader-style CPU index batches moved per step, per-tensor
            AdamW, torch clip_grad_norm_, and a `.item()` sync per step for logging
  trainer   tvae.train.Trainer's epoch (data on device, flat params, fused AdamW, no sync;
            with 2+ threads on CPU the two branch loops run at once, tvae.branches: branch B
            in a forked worker process, the default, and for comparison on a thread)
Homeostasis is disabled and the geodesic term is on from epoch 1, so nothing is frozen and
every term is computed. On CPU it tries 1 thread and all cores (the baseline uses them as
intra-op threads). Prints samples/s for both loops and their ratio per thread count, the machine
load (figures on a shared machine are only comparable within one run), and the trainer's best
figure on the last line.

    python benchmarks/throughput.py [--device cpu|cuda] [--amp auto|bf16|fp16|off]
                                    [--threads N] [--epochs 3] [--batch-size 512]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as tvae does; must precede torch

import torch  # noqa: E402

from tvae.config import load_config  # noqa: E402
from tvae.losses import LossComputer  # noqa: E402
from tvae.model import TernaryVAE  # noqa: E402
from tvae.ops import N_OPS, ternary_ops, valuations  # noqa: E402
from tvae.train import Trainer  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def baseline_epoch(model, opt, losses, device, batch_size, amp_dtype) -> float:
    """One conventional epoch; returns samples/s."""
    ops, vals = ternary_ops(), valuations()
    _sync(device)
    t0 = time.perf_counter()
    perm = torch.randperm(N_OPS)
    for start in range(0, N_OPS, batch_size):
        idx = perm[start : start + batch_size]
        x = ops[idx].to(device)
        v = vals[idx].to(device)
        tgt = (x + 1).long()
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            out = model(x)
        total, _ = losses(out, x, tgt, v, 10, True)
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        total.item()  # per-step logging sync
    _sync(device)
    return N_OPS / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--amp", default="auto")
    ap.add_argument(
        "--threads", type=int, default=0, help="CPU threads; 0 = try 1 and torch's default"
    )
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--skip-baseline", action="store_true")
    args = ap.parse_args()
    overrides = {
        "train.device": args.device,
        "train.amp": args.amp,
        "train.batch_size": args.batch_size,
        "loss.geodesic.start_epoch": 0,
        "homeostasis.enabled": False,
    }
    cfg = load_config(REPO / "configs/v5_12_4_extended_grokking.yaml", overrides)
    trainer = Trainer(cfg, Path("/tmp/tvae_throughput"), echo=False)
    trainer._setup()
    device, amp = trainer.device, trainer.amp
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    if device.type != "cpu":
        thread_counts = [torch.get_num_threads()]
    elif args.threads:
        thread_counts = [args.threads]
    else:
        thread_counts = sorted({1, os.cpu_count() or 1})
    print(
        f"device {device} ({_name(device)}) amp {amp} torch {torch.__version__}"
        f" OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')} batch {args.batch_size}"
    )
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")

    def run_trainer() -> float:
        _sync(device)
        t0 = time.perf_counter()
        terms, _ = trainer._train_epoch(10, True)
        terms.cpu()
        _sync(device)
        return N_OPS / (time.perf_counter() - t0)

    best = 0.0
    runs = [(n, "process") for n in thread_counts]
    if device.type == "cpu" and max(thread_counts) >= 2:  # the thread runner, for comparison
        runs.insert(-1, (max(thread_counts), "thread"))
    for threads, workers in runs:
        torch.set_num_threads(threads)
        trainer.config.train.branch_workers = workers
        trainer.start_runner(threads)
        ours = [run_trainer() for _ in range(args.epochs + 1)][1:]
        trainer.close_runner()
        fast = statistics.median(ours)
        if workers == "process":  # what the trainer picks by default
            best = max(best, fast)
        kind = {"ForkedBranchRunner": "process", "ThreadBranchRunner": "thread"}
        where = kind.get(type(trainer.runner).__name__)
        label = f"{threads}" + (f", branch B in a {where}" if where else "")
        line = f"threads {label}: trainer {fast:,.0f} samples/s (epochs: "
        line += ", ".join(f"{x:,.0f}" for x in ours) + ")"
        if not args.skip_baseline and amp != "fp16":
            torch.set_num_threads(threads)  # the textbook loop uses them as intra-op threads
            torch.manual_seed(0)
            model = TernaryVAE.from_config(cfg.model).to(device)
            opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, foreach=False)
            losses = LossComputer(cfg.loss, device)
            base = [
                baseline_epoch(model, opt, losses, device, cfg.train.batch_size, amp_dtype)
                for _ in range(args.epochs + 1)
            ][1:]
            slow = statistics.median(base)
            line += f"; baseline loop {slow:,.0f} samples/s; speedup {fast / slow:.2f}x"
        print(line, flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    print(f"throughput: {best:,.0f} samples/s")


def _name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


if __name__ == "__main__":
    main()
