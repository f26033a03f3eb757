"""``task=vocoder``: HiFi-GAN training, the generator here and its :class:`~luna.training.adversary.Adversary`.

Objective as in HiFi-GAN: LSGAN + feature matching ×2 + mel L1 ×45; AdamW (the experiment preset: lr 2e-4,
betas 0.8/0.99) with exponential decay per epoch, for both networks (the learning rate is the same pure
function of the step as for the tokenizer, so resuming needs no scheduler state); checkpoints add the
discriminators and their optimizer. ``trainer.accumulate`` works as for the tokenizer (see the adversary).

Two keys say what is trained: ``vocoder.init`` where the generator starts (null: random, ``universal``: the
UNIVERSAL_V1 weights installed with luna, or a generator file), and ``vocoder.tokenizer_checkpoint`` the
frozen tokenizer (eval mode) whose decoded mels the generator learns to turn into the real audio of the
same crop (null: ground-truth mels). ``experiment=vocoder_finetune`` sets both: the HiFi-GAN fine-tuning
recipe for a front end whose mels are smoother than real ones. Both are loaded and checked against
``vocoder.mel`` when the task is built, before the data is prepared. The discriminators always start fresh.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from luna.config import ConfigError, mel_config, mel_mismatches
from luna.features import MelSpectrogram
from luna.models.tokenizer import CheckpointError, SpeechTokenizer
from luna.models.hifigan import HiFiGANGenerator, hifigan_generator_config
from luna.models.hifigan_official import generator_for_training
from luna.training.adversary import Adversary
from luna.distributed import DistEnv, wrap
from luna.training.loggers import log_mel_pairs
from luna.training.schedule import adamw
from luna.training.compile import compile_nets

MEL_WEIGHT = 45.0


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


class VocoderTask:
    def __init__(self, cfg: Any, env: DistEnv):
        if cfg.hardware.precision == "fp16":
            raise ConfigError("hardware.precision: task=vocoder supports fp32 and bf16 (fp16 GAN training is unstable)")
        self.cfg, v = cfg, cfg.vocoder
        self.mel_cfg = mel_config(v.mel)
        self.sample_rate = self.mel_cfg.sample_rate
        self.generator_config = hifigan_generator_config(v.architecture, v.generator, self.mel_cfg.hop_length)
        # what the generator starts from and the tokenizer it learns from are loaded and checked first
        initial: Optional[HiFiGANGenerator] = None
        if v.init:
            initial = generator_for_training(v.init, self.generator_config, self.mel_cfg.n_mels, self.mel_cfg)
        self.tokenizer: Optional[SpeechTokenizer] = None
        if v.tokenizer_checkpoint:
            self.tokenizer = load_frozen_tokenizer(v.tokenizer_checkpoint, self.mel_cfg).to(env.device)
        self.mel_fn = MelSpectrogram(self.mel_cfg).to(env.device)
        # built fresh first (same random stream with or without init), then given the initial weights
        self.model = HiFiGANGenerator(self.generator_config, num_mels=self.mel_cfg.n_mels)
        if initial is not None:
            self.model.load_state_dict(initial.state_dict())
        self.model.to(env.device)
        self.net = wrap(self.model, env)
        self.optimizer = adamw(self.model.parameters(), cfg.optimizer, cfg.optimizer.lr * cfg.hardware.lr_scale)
        self.adversary = Adversary(cfg, env, self.optimizer)
        compile_nets(cfg, self.model, self.adversary.mpd, self.adversary.msd)

    @torch.no_grad()
    def _inputs(self, audio: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(target audio ``[B, 1, T·hop]``, target mel, generator input mel) for a batch ``[B, S]``."""
        mel = self.mel_fn(audio)  # [B, M, T], T = S // hop
        y = audio[:, : mel.shape[-1] * self.mel_cfg.hop_length].unsqueeze(1)
        if self.tokenizer is None:
            return y, mel, mel
        # = tokenizer.decode_mel(tokenizer.tokenize(audio)) on the crop (all quantizers, eval mode), in one pass
        return y, mel, self.tokenizer.forward_mel(mel).mel_hat.float()

    def losses(self, audio: torch.Tensor, lengths: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        y, mel, mel_in = self._inputs(audio)
        y_hat = self.net(mel_in).float()  # [B, 1, T·hop]
        loss_d = self.adversary.accumulate(y, y_hat)
        adv, fm = self.adversary.generator_terms(y, y_hat)
        mel_l1 = F.l1_loss(self.mel_fn(y_hat.squeeze(1)), mel)
        loss = adv + fm + MEL_WEIGHT * mel_l1
        return loss, {"mel_l1": mel_l1.detach(), "adversarial": adv.detach(), "feature_matching": fm.detach(),
                      "discriminator": loss_d}

    def validation(self, audio: torch.Tensor, lengths: torch.Tensor):
        y, mel, mel_in = self._inputs(audio)
        y_hat = self.model(mel_in).float()
        mel_hat = self.mel_fn(y_hat.squeeze(1))
        mel_l1 = F.l1_loss(mel_hat, mel)
        return mel_l1, mel_l1, (mel, mel_hat, y_hat)

    def media(self, trackers: Any, out: Any, step: int) -> None:
        mel, mel_hat, y_hat = out
        n = min(self.cfg.logger.audio_samples, mel.shape[0])
        log_mel_pairs(trackers, [(mel[j], mel_hat[j]) for j in range(n)], step)
        for j in range(n):
            trackers.log_audio(f"val/vocoded_{j}", y_hat[j, 0].cpu().numpy(), self.sample_rate, step)

    def health(self, scalars: Dict[str, float], step: int, trackers: Any) -> None:
        pass  # GAN balance is visible in train/adversarial vs train/discriminator

    def state_dict(self) -> Dict[str, Any]:
        return {**self.adversary.state_dict(), "generator_config": self.generator_config}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.adversary.load_state_dict(state)

    def describe(self) -> str:
        g = sum(p.numel() for p in self.model.parameters()) / 1e6
        d = self.adversary.parameter_count() / 1e6
        v = self.cfg.vocoder
        src = f"decoded mels of the frozen tokenizer {v.tokenizer_checkpoint}" if self.tokenizer else "ground-truth mels"
        start = {None: "random weights", "universal": "the UNIVERSAL_V1 weights"}.get(v.init, v.init)
        return (f"HiFi-GAN {v.architecture} vocoder ({g:.2f}M generator from {start}, {d:.2f}M discriminator "
                f"parameters (fresh), {self.sample_rate} Hz, hop {self.mel_cfg.hop_length}) on {src}")

    def metrics(self) -> Dict[str, Any]:
        return {
            "sample_rate": self.sample_rate,
            "hop_length": self.mel_cfg.hop_length,
            "architecture": self.cfg.vocoder.architecture,
            "generator_parameters": sum(p.numel() for p in self.model.parameters()),
            "upsample_rates": list(self.generator_config["upsample_rates"]),
            "init": self.cfg.vocoder.init,
            "tokenizer_checkpoint": self.cfg.vocoder.tokenizer_checkpoint,
        }
