"""Training throughput of the TernaryVAE trainer, all loss terms on, vs a textbook loop.

Both loops train the same model with the same loss terms in this process:
  textbook  the loop from the PyTorch tutorials, made fair: per batch, index the in-memory data,
            model(x), the loss, zero_grad(set_to_none=True), backward, clip_grad_norm_,
            stock AdamW.step(); no per-step `.item()`. It runs at every setting it could pick
            (1 and 2 intra-op threads, AdamW fused and foreach) and is judged at its fastest.
  trainer   tvae.train.Trainer.train_epoch: data gathered once per epoch, the two branches
            with their own fused AdamW, branch B on a worker thread with train.threads: 2
            (the shipped setting), one host sync per epoch; with train.threads: 1 for reference.
Homeostasis is disabled and the geodesic term is on, so nothing is frozen and every term is
computed. Every setting runs one epoch per round, round after round, so a neighbour's load falls
on all of them alike; the box's load average is printed beside the figures, which are only
comparable within one run on a shared machine. Samples per CPU-second (all threads of this
process) is the work each loop does per sample, which other processes' load moves far less:
two free cores can give the trainer at most twice its own figure.

On CUDA (`--device cuda --amp auto`) both loops keep the data on the GPU and use the same AMP
mode (with a GradScaler for fp16); the textbook loop runs its forward and loss under autocast, as
PyTorch's AMP recipe does. The trainer runs its branches one after the other there, and each
timed epoch ends with a device synchronisation.

    python benchmarks/throughput.py [--rounds 7] [--batch-size 512] [--device cpu|cuda]
        [--amp auto|bf16|fp16|off] [--skip-baseline]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as tvae does; must precede torch

import torch  # noqa: E402

from tvae.config import TVAEConfig, load_config  # noqa: E402
from tvae.device import AMP_DTYPES, resolve_amp, resolve_device  # noqa: E402
from tvae.losses import LossComputer  # noqa: E402
from tvae.model import TernaryVAE  # noqa: E402
from tvae.ops import N_OPS, ternary_ops, valuations  # noqa: E402
from tvae.train import Trainer  # noqa: E402

EPOCH = 10  # past the KL warm-up; the geodesic term is forced on


def textbook_epoch(cfg: TVAEConfig, optimizer: str) -> Callable[[], None]:
    """One epoch of the textbook loop, with its own model and AdamW (`fused` or `foreach`), on
    the config's device and under its autocast."""
    torch.manual_seed(0)
    device = resolve_device(cfg.train.device)
    amp = resolve_amp(cfg.train.amp, device)
    model = TernaryVAE.from_config(cfg.model).to(device)
    tc = cfg.train
    opt = torch.optim.AdamW(
        model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay, **{optimizer: True}
    )
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    losses = LossComputer(cfg.loss, device)
    ops, vals, bs = ternary_ops().to(device), valuations().to(device), cfg.train.batch_size

    def epoch() -> None:
        perm = torch.randperm(N_OPS, device=device)
        for start in range(0, N_OPS, bs):
            idx = perm[start : start + bs]
            x, v = ops[idx], vals[idx]
            with torch.autocast(device.type, AMP_DTYPES.get(amp), enabled=amp != "off"):
                total, _ = losses(model(x), x, (x + 1).long(), v, EPOCH, True)
            opt.zero_grad(set_to_none=True)
            scaler.scale(total).backward()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
            scaler.step(opt)
            scaler.update()

    return epoch


def trainer_epoch(cfg: TVAEConfig, keep: list[Trainer]) -> Callable[[], None]:
    """One epoch of Trainer.train_epoch (its setup() picks the runner from train.threads)."""
    trainer = Trainer(cfg, Path("/tmp/tvae-throughput"), echo=False)
    trainer.setup()
    keep.append(trainer)

    def epoch() -> None:
        terms, _ = trainer.train_epoch(EPOCH, True)
        terms.tolist()  # the trainer's one sync per epoch

    return epoch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7, help="timed epochs per setting")
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    ap.add_argument("--amp", default="off", choices=["auto", "bf16", "fp16", "off"])
    ap.add_argument("--skip-baseline", action="store_true", help="time the trainer only")
    args = ap.parse_args()
    device = resolve_device(args.device)
    cuda = device.type == "cuda"

    def config(threads: int) -> TVAEConfig:
        overrides = {
            "train.device": str(device),
            "train.amp": args.amp,
            "train.threads": threads,
            "train.batch_size": args.batch_size,
            "loss.geodesic.start_epoch": 0,
            "homeostasis.enabled": False,
        }
        return load_config(REPO / "configs/v5_12_4_extended_grokking.yaml", overrides)

    cfg, trainers = config(1), []
    # (label, intra-op threads of the calling thread, one epoch)
    if cuda:  # one stream: the branches run one after the other whatever train.threads says
        settings = [("trainer", 1, trainer_epoch(cfg, trainers))]
    else:
        settings = [
            ("trainer, threads 2 (branch B on a thread)", 1, trainer_epoch(config(2), trainers)),
            ("trainer, threads 1", 1, trainer_epoch(cfg, trainers)),
        ]
    for threads in () if args.skip_baseline else (1,) if cuda else (1, 2):
        for opt in ("fused", "foreach"):
            label = f"textbook, {threads} thread{'s' * (threads > 1)}, AdamW {opt}"
            settings.append((label, threads, textbook_epoch(cfg, opt)))
    if cuda:
        amp = resolve_amp(args.amp, device)
        print(f"{torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda}, amp {amp}")
    print(
        f"torch {torch.__version__}, {os.cpu_count()} CPUs, batch {args.batch_size},"
        f" OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, {args.rounds} rounds"
    )
    load_before = os.getloadavg()[0]
    rates: dict[str, list[float]] = {label: [] for label, _, _ in settings}
    work: dict[str, list[float]] = {label: [] for label, _, _ in settings}
    for round_ in range(args.rounds + 1):  # round 0 warms up and is not counted
        for label, threads, epoch in settings:
            torch.set_num_threads(threads)  # per calling thread; the trainer's worker has its own
            t0, cpu0 = time.perf_counter(), time.process_time()
            epoch()
            if cuda:
                torch.cuda.synchronize(device)
            if round_:
                rates[label].append(N_OPS / (time.perf_counter() - t0))
                work[label].append(N_OPS / (time.process_time() - cpu0))
    for trainer in trainers:
        trainer.close()
    print(f"load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after")
    for label, _, _ in settings:
        r = rates[label]
        print(
            f"  {label:<44} median {statistics.median(r):>7,.0f} samples/s"
            f" (min {min(r):>7,.0f}, max {max(r):>7,.0f});"
            f" {statistics.median(work[label]):>7,.0f} samples per CPU-second"
        )
    ours = statistics.median(rates[settings[0][0]])
    if args.skip_baseline:
        print(f"throughput: {ours:,.0f} samples/s")
        return
    textbook = [label for label in rates if label.startswith("textbook")]
    best = max(textbook, key=lambda label: statistics.median(rates[label]))
    base = statistics.median(rates[best])
    paired = sorted(a / b for a, b in zip(rates[settings[0][0]], rates[best], strict=True))
    print(f"textbook at its fastest: {best}")
    print(
        f"speed-up: {ours / base:.2f}x (median over median); per round"
        f" {statistics.median(paired):.2f}x (min {paired[0]:.2f}x, max {paired[-1]:.2f}x)"
    )
    print(f"throughput: {ours:,.0f} samples/s")


if __name__ == "__main__":
    main()
