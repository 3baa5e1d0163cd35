"""The TernaryVAE trainer: whole data set on the device, index-slice batches, one sync per epoch.

Per epoch: set the scheduled LR, apply the homeostasis freeze state, train over a shuffled pass
of the 19,683 operations (loss terms and gradient norms accumulate on the device; no host sync
inside the batch loop), evaluate all operations, report every contract metric, checkpoint.

With train.eval_every > 1, epochs without an eval carry the most recent eval values forward
(every contract key is reported every epoch); best.pt and homeostasis only react to real evals.
perf/samples_per_sec counts the training pass only; perf/epoch_seconds is the whole epoch.
state/frozen_encoder_* report the freeze state the epoch trained with (homeostasis decides
after the epoch's eval; the change shows from the next epoch on).

Events (logger.on_event): "lr_phase" {epoch, phase, name, lr}, "geodesic_on" {epoch},
"homeostasis_freeze" / "homeostasis_unfreeze" {epoch, encoder, coverage|hierarchy_B},
"divergence" {epoch, reason}.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import platform
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from tvae import contract as C
from tvae.analysis.tiers import TIER_ORDER, judge_tier
from tvae.branches import (
    Branch,
    ForkedBranchRunner,
    ThreadBranchRunner,
    share_branch_state,
    train_branch_epoch,
)
from tvae.callbacks import TrainLogger
from tvae.checkpoint import check_resumable, read_checkpoint, save_checkpoint
from tvae.config import TVAEConfig
from tvae.contract import EVAL_KEYS
from tvae.flatparams import FlatParams
from tvae.homeostasis import Homeostasis
from tvae.losses import TERMS, LossComputer
from tvae.metrics import evaluate_model
from tvae.model import TernaryVAE
from tvae.ops import N_OPS, ternary_ops, valuations
from tvae.progress import format_epoch_line
from tvae.schedule import PHASE_NAMES, lr_scale, phase_index


@dataclass
class TrainResult:
    status: str  # FINISHED | KILLED | FAILED
    reason: str | None
    last_epoch: int
    best_epoch: int
    best_metrics: dict[str, float] = field(default_factory=dict)
    final_metrics: dict[str, float] = field(default_factory=dict)
    wall_seconds: float = 0.0
    samples_per_sec: float = 0.0
    last_checkpoint: Path | None = None
    best_checkpoint: Path | None = None

    def summary(self) -> dict[str, Any]:
        """JSON-able view (paths as strings)."""
        out = asdict(self)
        for key in ("last_checkpoint", "best_checkpoint"):
            out[key] = str(out[key]) if out[key] is not None else None
        return out


def tier_rank(metrics: dict[str, float]) -> int:
    """Index in TIER_ORDER of the tier an epoch's eval metrics reach (DESIGN.md thresholds).

    best.pt is the epoch with the highest tier, then the highest Q: Q alone ignores coverage,
    and an early high-Q epoch that cannot yet reconstruct would be a model nobody can promote.
    """
    tier = judge_tier(metrics[C.COVERAGE], metrics[C.HIERARCHY_B], metrics[C.QUALITY])
    return TIER_ORDER.index(tier.name)


@contextlib.contextmanager
def deferred_interrupt() -> Iterator[None]:
    """Hold a SIGINT (Ctrl-C) that arrives inside the block and deliver it after the block.

    Only the main thread receives signals; elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if held:
        if callable(previous):
            previous(signal.SIGINT, None)
        elif previous != signal.SIG_IGN:
            raise KeyboardInterrupt


