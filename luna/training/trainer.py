"""The training loop: plain PyTorch, one readable loop (nanoGPT-style), DDP from the environment.

Exact resume: the learning rate is a function of the step, every micro-step reseeds torch from
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
from collections import deque
from pathlib import Path
from typing import Any, Deque, Dict, Optional, Tuple

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from luna.errors import TrainingError  # noqa: F401 - raised here, importable from here
from luna.version import __version__
from luna.config import ConfigError, to_container
from luna.data import SKIPPED_FILE, build_datasets, make_loader, prepare, write_skipped
from luna.models.tokenizer import SpeechTokenizer
from luna.training import distributed
from luna.training.checkpoint import CheckpointManager, rng_state, set_rng_state
from luna.training.loggers import Trackers, build_trackers
from luna.training.preemption import PreemptionWatch
from luna.training.schedule import lr_at

log = logging.getLogger("luna.trainer")

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}



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
        raise ConfigError(
            f"data.batch_size: the global batch {gb} must be divisible by world size {world_size} × "
            f"trainer.accumulate {acc}"
        )
    return gb


def alarm_grace_steps(cfg: DictConfig) -> int:
    """Steps before the codebook alarm may fire, and the window over which usage must have stopped rising.

    The longest of: the learning-rate warm-up (``optimizer.warmup_steps``), the grace a revived code gets
    before it is judged (``model.revival_grace_steps``), and the horizon of the EMA the usage statistics
    are (``1 / (1 - model.ema_decay)`` steps). Before that, low usage on real speech is the codebooks
    settling after k-means, not a collapse.
    """
    m = cfg.model
    horizon = math.ceil(1.0 / (1.0 - float(m.ema_decay))) if float(m.ema_decay) < 1 else 0
    return max(int(cfg.optimizer.warmup_steps), int(m.revival_grace_steps), horizon)


#: perplexity counts as rising when it grew by more than this factor over the alarm window
RISING_PERPLEXITY = 1.05


def mel_figure(mel: torch.Tensor, mel_hat: torch.Tensor):
    """Original vs reconstructed log-mel, one above the other (matplotlib Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 1, figsize=(8, 5), sharex=True)
    for ax, m, title in zip(axes, (mel, mel_hat), ("original", "reconstruction")):
        ax.imshow(m.float().cpu().numpy(), origin="lower", aspect="auto", interpolation="nearest")
        ax.set_title(title)
    fig.tight_layout()
    return fig


