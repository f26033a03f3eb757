"""``task=tokenizer``: a :class:`SpeechTokenizer` trained on masked mel reconstruction (:class:`luna.losses.MelLoss`)."""
from __future__ import annotations

import logging
from typing import Any, Dict, Tuple

import torch

from luna.losses import MelLoss
from luna.models.tokenizer import SpeechTokenizer, TokenizerOutput
from luna.distributed import DistEnv, wrap
from luna.training.health import CodebookMonitor
from luna.training.loggers import log_mel_pairs
from luna.training.schedule import adamw
from luna.training.compile import compile_nets

log = logging.getLogger("luna.tasks.tokenizer")


class TokenizerTask:
    def __init__(self, cfg: Any, env: DistEnv):
        self.cfg = cfg
        self.model = SpeechTokenizer.from_config(cfg).to(env.device)
        compile_nets(cfg, self.model.mel, self.model.encoder, self.model.decoder)
        self.net = wrap(self.model, env)
        self.optimizer = adamw(self.model.parameters(), cfg.optimizer, cfg.optimizer.lr * cfg.hardware.lr_scale)
        self.objective = MelLoss(cfg.loss, self.model.config.mel.hop_length)
        self.monitor = CodebookMonitor(cfg)
        self.sample_rate = self.model.sample_rate

    def losses(self, audio: torch.Tensor, lengths: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        return self.objective(self.net(audio, lengths), lengths)

    def validation(self, audio: torch.Tensor, lengths: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, TokenizerOutput]:
        out = self.model(audio, lengths)
        loss, terms = self.objective(out, lengths)
        return loss, terms["mel_l1"], out

    def media(self, trackers: Any, out: TokenizerOutput, step: int) -> None:
        n = min(self.cfg.logger.audio_samples, out.mel.shape[0])
        log_mel_pairs(trackers, [(out.mel[j], out.mel_hat[j]) for j in range(n)], step)
        for j in range(n):
            try:
                audio = self.model.vocode(out.mel_hat[j : j + 1].float())[0].cpu().numpy()
            except Exception as e:  # noqa: BLE001 - a missing vocoder must not stop training
                log.warning("no audio sample logged (vocoder unavailable: %s)", e)
                return
            trackers.log_audio(f"val/reconstruction_{j}", audio, self.sample_rate, step)

    def health(self, scalars: Dict[str, float], step: int, trackers: Any) -> None:
        """Codebook usage, perplexity, replacements per quantizer; an alarm line when one has collapsed."""
        for line in self.monitor.observe(step, self.model.quantizer.stats(), scalars):
            trackers.log_text("codebook/alarm", line, step)

    def state_dict(self) -> Dict[str, Any]:
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        pass

    def describe(self) -> str:
        m = self.model
        return (f"{self.cfg.model.name}: {sum(p.numel() for p in m.parameters()) / 1e6:.1f}M parameters, "
                f"{m.sample_rate} Hz, {m.frame_rate:.2f} tokens/s, {m.num_quantizers}×{m.codebook_size} codes = "
                f"{m.bitrate:.0f} bps")

    def metrics(self) -> Dict[str, Any]:
        m = self.model
        return {"codebooks": m.quantizer.stats(), "tokens_per_second": m.frame_rate, "bitrate_bps": m.bitrate}
