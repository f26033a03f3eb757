"""``task=vocoder``: HiFi-GAN training (generator + multi-period and multi-scale discriminators) in the same loop.

Objective as in HiFi-GAN: LSGAN + feature matching ×2 + mel L1 ×45; AdamW (the experiment preset: lr 2e-4,
betas 0.8/0.99) with exponential decay per epoch, for both networks. The learning rate of both is the same
pure function of the step as in the tokenizer trainer, so resuming needs no scheduler state; checkpoints
add the discriminators and their optimizer.

Two keys say what is trained: ``vocoder.init`` where the generator starts (null: random, ``universal``: the
UNIVERSAL_V1 weights installed with luna, or a generator file), and ``vocoder.tokenizer_checkpoint`` the
frozen tokenizer (eval mode) whose decoded mels the generator learns to turn into the real audio of the
same crop (null: ground-truth mels). ``experiment=vocoder_finetune`` sets both: the HiFi-GAN fine-tuning
recipe for a front end whose mels are smoother than real ones. Both are loaded and checked against
``vocoder.mel`` before the data is prepared. The discriminators always start fresh.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from luna.config import ConfigError
from luna.features import MelSpectrogram, mel_config, mel_mismatches
from luna.models.hifigan import HiFiGANGenerator, hifigan_generator_config
from luna.models.hifigan_official import generator_for_training
from luna.models.tokenizer import CheckpointError, SpeechTokenizer
from luna.training.discriminators import MultiPeriodDiscriminator, MultiScaleDiscriminator
from luna.training.gan_losses import discriminator_loss, feature_loss, generator_loss
from luna.training import distributed
from luna.training.trainer import Trainer, mel_figure

MEL_WEIGHT = 45.0
MPD_CHANNELS = (32, 128, 512, 1024, 1024)
MSD_CHANNELS = (128, 128, 256, 512, 1024, 1024, 1024)


def _scaled(channels, width: float):
    return tuple(max(4, int(round(c * width / 4)) * 4) for c in channels)


def load_frozen_tokenizer(path: str, mel: Any) -> SpeechTokenizer:
    """The tokenizer of ``vocoder.tokenizer_checkpoint`` on CPU, eval mode, no gradients; its mel must be ``mel``."""
    try:
        tokenizer = SpeechTokenizer.from_checkpoint(path, map_location="cpu")
    except CheckpointError as e:
        raise ConfigError(f"vocoder.tokenizer_checkpoint: {e}") from None
    diffs = mel_mismatches(tokenizer.config.mel, mel)
    if diffs:
        fields = "; ".join(f"{name}: tokenizer {a!r} vs vocoder.mel {b!r}" for name, a, b in diffs)
        raise ConfigError(
            f"vocoder.tokenizer_checkpoint: {path} works on another mel convention than vocoder.mel (which follows "
            f"model.mel: pass the tokenizer's model preset, e.g. model=rvq8): {fields}"
        )
    tokenizer.eval()
    for p in tokenizer.parameters():
        p.requires_grad_(False)
    return tokenizer


class VocoderTrainer(Trainer):
    def __init__(self, cfg, env) -> None:
        # what the generator starts from and the tokenizer it learns from are loaded and checked first: a bad
        # combination fails before the data is prepared (which may mean a download)
        if cfg.trainer.accumulate != 1:
            raise ConfigError("trainer.accumulate: task=vocoder takes one optimizer step per batch (use 1)")
        if cfg.hardware.precision == "fp16":
            raise ConfigError("hardware.precision: task=vocoder supports fp32 and bf16 (fp16 GAN training is unstable)")
        v = cfg.vocoder
        self.mel_cfg = mel_config(v.mel)
        self.generator_config = hifigan_generator_config(v.architecture, v.generator, self.mel_cfg.hop_length)
        self._initial: Optional[HiFiGANGenerator] = None
        if v.init:
            self._initial = generator_for_training(v.init, self.generator_config, self.mel_cfg.n_mels, self.mel_cfg)
        self.tokenizer: Optional[SpeechTokenizer] = None
        if v.tokenizer_checkpoint:
            self.tokenizer = load_frozen_tokenizer(v.tokenizer_checkpoint, self.mel_cfg)
        super().__init__(cfg, env)

    def build_models(self) -> None:
        cfg, v = self.cfg, self.cfg.vocoder
        self.mel_fn = MelSpectrogram(self.mel_cfg).to(self.device)
        # built fresh first (same random stream with or without init), then given the initial weights
        self.model = HiFiGANGenerator(self.generator_config, num_mels=self.mel_cfg.n_mels)
        if self._initial is not None:
            self.model.load_state_dict(self._initial.state_dict())
            self._initial = None
        self.model.to(self.device)
        width = float(v.discriminator_width)
        self.mpd = MultiPeriodDiscriminator(channels=_scaled(MPD_CHANNELS, width)).to(self.device)
        self.msd = MultiScaleDiscriminator(channels=_scaled(MSD_CHANNELS, width)).to(self.device)
        if self.tokenizer is not None:
            self.tokenizer.to(self.device)
        self.mpd_ddp, self.msd_ddp = self.wrap(self.mpd), self.wrap(self.msd)
        # the discriminators' optimizer; the generator's is `self.optimizer` (built by the base class)
        base_lr = cfg.optimizer.lr * cfg.hardware.lr_scale
        self.optimizer_d = self.adamw(list(self.mpd.parameters()) + list(self.msd.parameters()), lr=base_lr)

    @property
    def sample_rate(self) -> int:
        return self.mel_cfg.sample_rate

    @torch.no_grad()
    def _inputs(self, audio: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(target audio ``[B, 1, T·hop]``, target mel, generator input mel) for a batch ``[B, S]``."""
        mel = self.mel_fn(audio)  # [B, M, T], T = S // hop
        y = audio[:, : mel.shape[-1] * self.mel_cfg.hop_length].unsqueeze(1)
        if self.tokenizer is None:
            return y, mel, mel
        # = tokenizer.decode_mel(tokenizer.tokenize(audio)) on the crop (all quantizers, eval mode), in one pass
        return y, mel, self.tokenizer.forward_mel(mel).mel_hat.float()

    def _all_finite(self, *tensors: torch.Tensor) -> bool:
        ok = torch.stack([torch.isfinite(t).all() for t in tensors]).all().float()
        return bool(distributed.all_reduce_mean(ok) == 1.0)

    def train_micro_step(self, audio, lengths, no_sync):
        y, mel, mel_in = self._inputs(audio)
        with self._autocast():
            y_hat = self.ddp(mel_in)  # [B, 1, T·hop]
        y_hat = y_hat.float()

        # discriminators: real vs detached fake
        lr = self.lr_at(self.step)
        with self._autocast():
            p_r, p_g, _, _ = self.mpd_ddp(y, y_hat.detach())
            s_r, s_g, _, _ = self.msd_ddp(y, y_hat.detach())
        loss_d = discriminator_loss(p_r, p_g)[0] + discriminator_loss(s_r, s_g)[0]
        self.optimizer_d.zero_grad(set_to_none=True)
        loss_d.float().backward()
        d_params = [p for g in self.optimizer_d.param_groups for p in g["params"]]
        clip = self.cfg.trainer.grad_clip
        d_norm = torch.nn.utils.clip_grad_norm_(d_params, clip if clip > 0 else float("inf"))
        for g in self.optimizer_d.param_groups:
            g["lr"] = lr
        if self._all_finite(loss_d, d_norm):  # else: skipped like a generator step (counted there)
            self.optimizer_d.step()
        self.optimizer_d.zero_grad(set_to_none=True)

        # generator: adversarial + feature matching ×2 + mel L1 ×45
        mel_hat = self.mel_fn(y_hat.squeeze(1))
        mel_l1 = F.l1_loss(mel_hat, mel)
        with self._autocast():
            p_r, p_g, pf_r, pf_g = self.mpd_ddp(y, y_hat)
            s_r, s_g, sf_r, sf_g = self.msd_ddp(y, y_hat)
        adv = generator_loss(p_g)[0] + generator_loss(s_g)[0]
        fm = feature_loss(pf_r, pf_g) + feature_loss(sf_r, sf_g)  # includes the ×2
        loss_g = adv.float() + fm.float() + MEL_WEIGHT * mel_l1
        loss_g.backward()
        return {"loss": loss_g.detach(), "mel_l1": mel_l1.detach(), "adversarial": adv.detach().float(),
                "feature_matching": fm.detach().float(), "discriminator": loss_d.detach().float()}

    @torch.no_grad()
    def validation_batch(self, audio, lengths):
        y, mel, mel_in = self._inputs(audio)
        with self._autocast():
            y_hat = self.model(mel_in).float()
        mel_hat = self.mel_fn(y_hat.squeeze(1))
        mel_l1 = F.l1_loss(mel_hat, mel)
        return mel_l1, mel_l1, (mel, mel_hat, y_hat)

    def log_media(self, out) -> None:
        import matplotlib.pyplot as plt

        mel, mel_hat, y_hat = out
        for j in range(min(self.cfg.logger.audio_samples, mel.shape[0])):
            fig = mel_figure(mel[j], mel_hat[j])
            self.trackers.log_figure(f"val/mel_{j}", fig, self.step)
            plt.close(fig)
            self.trackers.log_audio(f"val/vocoded_{j}", y_hat[j, 0].cpu().numpy(), self.sample_rate, self.step)

    def log_health(self, scalars: Dict[str, float]) -> None:
        pass  # GAN balance is visible in train/adversarial vs train/discriminator

    def describe(self) -> str:
        g = sum(p.numel() for p in self.model.parameters()) / 1e6
        d = sum(p.numel() for m in (self.mpd, self.msd) for p in m.parameters()) / 1e6
        v = self.cfg.vocoder
        src = f"decoded mels of the frozen tokenizer {v.tokenizer_checkpoint}" if self.tokenizer else "ground-truth mels"
        start = {None: "random weights", "universal": "the UNIVERSAL_V1 weights"}.get(v.init, v.init)
        return (f"HiFi-GAN {v.architecture} vocoder ({g:.2f}M generator from {start}, {d:.2f}M discriminator "
                f"parameters (fresh), {self.sample_rate} Hz, hop {self.mel_cfg.hop_length}) on {src}")

    def task_state(self) -> Dict[str, Any]:
        return {
            "discriminators": {"mpd": self.mpd.state_dict(), "msd": self.msd.state_dict()},
            "optimizer_d": self.optimizer_d.state_dict(),
            "generator_config": self.generator_config,
        }

    def load_task_state(self, state: Dict[str, Any]) -> None:
        self.mpd.load_state_dict(state["discriminators"]["mpd"])
        self.msd.load_state_dict(state["discriminators"]["msd"])
        self.optimizer_d.load_state_dict(state["optimizer_d"])

    def task_metrics(self) -> Dict[str, Any]:
        return {
            "sample_rate": self.sample_rate,
            "hop_length": self.mel_cfg.hop_length,
            "architecture": self.cfg.vocoder.architecture,
            "generator_parameters": sum(p.numel() for p in self.model.parameters()),
            "upsample_rates": list(self.generator_config["upsample_rates"]),
            "init": self.cfg.vocoder.init,
            "tokenizer_checkpoint": self.cfg.vocoder.tokenizer_checkpoint,
        }
