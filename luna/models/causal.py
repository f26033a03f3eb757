"""Causal encoder and decoder (``model.causal=true``): the streamable twins of :mod:`luna.models.codec`.

Every layer is a *valid* convolution (no padding): a layer with kernel k and dilation d shortens its input
by (k-1)·d frames on the left. ``forward`` pads the input on the left by the whole receptive field
(``context``) and runs the valid chain, so output frame t depends only on inputs ≤ t; ``valid`` is the chain
alone, which luna/streaming runs on windows of ``context`` past frames + new frames. Normalisation is a
LayerNorm over channels of each frame (GroupNorm over time would read the future).

Alignment: token j covers mel frames [j·s, (j+1)·s) and depends on frames < (j+1)·s only; decoded frame f
depends on tokens ≤ f // s only.

Shapes: encoder ``[B, n_mels, T] → [B, D, ceil(T / s)]``; decoder ``[B, D, T'] → [B, n_mels, T' · s]``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class ChannelNorm(nn.Module):
    """LayerNorm over the channels of each frame: ``[B, C, T] → [B, C, T]``, no frame reads another."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.transpose(1, 2)).transpose(1, 2)


class CausalResBlock(nn.Module):
    """Pre-norm residual block, valid conv: ``[B, C, T] → [B, C, T - 2·dilation]``."""

    def __init__(self, channels: int, dilation: int):
        super().__init__()
        self.context = 2 * dilation
        self.block = nn.Sequential(
            ChannelNorm(channels),
            nn.GELU(),
            nn.Conv1d(channels, channels, 3, dilation=dilation),
            ChannelNorm(channels),
            nn.GELU(),
            nn.Conv1d(channels, channels, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[..., self.context :] + self.block(x)


def _stack(channels: int, n: int) -> nn.Sequential:
    return nn.Sequential(*(CausalResBlock(channels, 3**i) for i in range(n)))  # dilations 1, 3, 9, ...; context 3^n - 1


class CausalEncoder(nn.Module):
    """conv k7 → res blocks (frame rate) → down conv k=2s stride s → res blocks (token rate) → norm, GELU, conv k1."""

    def __init__(self, n_mels: int, hidden: int, dim: int, stride: int, res_blocks: int, pad_value: float = -1.0):
        super().__init__()
        self.stride = stride
        self.pad_value = pad_value  # the normalised log-mel of silence (log_floor → -1)
        self.conv_in = nn.Conv1d(n_mels, hidden, 7)
        self.pre = _stack(hidden, res_blocks)
        self.down = nn.Conv1d(hidden, hidden, 2 * stride, stride=stride) if stride > 1 else nn.Identity()
        self.post = _stack(hidden, res_blocks)
        self.out = nn.Sequential(ChannelNorm(hidden), nn.GELU(), nn.Conv1d(hidden, dim, 1))
        c = 3**res_blocks - 1
        #: past mel frames one token needs besides its own s frames (receptive field - s)
        self.context = 6 + c + (stride if stride > 1 else 0) + c * stride

    def valid(self, mel: torch.Tensor) -> torch.Tensor:
        """``[B, M, context + L·s] → [B, D, L]``: token i reads window frames [i·s, context + (i+1)·s)."""
        x = self.pre(self.conv_in(mel))  # [B, H, (c + 1)·s + L·s] (s > 1)
        return self.out(self.post(self.down(x)))  # down: [B, H, c + L]; post: [B, H, L]

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        extra = (-mel.shape[-1]) % self.stride  # a partial last token: repeat its last frame
        if extra:
            mel = F.pad(mel, (0, extra), mode="replicate")
        return self.valid(F.pad(mel, (self.context, 0), value=self.pad_value))


class CausalDecoder(nn.Module):
    """conv k3 → res blocks (token rate) → transposed conv k=2s stride s → res blocks (frame rate) → norm, GELU, conv k7.

    The transposed conv keeps only output frames that both of their input tokens reach, so frame f of token
    j = f // s reads tokens j - 1 and j (never j + 1).
    """

    def __init__(self, n_mels: int, hidden: int, dim: int, stride: int, res_blocks: int):
        super().__init__()
        self.stride = stride
        self.conv_in = nn.Conv1d(dim, hidden, 3)
        self.pre = _stack(hidden, res_blocks)
        self.up = nn.ConvTranspose1d(hidden, hidden, 2 * stride, stride=stride) if stride > 1 else nn.Identity()
        self.post = _stack(hidden, res_blocks)
        self.out = nn.Sequential(ChannelNorm(hidden), nn.GELU(), nn.Conv1d(hidden, n_mels, 7))
        c = 3**res_blocks - 1
        frames = c + 6  # past frames the frame-rate layers read
        tokens_up = math.ceil(frames / stride)  # as tokens into the upsampler
        self.crop = tokens_up * stride - frames  # frames the upsampler makes beyond that
        #: past tokens one token needs besides itself
        self.context = 2 + c + (1 if stride > 1 else 0) + tokens_up

    def valid(self, z: torch.Tensor) -> torch.Tensor:
        """``[B, D, context + L] → [B, n_mels, L·s]``."""
        x = self.pre(self.conv_in(z))  # [B, H, (1) + tokens_up + L]
        if self.stride > 1:
            s = self.stride
            x = self.up(x)[..., s:-s]  # n tokens → (n + 1)·s frames; keep the (n - 1)·s both neighbours reach
        return self.out(self.post(x[..., self.crop :]))  # post input [B, H, c + 6 + L·s]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.valid(F.pad(z, (self.context, 0)))