class Trainer:
    """Trains a :class:`SpeechTokenizer` on one rank of a (possibly single-process) job."""

    def __init__(self, cfg: DictConfig, env: distributed.DistEnv):
        self.cfg, self.env = cfg, env
        self.out = Path(cfg.output_dir)
        self.device = env.device
        self.amp_dtype = AMP_DTYPES.get(cfg.hardware.precision)
        if self.amp_dtype is not None and self.device.type == "cpu" and self.amp_dtype == torch.float16:
            raise ConfigError("hardware.precision: fp16 needs a CUDA device (use bf16 or fp32 on CPU)")
        t = cfg.trainer
        self.accumulate = t.accumulate
        self.global_batch = global_batch_size(cfg, env.world_size)
        self.micro_batch = self.global_batch // (env.world_size * self.accumulate)

        # data: rank 0 downloads and indexes first (and lists what it skipped), the others then read its manifest
        report = None
        self.skipped_log = self.out / SKIPPED_FILE
        if env.is_main:
            report = prepare(cfg.data)
            self._list_skipped(report.failed)
        distributed.barrier()
        seed_everything(cfg.seed)  # identical initial weights on every rank and every run of this config
        self.build_models()
        self.train_ds, self.val_ds, self.data_info = build_datasets(
            cfg.data, self.sample_rate, cfg.seed, report=report, skipped_log=str(self.skipped_log))
        self.num_workers = cfg.data.num_workers if cfg.data.num_workers is not None else cfg.hardware.num_workers
        batches = len(self._loader(0, 0))
        self.steps_per_epoch = batches // self.accumulate
        if self.steps_per_epoch == 0:
            raise ConfigError(
                f"data.batch_size: {self.global_batch} is larger than the training set per rank "
                f"({len(self.train_ds)} items, world size {env.world_size}); lower data.batch_size"
            )
        self.total_steps = self.steps_per_epoch * t.max_epochs
        if t.max_steps > 0:
            self.total_steps = min(self.total_steps, t.max_steps)

        self.base_lr = cfg.optimizer.lr * cfg.hardware.lr_scale
        self.optimizer = self.adamw(self.model.parameters())
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.ckpt = CheckpointManager(self.out / "checkpoints", cfg.checkpoint.keep_last)
        self.step = self.epoch = self.batch_pos = 0
        self.best = math.inf
        self.elapsed_before = 0.0
        self.first_val_loss: Optional[float] = None
        self.bad_steps = 0
        self.failed_items = 0
        self.sync_checks = 0
        self._health: Dict[int, Deque[Tuple[int, float, float]]] = {}  # quantizer -> (step, usage, perplexity)
        self._last_alarm: Dict[int, int] = {}  # quantizer -> step of its last alarm line
        self._resume()
        self.ddp = self.wrap(self.model)
        self.trackers: Optional[Trackers] = None

    # ---- what a task defines (this class: the tokenizer; see vocoder_trainer.py for the GAN) -------
    def build_models(self) -> None:
        """Set ``self.model`` (saved as ``model``) and anything else the task trains."""
        self.model = SpeechTokenizer.from_config(self.cfg).to(self.device)

    @property
    def sample_rate(self) -> int:
        return self.model.sample_rate

    def adamw(self, params, lr: Optional[float] = None, betas=None) -> torch.optim.Optimizer:
        """AdamW with the fused kernel: one pass over each tensor instead of ~10 small ops per parameter
        group (on 2 CPU threads 5x faster for the 3.1 M-parameter rvq8_256, and no many-small-op stalls
        when a core is busy; the same update as the default implementation up to float rounding)."""
        o = self.cfg.optimizer
        return torch.optim.AdamW(params, lr=lr or self.base_lr, betas=tuple(betas or o.betas),
                                 weight_decay=o.weight_decay, eps=o.eps, fused=True)

    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        """DDP over ``module`` when distributed (buffers are synchronized by the modules themselves)."""
        if not self.env.distributed:
            return module
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DDP(module, device_ids=ids, broadcast_buffers=False)

    def train_micro_step(self, audio: torch.Tensor, lengths: torch.Tensor, no_sync: bool) -> Dict[str, torch.Tensor]:
        """Forward and backward of one micro-batch; returns the detached loss terms (``loss`` included)."""
        with self.ddp.no_sync() if no_sync else contextlib.nullcontext():
            with self._autocast():
                out = self.ddp(audio, lengths)
            self.scaler.scale(out.loss / self.accumulate).backward()
        terms = {k: v.detach().float() for k, v in out.losses.items()}
        terms["loss"] = out.loss.detach().float()
        return terms

    def optimizer_step(self, lr: float, last: Dict[str, torch.Tensor]) -> Tuple[bool, torch.Tensor]:
        """Clip, check every rank is finite, step (or skip). Returns (stepped, grad norm)."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.scaler.unscale_(self.optimizer)
        clip = self.cfg.trainer.grad_clip
        grad_norm = torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else float("inf"))
        finite = torch.isfinite(last["loss"]) & torch.isfinite(grad_norm)
        finite = bool(distributed.all_reduce_mean(finite.float()) == 1.0)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        if finite or self.scaler.is_enabled():
            self.scaler.step(self.optimizer)  # GradScaler itself skips fp16 overflow steps
            self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return finite or self.scaler.is_enabled(), grad_norm

    def validation_batch(self, audio: torch.Tensor, lengths: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, Any]:
        """(loss, mel L1, what :meth:`log_media` shows) of one validation batch, eval mode, no grad."""
        with self._autocast():
            out = self.model(audio, lengths)
        return out.loss, out.losses["mel_l1"], out

    def log_media(self, out: Any) -> None:
        import matplotlib.pyplot as plt

        for j in range(min(self.cfg.logger.audio_samples, out.mel.shape[0])):
            fig = mel_figure(out.mel[j], out.mel_hat[j])
            self.trackers.log_figure(f"val/mel_{j}", fig, self.step)
            plt.close(fig)
            try:
                audio = self.model.vocode(out.mel_hat[j : j + 1].float())[0].cpu().numpy()
                self.trackers.log_audio(f"val/reconstruction_{j}", audio, self.model.sample_rate, self.step)
            except Exception as e:  # noqa: BLE001 - a missing vocoder must not stop training
                log.warning("no audio sample logged (vocoder unavailable: %s)", e)
                return

    def log_health(self, scalars: Dict[str, float]) -> None:
        """Codebook usage, perplexity, replacements; an alarm when a quantizer has collapsed.

        A quantizer is in alarm when its usage or perplexity is below ``trainer.alarm_usage`` /
        ``alarm_perplexity``, the first :func:`alarm_grace_steps` steps are over, and neither has risen
        over that many steps (usage by a code, perplexity by 5%): codebooks still filling up after k-means
        are not collapsed. ``codebook/q{i}_alarm`` is logged at every such step; the warning line at most
        once per window per quantizer.
        """
        t = self.cfg.trainer
        window = alarm_grace_steps(self.cfg)
        for i, s in enumerate(self.model.quantizer.stats()):
            scalars[f"codebook/q{i}_usage"] = s["usage"]
            scalars[f"codebook/q{i}_perplexity"] = s["perplexity"]
            scalars[f"codebook/q{i}_replacements"] = float(s["replacements"])
            history = self._health.setdefault(i, deque())
            # the reference: the last point at least a window ago (else, e.g. just after a resume, the oldest)
            ref = next((h for h in reversed(history) if h[0] <= self.step - window), history[0] if history else None)
            history.append((self.step, s["usage"], s["perplexity"]))
            while len(history) > 1 and history[1][0] <= self.step - window:
                history.popleft()  # keep one point at or before the window's start
            low = s["usage"] < t.alarm_usage or s["perplexity"] < t.alarm_perplexity
            if not low or self.step <= window:
                continue
            if ref is not None and (s["usage"] > ref[1] or s["perplexity"] > RISING_PERPLEXITY * ref[2]):
                continue  # still filling up
            scalars[f"codebook/q{i}_alarm"] = 1.0
            if self.step - self._last_alarm.get(i, -window) < window:
                continue
            self._last_alarm[i] = self.step
            since = f"since step {ref[0]}" if ref is not None else "(no earlier point)"
            msg = (f"codebook alarm: quantizer {i} uses {s['usage']:.1%} of {self.model.codebook_size} codes, "
                   f"perplexity {s['perplexity']:.1f}, not rising {since} (alarm below usage {t.alarm_usage:.1%} "
                   f"or perplexity {t.alarm_perplexity}, after step {window}); {s['replacements']} codes replaced "
                   f"this step")
            log.warning("step %d: %s", self.step, msg)
            self.trackers.log_text("codebook/alarm", msg, self.step)

    def describe(self) -> str:
        m = self.model
        return (f"{self.cfg.model.name}: {sum(p.numel() for p in m.parameters()) / 1e6:.1f}M parameters, "
                f"{m.sample_rate} Hz, {m.frame_rate:.2f} tokens/s, {m.num_quantizers}×{m.codebook_size} codes = "
                f"{m.bitrate:.0f} bps")

    def task_state(self) -> Dict[str, Any]:
        """What the task adds to a checkpoint beyond model/optimizer/scaler."""
        return {}

    def load_task_state(self, state: Dict[str, Any]) -> None:
        pass

    def task_metrics(self) -> Dict[str, Any]:
        m = self.model
        return {"codebooks": m.quantizer.stats(), "tokens_per_second": m.frame_rate, "bitrate_bps": m.bitrate}

    # ---- setup ----------------------------------------------------------------------------------
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

    def _loader(self, epoch: int, start_batch: int, train: bool = True):
        ds = self.train_ds if train else self.val_ds
        return make_loader(
            ds,
            self.micro_batch,
            train=train,
            seed=self.cfg.seed,
            epoch=epoch,
            rank=self.env.rank,
            world_size=self.env.world_size,
            num_workers=self.num_workers,
            start_batch=start_batch,
            pin_memory=self.device.type == "cuda",
        )

    def _resume(self) -> None:
        path = self.ckpt.resume_path(str(self.cfg.resume))
        if path is None:
            return
        state = self.ckpt.load(path, map_location=self.device)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.load_task_state(state)
        self.step, self.epoch, self.batch_pos = int(state["step"]), int(state["epoch"]), int(state["batch_pos"])
        self.best = float(state["best"])
        self.elapsed_before = float(state.get("elapsed", 0.0))
        self.first_val_loss = state.get("first_val_loss")
        set_rng_state(state["rng"])
        log.info("resumed from %s at step %d (epoch %d, batch %d)", path, self.step, self.epoch, self.batch_pos)

    def state(self) -> Dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
            "step": self.step,
            "epoch": self.epoch,
            "batch_pos": self.batch_pos,  # data position: micro-batches of `epoch` already consumed
            "rng": rng_state(),
            "best": self.best,
            "first_val_loss": self.first_val_loss,
            "elapsed": self.elapsed,
            "config": to_container(self.cfg),
            "luna_version": __version__,
            **self.task_state(),
        }

    @property
    def elapsed(self) -> float:
        return self.elapsed_before + (time.time() - self._t0)

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    # ---- the loop -------------------------------------------------------------------------------
    def fit(self) -> Dict[str, Any]:
        cfg, env = self.cfg, self.env
        self._t0 = time.time()
        if env.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            OmegaConf.save(cfg, self.out / "config.yaml", resolve=True)
            self.trackers = build_trackers(
                cfg.logger, self.out, name=self.out.name or "run", group=cfg.logger.wandb.group, config=to_container(cfg)
            )
            log.info(
                "training %s | data: %s | world %d (%s, %s), global batch %d (micro %d × accumulate %d) | "
                "%d steps/epoch, %d steps", self.describe(), self.data_info, env.world_size, env.mode, self.device,
                self.global_batch, self.micro_batch, self.accumulate, self.steps_per_epoch, self.total_steps,
            )
        try:
            with PreemptionWatch() as self.preemption:  # SLURM's warning signals: save at the next step
                result = self._loop()
        finally:
            if self.trackers is not None:
                self.trackers.close()
        return result

    def _loop(self) -> Dict[str, Any]:
        cfg, env, t = self.cfg, self.env, self.cfg.trainer
        audio_per_step = cfg.data.segment_seconds * self.global_batch  # audio-seconds per optimizer step
        sums: Dict[str, torch.Tensor] = {}
        n_sums = 0
        last_log_time, last_log_step = time.time(), self.step
        grad_norm = torch.zeros((), device=self.device)
        bar = tqdm(total=self.total_steps, initial=self.step, disable=not (env.is_main and t.progress),
                   desc="train", mininterval=1.0 if os.isatty(2) else 30.0, dynamic_ncols=True)
        stop = self.step >= self.total_steps
        while not stop and self.epoch < t.max_epochs:
            self.model.train()
            loader = self._loader(self.epoch, self.batch_pos)
            end = self.steps_per_epoch * self.accumulate
            for i, batch in enumerate(loader, start=self.batch_pos):
                if i >= end:
                    break
                micro = i % self.accumulate
                torch.manual_seed(step_seed(cfg.seed, self.step, env.rank, micro))
                audio = batch["audio"].to(self.device, non_blocking=True)
                lengths = batch["length"].to(self.device, non_blocking=True)
                self.failed_items += int(batch["failed"].sum())
                terms = self.train_micro_step(audio, lengths, no_sync=env.distributed and micro < self.accumulate - 1)
                for k, v in terms.items():
                    sums[k] = sums.get(k, 0) + v
                n_sums += 1
                self.batch_pos = i + 1
                if micro < self.accumulate - 1:
                    continue

                # ---- optimizer step (skipped if anything is non-finite on any rank) ----
                lr = self.lr_at(self.step)
                stepped, grad_norm = self.optimizer_step(lr, terms)
                if stepped:
                    self.bad_steps = 0
                else:
                    self.bad_steps += 1
                    log.warning("step %d: non-finite loss or gradient; step skipped (%d in a row)", self.step, self.bad_steps)
                    if self.trackers:
                        self.trackers.log_scalars({"train/skipped_step": 1.0}, self.step)
                    if self.bad_steps >= t.max_bad_steps:
                        raise TrainingError(
                            f"{self.bad_steps} non-finite steps in a row (trainer.max_bad_steps={t.max_bad_steps}); "
                            f"stopping. Last good checkpoint: {self.ckpt.last}. Lower optimizer.lr, use "
                            f"hardware.precision=fp32, or check the data."
                        )
                self.step += 1
                bar.update(1)

                if self.step % cfg.logger.log_every_steps == 0 and env.is_main:
                    now = time.time()
                    steps = self.step - last_log_step
                    scalars = {f"train/{k}": float(v) / n_sums for k, v in sums.items()}
                    scalars["train/lr"] = lr
                    scalars["train/grad_norm"] = float(grad_norm)
                    scalars["train/audio_seconds_per_second"] = audio_per_step * steps / max(now - last_log_time, 1e-9)
                    scalars["data/failed_items"] = float(self.failed_items)
                    self.log_health(scalars)
                    self.trackers.log_scalars(scalars, self.step)
                    bar.set_postfix(loss=f"{scalars['train/loss']:.3f}", x_rt=f"{scalars['train/audio_seconds_per_second']:.0f}")
                    last_log_time, last_log_step = now, self.step
                if self.step % cfg.logger.log_every_steps == 0:
                    sums, n_sums = {}, 0
                    self.check_ranks_in_sync()

                last_step = self.step >= self.total_steps  # validated (and saved) below, once
                if t.val_every_steps and self.step % t.val_every_steps == 0 and self.batch_pos < end and not last_step:
                    self._validate(log_media=False)
                preempted = self.preemption.requested(self.device)  # a SLURM signal reached some rank
                if preempted or (cfg.checkpoint.every_steps and self.step % cfg.checkpoint.every_steps == 0
                                 and self.batch_pos < end and not last_step):
                    self._save("last.pt")
                if preempted:  # this step is on disk; now submitit requeues the job (or SLURM ends it)
                    distributed.barrier()
                    self.preemption.deliver(preempted, self.step)
                timed_out = False
                if t.max_minutes > 0:  # rank 0's clock decides for every rank
                    timed_out = distributed.broadcast_flag((time.time() - self._t0) / 60 >= t.max_minutes, self.device)
                if self.step >= self.total_steps or timed_out:
                    stop = True
                    break
            if self.batch_pos >= end:  # epoch finished
                self.epoch += 1
                self.batch_pos = 0
                self._validate(log_media=True)
                self._save("last.pt")
                if cfg.checkpoint.every_epochs and self.epoch % cfg.checkpoint.every_epochs == 0 and self.env.is_main:
                    self.ckpt.save_epoch(self.state(), self.epoch)
            elif stop:  # stopped mid-epoch (max_steps or wall clock): keep the position
                self._validate(log_media=True)
                self._save("last.pt")
        bar.close()
        if self.failed_items and env.is_main:
            log.warning("skipped %d unreadable audio items during training (the files, with reasons: %s)", self.failed_items,
                        self.skipped_log)
        return self._metrics()

    # ---- validation, checkpoints, metrics -------------------------------------------------------
    @torch.no_grad()
    def _validate(self, log_media: bool) -> float:
        self.model.eval()
        totals = torch.zeros(3, device=self.device, dtype=torch.float64)  # loss·n, mel_l1·n, n
        first = None
        for batch in self._loader(0, 0, train=False):
            audio = batch["audio"].to(self.device)
            lengths = batch["length"].to(self.device)
            loss, mel_l1, out = self.validation_batch(audio, lengths)
            n = float(audio.shape[0])
            totals += torch.stack([loss.double() * n, mel_l1.double() * n, torch.tensor(n, device=self.device, dtype=torch.float64)])
            if first is None:
                first = out
        if self.env.distributed:
            torch.distributed.all_reduce(totals)
            self.check_ranks_in_sync()
        self.model.train()
        val_loss = float(totals[0] / totals[2].clamp(min=1))
        val_mel = float(totals[1] / totals[2].clamp(min=1))
        if self.first_val_loss is None:
            self.first_val_loss = val_loss
        improved = val_loss < self.best
        if improved:
            self.best = val_loss
        if self.env.is_main:
            log.info("step %d epoch %d: val loss %.4f, val mel L1 %.4f%s", self.step, self.epoch, val_loss, val_mel,
                     " (best)" if improved else "")
            self.last_val = {"val_loss": val_loss, "val_mel_l1": val_mel}
            scalars = {"val/loss": val_loss, "val/mel_l1": val_mel}
            self.trackers.log_scalars(scalars, self.step)
            if log_media and first is not None and self.cfg.logger.audio_samples > 0:
                self.log_media(first)
            self._write_metrics()
        if improved:
            self._save("best.pt")
        return val_loss

    @torch.no_grad()
    def check_ranks_in_sync(self) -> None:
        """All ranks must hold identical weights and codebooks; a per-tensor checksum is compared."""
        if not self.env.distributed:
            return
        state = self.model.state_dict()
        sums = torch.stack([v.double().sum() for v in state.values()]).to(self.device)
        gathered = [torch.empty_like(sums) for _ in range(self.env.world_size)]
        torch.distributed.all_gather(gathered, sums)
        for r, g in enumerate(gathered[1:], start=1):
            if not torch.equal(g, gathered[0]):
                name = list(state)[int((g != gathered[0]).nonzero()[0])]
                raise TrainingError(f"rank {r} diverged from rank 0 at step {self.step} (first differing tensor: {name})")
        self.sync_checks += 1

    def _save(self, name: str) -> None:
        if self.env.is_main:
            self.ckpt.save(self.state(), name)

    def lr_at(self, step: int) -> float:
        o = self.cfg.optimizer
        return lr_at(step, self.base_lr, self.total_steps, o.warmup_steps, o.scheduler, o.min_lr_ratio, o.gamma,
                     self.steps_per_epoch)

    def _metrics(self) -> Dict[str, Any]:
        return {
            "task": self.cfg.task,
            "best_val_loss": self.best,
            "first_val_loss": self.first_val_loss,
            **getattr(self, "last_val", {}),
            "step": self.step,
            "epoch": self.epoch,
            "elapsed_seconds": self.elapsed,
            **self.task_metrics(),
            "failed_items": self.failed_items,
            "world_size": self.env.world_size,
            "rank_sync_checks": self.sync_checks,
            "output_dir": str(self.out),
        }

    def _write_metrics(self) -> None:
        from luna.serialization import write_json

        write_json(self._metrics(), self.out / "metrics.json")
