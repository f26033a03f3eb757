"""Streaming vocoding with a non-causal HiFi-GAN: bounded context, a right lookahead, output the middle.

The generator is non-causal: an output sample of mel frame f reads frames f - r .. f + r, where r (the
receptive field, :func:`receptive_frames`, 14 frames for V1 = 163 ms at 22.05 kHz) follows from its
architecture. The stream keeps ``context`` past frames, waits for ``lookahead`` future ones, runs the
generator's public forward on that window and returns the samples of the frames in the middle. With both
≥ r every output sample reads exactly the frames it reads in a whole-clip forward (zero padding only at the
real ends), so chunked audio equals whole-clip audio to float rounding (tests/streaming/test_vocoder.py).
A smaller lookahead trades exactness for latency. Griffin-Lim iterates over the whole spectrogram: it
cannot stream (ConfigError).
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Optional

import torch

from luna.errors import ConfigError


def receptive_frames(h: Mapping[str, Any]) -> int:
    """Mel frames an output sample reads on each side, for a HiFi-GAN architecture ``h`` (conservative)."""
    r, rate = 3.0, 1  # conv_pre k7
    for u, k in zip(h["upsample_rates"], h["upsample_kernel_sizes"]):
        pad = (k - u) // 2  # ConvTranspose1d(k, u, padding=(k - u) / 2)
        r += max(k - 1 - pad, pad) / u / rate
        rate *= u
        per_kernel = []
        for ks, ds in zip(h["resblock_kernel_sizes"], h["resblock_dilation_sizes"]):
            half = (ks - 1) // 2
            per_kernel.append(sum(half * d for d in ds[:3]) + 3 * half if str(h["resblock"]) == "1"
                              else sum(half * d for d in ds[:2]))
        r += max(per_kernel) / rate  # the MRF kernels run in parallel
    return math.ceil(r + 3 / rate)  # conv_post k7


class StreamingVocoder:
    """``push(log_mel [1, M, t]) → audio [1, t' · hop]``, ``flush() → the rest``; then ready for a new stream."""

    def __init__(self, vocoder: Any, lookahead: Optional[int] = None, context: Optional[int] = None):
        generator = getattr(vocoder, "generator", None)
        if generator is None or not hasattr(generator, "h"):
            kind = getattr(vocoder, "kind", "") or type(vocoder).__name__
            raise ConfigError(f"vocoder.kind: {kind} cannot stream (Griffin-Lim iterates over the whole spectrogram); "
                              f"use vocoder=hifigan_universal or a luna-trained vocoder=hifigan")
        self.vocoder = vocoder
        r = receptive_frames(generator.h)
        self.lookahead = r if lookahead is None else int(lookahead)
        self.context = r if context is None else int(context)
        self.hop = int(vocoder.hop_length)
        self.reset()

    @property
    def latency_ms(self) -> float:
        """The lookahead as time: frames the stream waits for before it can vocode a frame."""
        return 1000.0 * self.lookahead * self.hop / self.vocoder.sample_rate

    def reset(self) -> None:
        self.mel: Optional[torch.Tensor] = None  # [1, M, frames kept], first = absolute index of frame 0
        self.first = 0
        self.total = 0  # frames received
        self.done = 0  # frames vocoded

    def push(self, mel: torch.Tensor) -> torch.Tensor:
        self.mel = mel if self.mel is None else torch.cat([self.mel, mel], dim=-1)
        self.total += mel.shape[-1]
        return self._emit(self.total - self.lookahead)

    def flush(self) -> torch.Tensor:
        out = self._emit(self.total)
        self.reset()
        return out

    @torch.no_grad()
    def _emit(self, upto: int) -> torch.Tensor:
        if upto <= self.done:
            device = self.mel.device if self.mel is not None else torch.device("cpu")
            return torch.zeros(1, 0, device=device)
        lo = max(0, self.done - self.context)
        audio = self.vocoder(self.mel[..., lo - self.first :])  # [1, (total - lo) · hop]
        out = audio[:, (self.done - lo) * self.hop : (upto - lo) * self.hop]
        self.done = upto
        keep = max(0, self.done - self.context)
        self.mel = self.mel[..., keep - self.first :]
        self.first = keep
        return out
