"""The TernaryVAE trainer: one loop, read top to bottom.

fit() -> for each epoch: set the scheduled LR, apply the homeostasis freeze state, train both
branches over one shuffled pass of the 19,683 operations (`train_branch` is the step; loss terms
and gradient norms stay on the device, one host sync per epoch), evaluate all operations,
report every contract metric, then commit the epoch (best.pt, last.pt, callbacks) whole.
On CPU with train.threads >= 2, branch B trains on a worker thread beside A (tvae.branches).

Epochs without an eval (train.eval_every > 1) carry the last eval forward; best.pt and
homeostasis react to real evals only. perf/samples_per_sec counts the training pass only.
state/frozen_encoder_* is the freeze state the epoch trained with (decided after its eval).

Events (logger.on_event): lr_phase {epoch, phase, name, lr}, geodesic_on {epoch}, divergence
{epoch, reason}, homeostasis_freeze/_unfreeze {epoch, encoder, coverage|hierarchy_B}.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import threading
import time
from pathlib import Path
from typing import Any

import torch

from tvae import contract as C
from tvae.branches import Branch, SerialRunner, ThreadBranchRunner, finite_mean, make_branch
from tvae.callbacks import TrainLogger
from tvae.checkpoint import restore_trainer, save_checkpoint, trainer_state
from tvae.config import TVAEConfig
from tvae.contract import EVAL_KEYS, LATENT_EVAL_KEYS
from tvae.data import epoch_batches, epoch_indices
from tvae.device import gpu_mem_peak_frac, resolve_amp, resolve_device, runtime_info
from tvae.distributed import DataParallel, shard_forwards
from tvae.homeostasis import Homeostasis
from tvae.interrupts import deferred_interrupt
from tvae.losses import TERMS, LossComputer
from tvae.metrics import evaluate_model
from tvae.model import TernaryVAE
from tvae.ops import N_OPS, ternary_ops, valuations
from tvae.progress import format_epoch_line
from tvae.ranking import BestEpoch
from tvae.result import Diverged, TrainResult
from tvae.schedule import PHASE_NAMES, lr_scale, phase_index


def train_branch(
    branch: Branch,
    batches: list[tuple[Any, ...]],
    epoch: int,
    geodesic_active: bool,
    parallel: DataParallel | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One pass of `branch` over `batches` (x, v, target classes or None, then any extra
    arguments of its loss), one optimizer step per batch.
    Returns (sum over batches of its weighted loss terms, each batch's pre-clip gradient norm)
    without waiting for the device. The scaler is a no-op unless amp is fp16. With `parallel`,
    the branch's forward covers this rank's shard only (see tvae.distributed): every rank
    computes the whole batch's loss, so each backs 1/world of it and the gradients are summed."""
    opt, scaler = branch.optimizer, branch.scaler
    term_sum, norms = None, []
    for x, v, tgt, *extra in batches:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(x.device.type, branch.amp_dtype, enabled=branch.amp_dtype is not None):
            out = branch.forward(x)
        terms = branch.loss(out, x, v, tgt, epoch, geodesic_active, *extra)
        loss = terms.sum() if parallel is None else terms.sum() / parallel.world
        scaler.scale(loss).backward()
        if parallel is not None:
            parallel.sum_gradients(branch.params)
        scaler.unscale_(opt)  # fp16: the norm is of the true gradient
        norms.append(torch.nn.utils.clip_grad_norm_(branch.params, branch.max_norm))
        scaler.step(opt)  # fp16: skipped when the gradient holds inf/NaN
        scaler.update()
        term_sum = terms.detach() if term_sum is None else term_sum + terms.detach()
    return term_sum, torch.stack(norms)