class Diverged(RuntimeError):
    """A loss or metric became NaN/Inf."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"train.device={name} but CUDA is not available")
    return device


def resolve_amp(amp: str, device: torch.device) -> str:
    """auto: bf16 on GPUs that support it, fp16 (with GradScaler) on older GPUs, off on CPU."""
    if amp == "auto":
        if device.type != "cuda":
            return "off"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if amp == "fp16" and device.type != "cuda":
        raise ValueError("train.amp=fp16 needs a CUDA device (use bf16 or off on CPU)")
    return amp


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine() or "cpu"


def _make_optimizer(params: list[torch.nn.Parameter], cfg: TVAEConfig, device: torch.device):
    kwargs: dict[str, Any] = {"lr": cfg.train.lr, "weight_decay": cfg.train.weight_decay}
    if device.type in ("cuda", "cpu"):
        kwargs["fused"] = True
    else:
        kwargs["foreach"] = True
    return torch.optim.AdamW(params, **kwargs)


class Trainer:
    """Train TernaryVAE from a validated config into `workdir` (checkpoints under checkpoints/)."""

    def __init__(
        self,
        config: TVAEConfig,
        workdir: Path,
        logger: TrainLogger | None = None,
        echo: bool = True,
    ) -> None:
        self.config = config
        self.workdir = Path(workdir)
        self.logger = logger or TrainLogger()
        self.echo = echo
        self._stop = threading.Event()
        self.device = resolve_device(config.train.device)
        self.amp = resolve_amp(config.train.amp, self.device)
        self.checkpoint_dir = self.workdir / "checkpoints"

    def request_stop(self) -> None:
        """Ask fit() to stop after the current epoch (safe from threads and signal handlers)."""
        self._stop.set()

    # -- state -----------------------------------------------------------------------------
    def _setup(self) -> None:
        cfg = self.config
        self.threads = cfg.train.threads or torch.get_num_threads()
        if self.device.type == "cpu":
            torch.set_num_threads(self.threads)
        torch.manual_seed(cfg.train.seed)
        self.model = TernaryVAE.from_config(cfg.model).to(self.device)
        m = self.model
        # segments: 0 encoder A trunk, 1 rest of branch A, 2 encoder B trunk, 3 rest of branch B;
        # the trunks are what homeostasis freezes; each branch has its own optimizer
        self.flat = FlatParams(
            [[m.encoder_A], [m.projection_A, m.decoder], [m.encoder_B], [m.projection_B]],
            transposed=[m.encoder_A.net[0].weight, m.encoder_B.net[0].weight],
        )
        self.losses = LossComputer(cfg.loss, self.device)

        def branch(name: str, forward, loss, first: int) -> Branch:  # segments first, first+1
            return Branch(
                name,
                forward,
                loss,
                self.flat.grad_span(first, first + 1),
                _make_optimizer(self.flat.segments[first : first + 2], cfg, self.device),
                torch.amp.GradScaler(self.device.type, enabled=self.amp == "fp16"),
            )

        self.branch_params = (
            branch("A", functools.partial(m.forward_A, point=False), self.losses.branch_A, 0),
            branch("B", m.forward_B, self.losses.branch_B, 2),
        )
        self.runner: ForkedBranchRunner | ThreadBranchRunner | None = None
        self.homeostasis = Homeostasis(cfg.homeostasis)
        self.ops = ternary_ops().to(self.device)
        self.vals = valuations().to(self.device)
        self.target_cls = (self.ops + 1).long()
        high = (self.vals >= cfg.data.stratified_min_valuation).nonzero().squeeze(1)
        self.high_idx = high
        self.best_q = -math.inf
        self.best_rank = -1  # best = highest tier reached, then highest eval/Q
        self.best_epoch = 0
        self.best_metrics: dict[str, float] = {}
        self.last_eval: dict[str, float] = {}
        self.resumed_metrics: dict[str, float] = {}

    def _rng_state(self) -> dict[str, Any]:
        rng: dict[str, Any] = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return rng

    def _state(self, epoch: int, metrics: dict[str, float]) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": {b.name: b.optimizer.state_dict() for b in self.branch_params},
            "scaler": {b.name: b.scaler.state_dict() for b in self.branch_params},
            "homeostasis": self.homeostasis.state_dict(),
            "rng": self._rng_state(),
            "epoch": epoch,
            "best_q": self.best_q,
            "best_epoch": self.best_epoch,
            "best_metrics": dict(self.best_metrics),
            "last_eval": dict(self.last_eval),
            "config": self.config.model_dump(mode="json"),
            "metrics": dict(metrics),
        }

    def _restore(self, path: Path) -> int:
        state = read_checkpoint(path, map_location=self.device)
        check_resumable(state, str(path))
        self.model.load_state_dict(state["model"])
        for b in self.branch_params:
            b.optimizer.load_state_dict(state["optimizer"][b.name])
            b.scaler.load_state_dict(state["scaler"][b.name])
        self.homeostasis.load_state_dict(state["homeostasis"])
        torch.set_rng_state(state["rng"]["cpu"].cpu())
        if self.device.type == "cuda" and "cuda" in state["rng"]:
            torch.cuda.set_rng_state(state["rng"]["cuda"].cpu(), self.device)
        self.best_q = float(state["best_q"])
        self.best_epoch = int(state.get("best_epoch", 0))
        self.best_metrics = dict(state.get("best_metrics", {}))
        best = self.best_metrics
        self.best_rank = tier_rank(best) if C.COVERAGE in best else -1
        self.last_eval = dict(state.get("last_eval", {}))
        self.resumed_metrics = dict(state.get("metrics", {}))
        return int(state["epoch"])

    # -- one epoch -------------------------------------------------------------------------
    def _epoch_indices(self) -> torch.Tensor:
        """One epoch of N_OPS sample indices; with data.stratified, every batch ends with a
        data.stratified_share slice drawn (with replacement) from levels v >= min_valuation."""
        data = self.config.data
        perm = torch.randperm(N_OPS, device=self.device)
        if not data.stratified or data.stratified_share <= 0:
            return perm
        bs = self.config.train.batch_size
        n_high = min(bs, round(bs * data.stratified_share))
        steps = math.ceil(N_OPS / bs)
        picks = torch.randint(0, self.high_idx.numel(), (steps, n_high), device=self.device)
        high = self.high_idx[picks]
        n_base = steps * (bs - n_high)
        base = perm.repeat(math.ceil(n_base / N_OPS))[:n_base].view(steps, bs - n_high)
        return torch.cat([base, high], dim=1).reshape(-1)[:N_OPS]

    def start_runner(self, threads: int) -> None:
        """Pick how the two branch loops run: at once on CPU with 2+ threads (a forked worker
        process, or a thread with train.branch_workers=thread), else one after the other."""
        self.close_runner()
        self.runner = None
        if self.device.type != "cpu" or threads < 2:
            return
        # fork without exec is only dependable on Linux (macOS frameworks are not fork-safe),
        # and only with one intra-op thread per side (tvae.branches.ForkedBranchRunner)
        forked = self.config.train.branch_workers == "process" and threads // 2 == 1
        if forked and sys.platform == "linux":
            try:
                share_branch_state(self.flat.data, self.branch_params[1].optimizer)
                self.runner = ForkedBranchRunner(self._train_B)
                return
            except (OSError, RuntimeError):  # no shared memory or no fork here: use a thread
                pass
        self.runner = ThreadBranchRunner(self._train_B, threads // 2)

    def close_runner(self) -> None:
        if self.runner is not None:
            self.runner.close()

    def _batches(self, idx_all: torch.Tensor, targets: bool = True) -> list[tuple[Any, ...]]:
        """The epoch's (x, v, target classes) batches: gathered once, then each batch is a
        contiguous slice. targets=False leaves None for the classes (only branch A reads them)."""
        ops_e, vals_e = self.ops[idx_all], self.vals[idx_all]
        tgt_e = self.target_cls[idx_all] if targets else None
        bs = self.config.train.batch_size
        return [
            (ops_e[i : i + bs], vals_e[i : i + bs], None if tgt_e is None else tgt_e[i : i + bs])
            for i in range(0, idx_all.numel(), bs)
        ]

    def _train_B(
        self, epoch: int, geodesic_active: bool, lr: float, frozen: bool, idx_all: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Branch B's epoch. Takes everything it needs as arguments: in a forked worker the
        parent's per-epoch LR and freeze state are not otherwise seen."""
        branch = self.branch_params[1]
        for group in branch.optimizer.param_groups:
            group["lr"] = lr
        # z_B feeds only the geodesic term: without it, B's forward skips the direction net
        forward = functools.partial(self.model.forward_B, point=geodesic_active)
        branch = replace(branch, forward=forward)
        self.flat.set_frozen(2, frozen)
        self.model.train()
        cfg = self.config.train
        batches = self._batches(idx_all, targets=False)
        contexts = self.losses.epoch_contexts(batches)  # B's model-free inputs, once per epoch
        batches = [(*b, c) for b, c in zip(batches, contexts, strict=True)]
        return train_branch_epoch(
            branch, batches, epoch, geodesic_active, cfg.grad_clip, self._amp_dtype
        )

    @property
    def _amp_dtype(self) -> torch.dtype | None:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.amp)

    def _train_epoch(self, epoch: int, geodesic_active: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Train both branches one epoch; returns (mean weighted terms, mean pre-clip norm)."""
        cfg = self.config.train
        idx_all = self._epoch_indices()
        self.model.train()
        branch_A = self.branch_params[0]

        def job_A() -> tuple[torch.Tensor, torch.Tensor]:
            # A gathers its own batches, so a worker starts on branch B's without waiting
            batches = self._batches(idx_all)
            return train_branch_epoch(
                branch_A, batches, epoch, geodesic_active, cfg.grad_clip, self._amp_dtype
            )

        lr = branch_A.optimizer.param_groups[0]["lr"]
        args_B = (epoch, geodesic_active, lr, self.homeostasis.frozen_B, idx_all)
        if self.runner is not None:  # CPU: the two branch loops at once
            (terms_A, sq_A), (terms_B, sq_B) = self.runner.run(job_A, args_B)
        else:
            (terms_A, sq_A), (terms_B, sq_B) = job_A(), self._train_B(*args_B)
        norms = (sq_A + sq_B).sqrt()  # the whole model's pre-clip gradient norm, per batch
        if self.amp == "fp16":  # inf/NaN grads are normal there, the scaler skips those steps
            ok = torch.isfinite(norms)
            mean_norm = torch.where(ok, norms, 0.0).sum() / ok.sum().clamp_min(1)
        else:
            mean_norm = norms.mean()
        n_batches = math.ceil(idx_all.numel() / cfg.batch_size)
        return self.losses.combine(terms_A, terms_B) / n_batches, mean_norm

    def _evaluate(self) -> dict[str, float]:
        """evaluate_model over all operations; on CPU with a branch worker, which is idle
        between epochs, its intra-op threads join in (the eval GEMMs have 19,683 rows)."""
        if self.runner is None:
            return evaluate_model(self.model, self.ops, self.vals)
        torch.set_num_threads(self.threads)
        try:
            return evaluate_model(self.model, self.ops, self.vals)
        finally:
            torch.set_num_threads(max(1, self.threads // 2))

    def _apply_freeze(self) -> None:
        self.flat.set_frozen(0, self.homeostasis.frozen_A)
        self.flat.set_frozen(2, self.homeostasis.frozen_B)

    # -- the loop --------------------------------------------------------------------------
    def fit(self, resume_checkpoint: Path | None = None) -> TrainResult:
        """Train to train.epochs (or until stopped/diverged); never raises for NaN or Ctrl-C."""
        t0 = time.perf_counter()
        self._setup()
        start_epoch = self._restore(Path(resume_checkpoint)) if resume_checkpoint else 0
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        # before on_train_start: a logger may start threads there, and the fork is cleanest
        # from a process whose other threads are idle
        self.start_runner(self.threads)
        try:
            return self._fit(start_epoch, t0)
        finally:
            self.close_runner()

    def _fit(self, start_epoch: int, t0: float) -> TrainResult:
        cfg = self.config
        total = cfg.train.epochs
        last_ckpt: Path | None = None
        best_ckpt = self.checkpoint_dir / "best.pt" if self.best_epoch else None
        self.logger.on_train_start(
            {
                "device": str(self.device),
                "device_name": _device_name(self.device),
                "torch": torch.__version__,
                "cuda": torch.version.cuda if self.device.type == "cuda" else None,
                "amp": self.amp,
                "start_epoch": start_epoch,
                "config": cfg,
            }
        )
        # the last state known to be finite (written on KILLED/FAILED)
        good = copy.deepcopy(self._state(start_epoch, self.resumed_metrics))
        last_written = -1
        status, reason, epoch_done = "FINISHED", None, start_epoch
        metrics: dict[str, float] = {}
        sps: list[float] = []
        try:
            for epoch in range(start_epoch + 1, total + 1):
                metrics = self._run_epoch(epoch, total)
                # an epoch is committed whole (state, checkpoints, metrics, log line) or not
                # at all: a Ctrl-C in between would leave a checkpoint ahead of the metrics
                with deferred_interrupt():
                    sps.append(metrics[C.SAMPLES_PER_SEC])
                    epoch_done = epoch
                    good = copy.deepcopy(self._state(epoch, metrics))
                    if self.best_epoch == epoch:
                        best_ckpt = save_checkpoint(good, self.checkpoint_dir / "best.pt")
                        self.logger.on_checkpoint(best_ckpt, epoch, "best")
                    if epoch % cfg.train.checkpoint_every == 0 or epoch == total:
                        last_ckpt = save_checkpoint(good, self.checkpoint_dir / "last.pt")
                        last_written = epoch
                        self.logger.on_checkpoint(last_ckpt, epoch, "last")
                    self.logger.on_epoch_end(epoch, metrics)
                    line = format_epoch_line(epoch, total, metrics)
                    if self.echo:
                        print(line, flush=True)
                    self.logger.on_log_line(line)
                if self._stop.is_set() and epoch < total:
                    status, reason = "KILLED", "stop requested"
                    break
        except KeyboardInterrupt:
            status, reason = "KILLED", "interrupted (KeyboardInterrupt)"
        except Diverged as err:
            status, reason = "FAILED", str(err)
            self.logger.on_event("divergence", {"epoch": epoch_done + 1, "reason": reason})
        finally:
            self.close_runner()  # the worker is done before the final checkpoint is written
        if status != "FINISHED" and last_written != good["epoch"]:
            last_ckpt = save_checkpoint(good, self.checkpoint_dir / "last.pt")
            self.logger.on_checkpoint(last_ckpt, good["epoch"], "last")
        result = TrainResult(
            status=status,
            reason=reason,
            last_epoch=epoch_done,
            best_epoch=self.best_epoch,
            best_metrics=dict(self.best_metrics),
            final_metrics=dict(good["metrics"]) if good["metrics"] else dict(metrics),
            wall_seconds=time.perf_counter() - t0,
            samples_per_sec=sum(sps) / len(sps) if sps else 0.0,
            last_checkpoint=last_ckpt,
            best_checkpoint=best_ckpt,
        )
        self.logger.on_train_end(status, result.summary())
        return result

    def _run_epoch(self, epoch: int, total: int) -> dict[str, float]:
        cfg = self.config
        t_epoch = time.perf_counter()
        scale = lr_scale(epoch, total, cfg.schedule)
        lr = cfg.train.lr * scale
        for b in self.branch_params:
            for group in b.optimizer.param_groups:
                group["lr"] = lr
        phase = phase_index(epoch, total, cfg.schedule)
        if epoch > 1 and phase != phase_index(epoch - 1, total, cfg.schedule):
            self.logger.on_event(
                "lr_phase", {"epoch": epoch, "phase": phase, "name": PHASE_NAMES[phase], "lr": lr}
            )
        geodesic_active = epoch >= cfg.loss.geodesic.start_epoch and cfg.loss.geodesic.weight > 0
        if geodesic_active and epoch == max(1, cfg.loss.geodesic.start_epoch):
            self.logger.on_event("geodesic_on", {"epoch": epoch})
        self._apply_freeze()
        frozen_A, frozen_B = self.homeostasis.frozen_A, self.homeostasis.frozen_B

        t_train = time.perf_counter()
        terms, gnorm = self._train_epoch(epoch, geodesic_active)
        values = torch.cat([terms.float(), gnorm.float().view(1)]).cpu().tolist()  # one sync
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        train_seconds = time.perf_counter() - t_train
        if not all(math.isfinite(x) for x in values):
            names = (*TERMS, "grad_norm")
            bad = [n for n, x in zip(names, values, strict=True) if not math.isfinite(x)]
            raise Diverged(f"non-finite training value at epoch {epoch}: {', '.join(bad)}")

        metrics: dict[str, float] = {C.TRAIN_LOSS: float(sum(values[: len(TERMS)]))}
        for name, val in zip(TERMS, values, strict=False):
            metrics[C.loss_term(name)] = float(val)
        evaluated = epoch % cfg.train.eval_every == 0 or epoch == total or not self.last_eval
        if evaluated:
            self.last_eval = self._evaluate()
            bad = [k for k in EVAL_KEYS if not math.isfinite(self.last_eval[k])]
            if bad:
                raise Diverged(f"non-finite eval metric at epoch {epoch}: {', '.join(bad)}")
        metrics.update(self.last_eval)
        metrics.update(
            {
                C.GRAD_NORM: float(values[-1]),
                C.LR: float(lr),
                C.FROZEN_A: float(frozen_A),
                C.FROZEN_B: float(frozen_B),
                C.LR_PHASE: float(phase),
                C.GEODESIC_ACTIVE: float(geodesic_active),
                C.SAMPLES_PER_SEC: N_OPS / train_seconds,
            }
        )
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device)
            total_mem = torch.cuda.get_device_properties(self.device).total_memory
            metrics[C.GPU_MEM_PEAK_FRAC] = peak / total_mem
            torch.cuda.reset_peak_memory_stats(self.device)
        if evaluated:
            for ev in self.homeostasis.update(epoch, metrics[C.COVERAGE], metrics[C.HIERARCHY_B]):
                self.logger.on_event(f"homeostasis_{ev.pop('name')}", ev)
            rank = tier_rank(metrics)
            if (rank, metrics[C.QUALITY]) > (self.best_rank, self.best_q):
                self.best_rank, self.best_q = rank, metrics[C.QUALITY]
                self.best_epoch = epoch
        metrics[C.EPOCH_SECONDS] = time.perf_counter() - t_epoch
        if self.best_epoch == epoch:
            self.best_metrics = dict(metrics)
        return metrics
