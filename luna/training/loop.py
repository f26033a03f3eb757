"""The training loop: plain PyTorch, read top to bottom (nanoGPT-style); the task says what a batch costs.

``for step``: ``for micro in range(accumulate)`` → autocast → ``task.losses`` → backward; then clip → step (skipped
on the device when anything is non-finite on any rank, :mod:`luna.training.guard`) → log → validate → checkpoint
→ stop on max_steps, wall clock or a SLURM preemption signal. DDP comes from the environment (see
:mod:`luna.training.launch`).

The step never reads the device, so the host runs ahead of a GPU: what needs a device value or the ranks'
agreement (losses, skipped steps, rank checksums, rank 0's clock, a preemption signal) is read at sync points,
every ``logger.log_every_steps`` steps (single-process runs read their clock and signals every step: host only).

With ``trainer.max_minutes`` the schedule's progress is the larger of step/total and elapsed/max_minutes, so a
run stopped by its clock still ends with its learning rate annealed; such a run is reproducible in its steps,
not bit-exact on resume (the clock is not).

Exact resume (without ``max_minutes``): the learning rate is a function of the step, every micro-step reseeds torch from
(seed, step, rank, micro-step), data crops are a function of (seed, epoch, index) and the loader skips the
batches already consumed, so a run killed at any point and restarted from ``last.pt`` ends with the same
weights as one never interrupted (CPU, fp32).
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from luna.config import ConfigError, plain
from luna.data import SKIPPED_FILE, build_datasets, make_loader, prepare, write_skipped
from luna.devices import AMP_DTYPES, resolve_precision
from luna.errors import TrainingError
from luna.serialization import write_json
from luna import distributed
from luna.training.checkpoint import CheckpointManager, rng_state, set_rng_state
from luna.training.guard import StepGuard
from luna.training.loggers import build_trackers
from luna.training.preemption import PreemptionWatch
from luna.training.schedule import lr_at
from luna.training.tasks import build_task
from luna.version import __version__

log = logging.getLogger("luna.trainer")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def step_seed(seed: int, step: int, rank: int, micro: int) -> int:
    return (seed * 1_000_003 + step * 1_009 + rank * 101 + micro) % (2**63 - 1)


def global_batch_size(cfg: DictConfig, world_size: int) -> int:
    """The global batch (``data.batch_size``, else ``hardware.batch_size`` per rank), checked divisible."""
    gb = cfg.data.batch_size if cfg.data.batch_size is not None else cfg.hardware.batch_size * world_size
    acc = cfg.trainer.accumulate
    if gb % (world_size * acc):
        raise ConfigError(f"data.batch_size: the global batch {gb} must be divisible by world size {world_size} × "
                          f"trainer.accumulate {acc}")
    return gb


class Loop:
    """Trains ``cfg.task`` on one rank of a (possibly single-process) job."""

    def __init__(self, cfg: DictConfig, env: distributed.DistEnv):
        self.cfg, self.env, self.device, t = cfg, env, env.device, cfg.trainer
        self.out = Path(cfg.output_dir)
        self.precision = resolve_precision(cfg.hardware.precision, self.device)
        self.amp_dtype = AMP_DTYPES.get(self.precision)
        if self.amp_dtype == torch.float16 and self.device.type == "cpu":
            raise ConfigError("hardware.precision: fp16 needs a CUDA device (use bf16 or fp32 on CPU)")
        self.accumulate = t.accumulate
        self.global_batch = global_batch_size(cfg, env.world_size)
        self.micro_batch = self.global_batch // (env.world_size * self.accumulate)
        seed_everything(cfg.seed)  # identical initial weights on every rank and every run of this config
        self.task = build_task(cfg, env)  # loads and checks what it starts from before any data is touched

        # data: rank 0 downloads and indexes first (and lists what it skipped), the others then read its manifest
        report = None
        self.skipped_log = self.out / SKIPPED_FILE
        if env.is_main:
            report = prepare(cfg.data)
            self._list_skipped(report.failed)
        distributed.barrier()
        self.train_ds, self.val_ds, self.data_info = build_datasets(
            cfg.data, self.task.sample_rate, cfg.seed, report=report, skipped_log=str(self.skipped_log))
        self.num_workers = cfg.data.num_workers if cfg.data.num_workers is not None else cfg.hardware.num_workers
        self.steps_per_epoch = len(self.train_ds) // self.global_batch  # each rank's full micro-batches / accumulate
        if self.steps_per_epoch == 0:
            raise ConfigError(f"data.batch_size: {self.global_batch} is larger than the training set per rank "
                              f"({len(self.train_ds)} items, world size {env.world_size}); lower data.batch_size")
        self.total_steps = self.steps_per_epoch * t.max_epochs
        if t.max_steps > 0:
            self.total_steps = min(self.total_steps, t.max_steps)

        self.base_lr = cfg.optimizer.lr * cfg.hardware.lr_scale
        self.optimizer = self.task.optimizer
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.ckpt = CheckpointManager(self.out / "checkpoints", cfg.checkpointing.keep_last)
        self.step = self.epoch = self.batch_pos = 0  # batch_pos: micro-batches of `epoch` already consumed
        self.best, self.first_val_loss, self.last_val = math.inf, None, {}
        self.elapsed_before, self.started = 0.0, time.time()
        self.failed_items = self.sync_checks = 0
        self.guard = StepGuard(self.device, t.max_bad_steps, t.grad_clip)
        self.clock = 0.0  # wall-clock progress, elapsed / max_minutes (rank 0's, as of the last poll)
        self.trackers: Any = None
        self.preemption = PreemptionWatch()
        self._resume()

    # ---- the loop -------------------------------------------------------------------------------
    def fit(self) -> Dict[str, Any]:
        cfg, env = self.cfg, self.env
        self.started = time.time()
        if env.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            OmegaConf.save(cfg, self.out / "config.yaml", resolve=True)
            self.trackers = build_trackers(cfg.logger, self.out, name=self.out.name or "run",
                                           group=cfg.logger.wandb.group, config=plain(cfg))
            log.info("training %s | data: %s | world %d (%s, %s, %s), global batch %d (micro %d × accumulate %d) | "
                     "%d steps/epoch, %d steps", self.task.describe(), self.data_info, env.world_size, env.mode,
                     self.device, self.precision, self.global_batch, self.micro_batch, self.accumulate, self.steps_per_epoch,
                     self.total_steps)
        try:
            with self.preemption:  # SLURM's warning signals: save at the next step
                self.run()
        finally:
            if self.trackers is not None:
                self.trackers.close()
        if self.failed_items and env.is_main:
            log.warning("skipped %d unreadable audio items during training (the files, with reasons: %s)",
                        self.failed_items, self.skipped_log)
        return self.metrics()

    def run(self) -> None:
        cfg, env, t, task = self.cfg, self.env, self.cfg.trainer, self.task
        end = self.steps_per_epoch * self.accumulate  # micro-batches per epoch
        sums: Dict[str, float] = {}
        last_log = (time.time(), self.step)
        bar = tqdm(total=self.total_steps, initial=self.step, disable=not (env.is_main and t.progress), desc="train",
                   mininterval=1.0 if os.isatty(2) else 30.0, dynamic_ncols=True)
        self.poll_clock()
        lr, stop = self.lr_at(self.step), self.step >= self.total_steps or self.clock >= 1
        while not stop and self.epoch < t.max_epochs:
            task.model.train()
            for micro_batches in self._steps(end):
                # ---- one optimizer step: forward/backward over `accumulate` micro-batches ----
                lr = self.lr_at(self.step)
                self.failed_items += sum(int(b["failed"].sum()) for b in micro_batches)  # host tensors
                terms, grad_norm = self.train_step(micro_batches, lr)
                for k, v in terms.items():
                    sums[k] = sums.get(k, 0) + v
                self.step += 1
                self.batch_pos += self.accumulate
                bar.update(1)

                # ---- sync point: the device is read here only; log, validate, checkpoint, stop ----
                sync = self.step % cfg.logger.log_every_steps == 0
                if sync:
                    self.guard.check(self.step, self.ckpt.last)  # stops after trainer.max_bad_steps in a row
                    if env.is_main:
                        self.log_train(sums, lr, grad_norm, last_log)
                        last_log = (time.time(), self.step)
                    sums = {}
                    self.check_ranks_in_sync()
                mid_epoch = self.batch_pos < end and self.step < self.total_steps  # else validated and saved below
                if t.val_every_steps and self.step % t.val_every_steps == 0 and mid_epoch:
                    self.validate(log_media=False)
                poll = sync or not env.distributed  # what all ranks must agree on
                preempted = self.preemption.requested(self.device) if poll else None  # a SLURM signal, any rank
                every = cfg.checkpointing.every_steps
                if preempted or (every and self.step % every == 0 and mid_epoch):
                    self.save("last.pt")
                if preempted:  # this step is on disk; now submitit requeues the job (or SLURM ends it)
                    distributed.barrier()
                    self.preemption.deliver(preempted, self.step)
                if poll:
                    self.poll_clock()
                if self.step >= self.total_steps or self.clock >= 1:
                    stop = True
                    break
            if self.batch_pos >= end:  # epoch finished
                self.epoch, self.batch_pos = self.epoch + 1, 0
                self.validate(log_media=True)
                self.save("last.pt")
                if cfg.checkpointing.every_epochs and self.epoch % cfg.checkpointing.every_epochs == 0 and env.is_main:
                    self.ckpt.save_epoch(self.state(), self.epoch)
            elif stop:  # stopped mid-epoch (max_steps or wall clock): keep the position
                self.validate(log_media=True)
                self.save("last.pt")
        bar.close()
        self.guard.check(self.step, self.ckpt.last)
        if env.is_main:
            log.info("stopped at step %d of %d (%s), learning rate %.3g (peak %.3g)", self.step, self.total_steps,
                     "wall clock" if self.clock >= 1 and self.step < self.total_steps else "schedule",
                     lr, self.base_lr)

    def train_step(self, micro_batches: List[Dict[str, torch.Tensor]], lr: float):
        """Forward/backward over the micro-batches, then the guarded optimizer step. Reads nothing from the
        device: returns the detached loss terms and the gradient norm as device tensors."""
        cfg, env, task = self.cfg, self.env, self.task
        sums: Dict[str, torch.Tensor] = {}
        for micro, batch in enumerate(micro_batches):
            torch.manual_seed(step_seed(cfg.seed, self.step, env.rank, micro))
            audio = batch["audio"].to(self.device, non_blocking=True)
            lengths = batch["length"].to(self.device, non_blocking=True)
            sync = not env.distributed or micro == self.accumulate - 1
            with contextlib.nullcontext() if sync else task.net.no_sync(), self.autocast():
                loss, terms = task.losses(audio, lengths)
            self.scaler.scale(loss / self.accumulate).backward()
            for k, v in {"loss": loss, **terms}.items():
                sums[k] = sums.get(k, 0) + v.detach().float()
        grad_norm = self.guard.step(self.optimizer, self.scaler, sums["loss"], lr)  # every micro-batch's loss
        return sums, grad_norm

    def poll_clock(self) -> None:
        """Wall-clock progress (rank 0's clock on every rank); 0 without ``trainer.max_minutes``."""
        minutes = self.cfg.trainer.max_minutes
        if minutes > 0:
            self.clock = distributed.broadcast_value(self.elapsed / 60 / minutes, self.device)

    def _steps(self, end: int) -> Iterator[List[Dict[str, torch.Tensor]]]:
        """This epoch's remaining optimizer steps, each as its ``accumulate`` micro-batches."""
        loader = self.loader(self.epoch, self.batch_pos)
        group: List[Dict[str, torch.Tensor]] = []
        for i, batch in enumerate(loader, start=self.batch_pos):
            if i >= end:
                break
            group.append(batch)
            if len(group) == self.accumulate:
                yield group
                group = []

    def log_train(self, sums: Dict[str, Any], lr: float, grad_norm: torch.Tensor, last: Tuple[float, int]) -> None:
        now, steps = time.time(), self.step - last[1]
        n = steps * self.accumulate
        scalars = {f"train/{k}": float(v) / n for k, v in sums.items()}
        audio_per_step = self.cfg.data.segment_seconds * self.global_batch  # audio-seconds per optimizer step
        scalars.update({"train/lr": lr, "train/grad_norm": float(grad_norm), "data/failed_items": float(self.failed_items),
                        "train/audio_seconds_per_second": audio_per_step * steps / max(now - last[0], 1e-9)})
        self.task.health(scalars, self.step, self.trackers)
        self.trackers.log_scalars(scalars, self.step)

    # ---- validation ------------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self, log_media: bool) -> float:
        self.task.model.eval()
        totals = torch.zeros(3, device=self.device, dtype=torch.float64)  # loss·n, mel_l1·n, n
        first = None
        for batch in self.loader(0, 0, train=False):
            audio, lengths = batch["audio"].to(self.device), batch["length"].to(self.device)
            with self.autocast():
                loss, mel_l1, media = self.task.validation(audio, lengths)
            n = torch.tensor(float(audio.shape[0]), device=self.device, dtype=torch.float64)
            totals += torch.stack([loss.double() * n, mel_l1.double() * n, n])
            first = media if first is None else first
        if self.env.distributed:
            torch.distributed.all_reduce(totals)
            self.check_ranks_in_sync()
        self.task.model.train()
        val_loss, val_mel = (float(totals[i] / totals[2].clamp(min=1)) for i in (0, 1))
        self.first_val_loss = val_loss if self.first_val_loss is None else self.first_val_loss
        improved = val_loss < self.best
        self.best = min(self.best, val_loss)
        if self.env.is_main:
            log.info("step %d epoch %d: val loss %.4f, val mel L1 %.4f%s", self.step, self.epoch, val_loss, val_mel,
                     " (best)" if improved else "")
            self.last_val = {"val_loss": val_loss, "val_mel_l1": val_mel}
            self.trackers.log_scalars({"val/loss": val_loss, "val/mel_l1": val_mel}, self.step)
            if log_media and first is not None and self.cfg.logger.audio_samples > 0:
                self.task.media(self.trackers, first, self.step)
            write_json(self.metrics(), self.out / "metrics.json")
        if improved:
            self.save("best.pt")
        return val_loss

    def check_ranks_in_sync(self) -> None:
        """All ranks must hold identical weights and codebooks (per-tensor checksums; TrainingError if not)."""
        if self.env.distributed:
            distributed.check_in_sync(self.task.model.state_dict(), self.device, self.step)
            self.sync_checks += 1

    # ---- setup, checkpoints, metrics ---------------------------------------------------------------
    def _list_skipped(self, failed) -> None:
        """Rank 0, before any rank reads audio: ``skipped_files.tsv`` lists every file the manifest skipped
        (train and val subsets), with its reason; files that fail only when decoded are appended to it as
        they are met. A list from an earlier session of this run dir is replaced (or removed if clean)."""
        if failed:
            write_skipped(self.skipped_log, failed, found="indexing")
            log.warning("%d unreadable audio file(s) skipped (train and val): every one, with its reason, in %s",
                        len(failed), self.skipped_log)
        else:
            self.skipped_log.unlink(missing_ok=True)

    def loader(self, epoch: int, start_batch: int, train: bool = True):
        return make_loader(self.train_ds if train else self.val_ds, self.micro_batch, train=train, seed=self.cfg.seed,
                           epoch=epoch, rank=self.env.rank, world_size=self.env.world_size,
                           num_workers=self.num_workers, start_batch=start_batch, pin_memory=self.device.type == "cuda")

    def _resume(self) -> None:
        path = self.ckpt.resume_path(str(self.cfg.resume))
        if path is None:
            return
        state = self.ckpt.load(path, map_location=self.device)
        self.task.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.task.load_state_dict(state)
        self.step, self.epoch, self.batch_pos = int(state["step"]), int(state["epoch"]), int(state["batch_pos"])
        self.best, self.first_val_loss = float(state["best"]), state.get("first_val_loss")
        self.elapsed_before = float(state.get("elapsed", 0.0))
        set_rng_state(state["rng"])
        log.info("resumed from %s at step %d (epoch %d, batch %d)", path, self.step, self.epoch, self.batch_pos)

    def state(self) -> Dict[str, Any]:
        return {"model": self.task.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
                "step": self.step, "epoch": self.epoch, "batch_pos": self.batch_pos, "rng": rng_state(),
                "best": self.best, "first_val_loss": self.first_val_loss, "elapsed": self.elapsed,
                "config": plain(self.cfg), "luna_version": __version__, **self.task.state_dict()}

    def save(self, name: str) -> None:
        if self.env.is_main:
            self.ckpt.save(self.state(), name)

    @property
    def elapsed(self) -> float:
        return self.elapsed_before + (time.time() - self.started)

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def lr_at(self, step: int) -> float:
        o = self.cfg.optimizer
        return lr_at(step, self.base_lr, self.total_steps, o.warmup_steps, o.scheduler, o.min_lr_ratio, o.gamma,
                     self.steps_per_epoch, min_progress=self.clock)

    def metrics(self) -> Dict[str, Any]:
        return {"task": self.cfg.task, "best_val_loss": self.best, "first_val_loss": self.first_val_loss,
                **self.last_val, "step": self.step, "epoch": self.epoch, "elapsed_seconds": self.elapsed,
                **self.task.metrics(), "failed_items": self.failed_items, "world_size": self.env.world_size,
                "rank_sync_checks": self.sync_checks, "output_dir": str(self.out)}