class Trainer:
    """Train TernaryVAE from a validated config into `workdir` (checkpoints under checkpoints/)."""

    def __init__(
        self,
        config: TVAEConfig,
        workdir: Path,
        logger: TrainLogger | None = None,
        echo: bool = True,
        parallel: DataParallel | None = None,
    ) -> None:
        self.config = config
        self.parallel = parallel  # data parallelism: this rank of a torchrun group
        self.workdir = Path(workdir)
        self.logger = logger or TrainLogger()
        self.echo = echo
        self._stop, self._finished = threading.Event(), None
        self.device = resolve_device(config.train.device)
        if parallel is not None:
            self.device = parallel.device(self.device)
        self.amp = resolve_amp(config.train.amp, self.device)
        self.checkpoint_dir = self.workdir / "checkpoints"
        self.runner: SerialRunner | None = None

    def request_stop(self, finished: str | None = None) -> None:
        """Stop after this epoch: KILLED, or FINISHED for reason `finished` (thread/signal safe)."""
        self._finished = finished
        self._stop.set()

    def setup(self) -> None:
        """Model, branches, data and the runner; fit() calls it, close() undoes the runner."""
        cfg, dev = self.config, self.device
        self.threads = cfg.train.threads or torch.get_num_threads()
        if self.parallel is not None and dev.type == "cpu":  # the ranks share this CPU
            self.threads = max(1, self.threads // self.parallel.world)
        if dev.type == "cpu":
            torch.set_num_threads(self.threads)
        torch.manual_seed(cfg.train.seed)
        self.model = m = TernaryVAE.from_config(cfg.model).to(dev)
        self.losses = losses = LossComputer(cfg.loss, dev)
        # no loss reads A's point z_A, only its radius: A's forward skips the direction net
        forward_A = functools.partial(m.forward_A, point=False)
        on = (cfg.train, dev, self.amp)
        self.branches = (
            make_branch("A", forward_A, losses.branch_A, m.branch_modules("A"), *on),
            make_branch("B", m.forward_B, losses.branch_B, m.branch_modules("B"), *on),
        )
        self.homeostasis = Homeostasis(cfg.homeostasis)
        self.ops, self.vals = ternary_ops().to(dev), valuations().to(dev)
        self.target_cls = (self.ops + 1).long()
        self.high_idx = (self.vals >= cfg.data.stratified_min_valuation).nonzero().squeeze(1)
        self.best = BestEpoch()
        self.last_eval: dict[str, float] = {}
        self.resumed_metrics: dict[str, float] = {}
        two_cores = dev.type == "cpu" and self.threads >= 2 and self.parallel is None
        self.runner = ThreadBranchRunner(self.threads) if two_cores else SerialRunner()

    def close(self) -> None:
        """Stop branch B's worker thread (if any)."""
        if self.runner is not None:
            self.runner.close()

    # -- the loop ----------------------------------------------------------------------------
    def fit(self, resume_checkpoint: Path | None = None) -> TrainResult:
        """Train to train.epochs (or until stopped/diverged); never raises for NaN or Ctrl-C."""
        t0 = time.perf_counter()
        self.setup()
        with contextlib.closing(self):  # branch B's worker thread ends with fit
            start_epoch = restore_trainer(self, Path(resume_checkpoint)) if resume_checkpoint else 0
            return self._loop(start_epoch, t0)

    def _loop(self, start_epoch: int, t0: float) -> TrainResult:
        total = self.config.train.epochs
        last_ckpt: Path | None = None
        best_ckpt = self.checkpoint_dir / "best.pt" if self.best.epoch else None
        info = {**runtime_info(self.device, self.amp), "start_epoch": start_epoch}
        self.logger.on_train_start({**info, "config": self.config})
        good = copy.deepcopy(trainer_state(self, start_epoch, self.resumed_metrics))
        last_written, status, reason, epoch_done = -1, "FINISHED", None, start_epoch
        metrics, sps = {}, []  # the last epoch's metrics; samples/s of each epoch
        try:
            for epoch in range(start_epoch + 1, total + 1):
                metrics = self._epoch(epoch, total)
                # an epoch is committed whole (state, checkpoints, metrics, log line) or not
                # at all: a Ctrl-C in between would leave a checkpoint ahead of the metrics
                with deferred_interrupt():
                    sps.append(metrics[C.SAMPLES_PER_SEC])
                    epoch_done = epoch
                    good = copy.deepcopy(trainer_state(self, epoch, metrics))
                    if self.best.epoch == epoch:
                        best_ckpt = save_checkpoint(good, self.checkpoint_dir / "best.pt")
                        self.logger.on_checkpoint(best_ckpt, epoch, "best")
                    if epoch % self.config.train.checkpoint_every == 0 or epoch == total:
                        last_ckpt = save_checkpoint(good, self.checkpoint_dir / "last.pt")
                        last_written = epoch
                        self.logger.on_checkpoint(last_ckpt, epoch, "last")
                    self.logger.on_epoch_end(epoch, metrics)
                    line = format_epoch_line(epoch, total, metrics)
                    if self.echo:
                        print(line, flush=True)
                    self.logger.on_log_line(line)
                if self._stop_requested() and epoch < total:
                    status = "FINISHED" if self._finished else "KILLED"
                    reason = self._finished or "stop requested"
                    break
        except KeyboardInterrupt:
            status, reason = "KILLED", "interrupted (KeyboardInterrupt)"
        except Diverged as err:
            status, reason = "FAILED", str(err)
            self.logger.on_event("divergence", {"epoch": epoch_done + 1, "reason": reason})
        except Exception:  # a crash (e.g. in branch B's worker): the last epoch stays resumable
            status = "FAILED"
            raise
        finally:
            if status != "FINISHED" and last_written != good["epoch"]:
                last_ckpt = save_checkpoint(good, self.checkpoint_dir / "last.pt")
                self.logger.on_checkpoint(last_ckpt, good["epoch"], "last")
        result = TrainResult(
            status=status,
            reason=reason,
            last_epoch=epoch_done,
            best_epoch=self.best.epoch,
            best_metrics=dict(self.best.metrics),
            final_metrics=dict(good["metrics"]) if good["metrics"] else dict(metrics),
            wall_seconds=time.perf_counter() - t0,
            samples_per_sec=sum(sps) / len(sps) if sps else 0.0,
            last_checkpoint=last_ckpt,
            best_checkpoint=best_ckpt,
        )
        self.logger.on_train_end(status, result.summary())
        return result

    def _stop_requested(self) -> bool:
        """Stop after this epoch? With data parallelism, if any rank was asked: every rank
        asks here once per epoch, so all stop at the same boundary."""
        if self.parallel is None:
            return self._stop.is_set()
        return self.parallel.any(self._stop.is_set(), self.device)

    def _epoch(self, epoch: int, total: int) -> dict[str, float]:
        """Schedule, train, evaluate and judge one epoch; returns its contract metrics."""
        cfg = self.config
        t_epoch = time.perf_counter()
        lr = cfg.train.lr * lr_scale(epoch, total, cfg.schedule)
        phase = phase_index(epoch, total, cfg.schedule)
        if epoch > 1 and phase != phase_index(epoch - 1, total, cfg.schedule):
            event = {"epoch": epoch, "phase": phase, "name": PHASE_NAMES[phase], "lr": lr}
            self.logger.on_event("lr_phase", event)
        geodesic_active = epoch >= cfg.loss.geodesic.start_epoch and cfg.loss.geodesic.weight > 0
        if geodesic_active and epoch == max(1, cfg.loss.geodesic.start_epoch):
            self.logger.on_event("geodesic_on", {"epoch": epoch})
        frozen = (self.homeostasis.frozen_A, self.homeostasis.frozen_B)
        for branch, is_frozen in zip(self.branches, frozen, strict=True):
            branch.start_epoch(lr, is_frozen)

        t_train = time.perf_counter()
        terms, gnorm = self.train_epoch(epoch, geodesic_active)
        values = torch.cat([terms.float(), gnorm.float().view(1)]).cpu().tolist()  # one sync
        train_seconds = time.perf_counter() - t_train
        names = (*TERMS, "grad_norm")
        _check_finite(dict(zip(names, values, strict=True)), f"training value at epoch {epoch}")

        metrics = {C.TRAIN_LOSS: float(sum(values[: len(TERMS)]))}
        metrics.update({C.loss_term(n): float(x) for n, x in zip(TERMS, values, strict=False)})
        evaluated = epoch % cfg.train.eval_every == 0 or epoch == total or not self.last_eval
        if evaluated:
            with self.runner.all_threads():  # branch B's worker is idle now
                self.last_eval = evaluate_model(self.model, self.ops, self.vals)
            evals = {k: self.last_eval[k] for k in EVAL_KEYS + LATENT_EVAL_KEYS}
            _check_finite(evals, f"eval metric at epoch {epoch}")
        metrics.update(self.last_eval)
        metrics[C.GRAD_NORM], metrics[C.LR] = float(values[-1]), float(lr)
        metrics[C.FROZEN_A], metrics[C.FROZEN_B] = float(frozen[0]), float(frozen[1])
        metrics[C.LR_PHASE], metrics[C.GEODESIC_ACTIVE] = float(phase), float(geodesic_active)
        metrics[C.SAMPLES_PER_SEC] = N_OPS / train_seconds
        if (mem := gpu_mem_peak_frac(self.device)) is not None:
            metrics[C.GPU_MEM_PEAK_FRAC] = mem
        metrics[C.EPOCH_SECONDS] = time.perf_counter() - t_epoch
        if evaluated:
            for ev in self.homeostasis.update(epoch, metrics[C.COVERAGE], metrics[C.HIERARCHY_B]):
                self.logger.on_event(f"homeostasis_{ev.pop('name')}", ev)
            self.best.offer(epoch, metrics)
        return metrics

    def train_epoch(self, epoch: int, geodesic_active: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Train both branches one epoch; returns (mean weighted terms, mean pre-clip norm)."""
        tc = self.config.train
        idx = epoch_indices(self.config.data, tc.batch_size, self.high_idx, self.device)
        branch_A, branch_B = self.branches
        # z_B feeds only the geodesic and latent terms: without them, B's forward skips the
        # direction net
        point_B = geodesic_active or self.config.loss.latent.weight > 0
        branch_B.forward = functools.partial(self.model.forward_B, point=point_B)
        if self.parallel is not None:  # each rank forwards its shard of every batch
            branch_A.forward, branch_B.forward = shard_forwards(self.model, self.parallel, point_B)
        self.model.train()

        def job_A() -> tuple[torch.Tensor, torch.Tensor]:
            batches = epoch_batches(idx, tc.batch_size, self.ops, self.vals, self.target_cls)
            return train_branch(branch_A, batches, epoch, geodesic_active, self.parallel)

        def job_B() -> tuple[torch.Tensor, torch.Tensor]:
            batches = epoch_batches(idx, tc.batch_size, self.ops, self.vals)
            contexts = self.losses.epoch_contexts(batches)  # B's model-free inputs, once
            batches = [(x, v, None, ctx) for (x, v), ctx in zip(batches, contexts, strict=True)]
            return train_branch(branch_B, batches, epoch, geodesic_active, self.parallel)

        (terms_A, norms_A), (terms_B, norms_B) = self.runner.run(job_A, job_B)
        norms = (norms_A.square() + norms_B.square()).sqrt()  # whole model, per batch
        mean_norm = finite_mean(norms) if self.amp == "fp16" else norms.mean()
        return self.losses.combine(terms_A, terms_B) / math.ceil(N_OPS / tc.batch_size), mean_norm


def _check_finite(values: dict[str, float], what: str) -> None:
    """Diverged (naming the culprits) unless every value is finite."""
    bad = [name for name, x in values.items() if not math.isfinite(x)]
    if bad:
        raise Diverged(f"non-finite {what}: {', '.join(bad)}")
