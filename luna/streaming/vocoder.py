"""Streaming vocoding with a non-causal HiFi-GAN: stateful layers, a fixed lookahead, no recomputation.

The generator is non-causal: an output sample reads mel frames on both sides (at most
:func:`receptive_frames` each way: 14 frames for V1). The stream runs the generator as stateful layers
(luna/streaming/stateful.py): every convolution keeps the input frames it still needs, a 'same' conv gets its
zero padding at the real ends only, a transposed conv keeps its overlap, so each push computes only the
samples that became final and each sample reads exactly the frames it reads in a whole-clip forward: chunked
audio equals whole-clip audio to float rounding (tests/streaming/test_vocoder.py). The output lags the input
by ``delay`` samples, fixed by the architecture (V1 at hop 256: 3260 samples = 12.7 frames = 147.8 ms).
Griffin-Lim iterates over the whole spectrogram: it cannot stream (ConfigError).
"""
from __future__ import annotations

import math
from typing import Any, List, Mapping, Optional

import torch
import torch.nn.functional as F

from luna.errors import ConfigError
from luna.models.hifigan import LRELU_SLOPE
from luna.streaming.stateful import Chain, Mean, Pointwise, Residual, conv


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


def stream_generator(g: Any) -> Chain:
    """A :class:`luna.models.hifigan.HiFiGANGenerator` as stateful stream layers (the same ops in the same order)."""
    def lrelu(slope: float) -> Pointwise:
        return Pointwise(lambda x: F.leaky_relu(x, slope))

    def resblock(block: Any) -> Chain:
        if hasattr(block, "convs1"):  # ResBlock1: x = c2(lrelu(c1(lrelu(x)))) + x, three times
            return Chain([Residual(Chain([lrelu(LRELU_SLOPE), conv(c1), lrelu(LRELU_SLOPE), conv(c2)]))
                          for c1, c2 in zip(block.convs1, block.convs2)])
        return Chain([Residual(Chain([lrelu(LRELU_SLOPE), conv(c)])) for c in block.convs])  # ResBlock2

    layers: List[Any] = [conv(g.conv_pre)]
    k = g.num_kernels
    for i, up in enumerate(g.ups):
        layers += [lrelu(LRELU_SLOPE), conv(up), Mean([resblock(b) for b in g.resblocks[i * k : (i + 1) * k]])]
    return Chain([*layers, lrelu(0.01), conv(g.conv_post), Pointwise(torch.tanh)])


class StreamingVocoder:
    """``push(log_mel [1, M, t]) → audio [1, samples]`` (the samples that became final), ``flush() → the rest``;
    then ready for a new stream. ``delay``: samples the output lags the input (``latency_ms`` as time);
    ``lookahead``: the same in whole mel frames (rounded up)."""

    def __init__(self, vocoder: Any, lookahead: Optional[int] = None):
        generator = getattr(vocoder, "generator", None)
        if generator is None or not hasattr(generator, "h"):
            kind = getattr(vocoder, "kind", "") or type(vocoder).__name__
            raise ConfigError(f"vocoder.kind: {kind} cannot stream (Griffin-Lim iterates over the whole spectrogram); "
                              f"use vocoder=hifigan_universal or a luna-trained vocoder=hifigan")
        self.vocoder, self.generator = vocoder, generator
        self.hop = int(vocoder.hop_length)
        self.layers = stream_generator(generator)
        n = 4 * receptive_frames(generator.h)  # past the lag's transient: output = n · hop - delay
        self.delay = n * self.hop - self.layers.produced(n)
        self.lookahead = math.ceil(self.delay / self.hop)
        if lookahead is not None and int(lookahead) < self.lookahead:
            raise ValueError(f"lookahead: the stateful streaming HiFi-GAN is exact and needs {self.lookahead} mel "
                             f"frames ({self.latency_ms:.1f} ms); a shorter lookahead is not supported")
        self.reset()

    @property
    def latency_ms(self) -> float:
        """The algorithmic latency: how long after a frame's last sample its audio is final."""
        return 1000.0 * self.delay / self.vocoder.sample_rate

    def reset(self) -> None:
        self.layers.reset()

    def push(self, mel: torch.Tensor) -> torch.Tensor:
        """log-mel ``[1, M, t]`` (t ≥ 0) → the audio ``[1, samples]`` that no later frame can change."""
        return self._step(mel, last=False)

    def flush(self) -> torch.Tensor:
        """The rest of the audio (the clip's right zero padding applied); then ready for a new stream."""
        return self._step(None, last=True)

    @torch.no_grad()
    def _step(self, mel: Optional[torch.Tensor], last: bool) -> torch.Tensor:
        w = self.generator.conv_pre.weight  # the stream follows the vocoder's device and dtype
        mel = w.new_zeros(1, self.generator.num_mels, 0) if mel is None else mel
        self.vocoder._check_input(mel)
        if mel.shape[-1] == 0 and not last:
            return w.new_zeros(1, 0)
        audio = self.layers.step(mel.to(device=w.device, dtype=w.dtype), last)[:, 0]  # [1, samples]
        if last:
            self.reset()
        return audio
