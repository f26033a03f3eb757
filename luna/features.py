"""The log-mel front end: one :class:`~luna.config.MelConfig` describes it for tokenizer and vocoder alike."""
from __future__ import annotations

from typing import Any

import torch
import torchaudio

from luna.config import MelConfig, mel_config, mel_mismatches  # noqa: F401 - the mel helpers, re-exported here


class MelSpectrogram(torch.nn.Module):
    """Audio ``[B, S]`` → log-mel ``[B, n_mels, S // hop]`` (HiFi-GAN framing: pad (n_fft-hop)/2, center=False).

    The STFT runs in fp32 even under autocast; frames = floor(S / hop) for any S. ``causal``: n_fft - hop zeros
    on the left only, so frame t depends only on samples < (t+1)·hop (frames incrementally, see luna/streaming).
    """

    def __init__(self, mel: Any, causal: bool = False):
        super().__init__()
        self.config = mel_config(mel)
        c = self.config
        self.causal = bool(causal)
        self.pad = (c.n_fft - c.hop_length) // 2
        self.spec = torchaudio.transforms.MelSpectrogram(
            sample_rate=c.sample_rate,
            n_fft=c.n_fft,
            win_length=c.win_length,
            hop_length=c.hop_length,
            f_min=c.f_min,
            f_max=c.f_max,
            n_mels=c.n_mels,
            power=c.power,
            center=False,
            norm="slaney" if c.mel_scale == "slaney" else None,
            mel_scale=c.mel_scale,
        )

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        squeeze = audio.dim() == 1
        x = audio.reshape(1, -1) if squeeze else audio.reshape(audio.shape[0], -1)
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = x.float()
            if self.causal:
                x = torch.nn.functional.pad(x, (self.config.n_fft - self.config.hop_length, 0))
            else:
                mode = self.config.padding
                if mode == "reflect" and x.shape[-1] <= self.pad:
                    mode = "constant"  # reflect needs more samples than the pad; tiny clips get zeros
                x = torch.nn.functional.pad(x.unsqueeze(1), (self.pad, self.pad), mode=mode).squeeze(1)
            if x.shape[-1] < self.config.n_fft:  # shorter than one window: no frame
                return x.new_zeros(x.shape[0], self.config.n_mels, 0)
            m = self.frames(x)
        return m[0] if squeeze else m

    def frames(self, padded: torch.Tensor) -> torch.Tensor:
        """Already padded fp32 audio ``[B, L]`` (L ≥ n_fft) → log-mel ``[B, n_mels, (L - n_fft) // hop + 1]``."""
        m = self.spec(padded)
        m = torch.clamp(m, min=self.config.log_floor)
        return torch.log(m) if self.config.log == "ln" else torch.log10(m)

    def num_frames(self, num_samples: int) -> int:
        return num_samples // self.config.hop_length
