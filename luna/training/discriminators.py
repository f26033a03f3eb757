"""HiFi-GAN's discriminators (jik876/hifi-gan ``models.py``): multi-period (MPD) and multi-scale (MSD).

Only vocoder training uses them. Module and parameter names are the official ones, so official ``do_`` files
load after :func:`luna.models.hifigan_official.convert_official_state_dict` (weight norm and the MSD's
first-scale spectral norm use the ``torch.nn.utils.parametrizations`` API).
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm, weight_norm

from luna.models.hifigan import LRELU_SLOPE, get_padding

__all__ = ["DiscriminatorP", "DiscriminatorS", "MultiPeriodDiscriminator", "MultiScaleDiscriminator"]


#: (real scores, fake scores, real feature maps, fake feature maps), one entry per sub-discriminator
Scores = Tuple[List[torch.Tensor], List[torch.Tensor], List[List[torch.Tensor]], List[List[torch.Tensor]]]


def _conv_stack(d: nn.Module, x: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor]]:
    """``d.convs`` (leaky ReLU after each) then ``d.conv_post``: (flattened score ``[B, N]``, every activation)."""
    fmap = []
    for layer in d.convs:
        x = F.leaky_relu(layer(x), LRELU_SLOPE)
        fmap.append(x)
    x = d.conv_post(x)
    fmap.append(x)
    return torch.flatten(x, 1, -1), fmap


def _score(d: nn.Module, y: torch.Tensor, y_hat: torch.Tensor, out: Scores) -> None:
    """Append ``d``'s scores and feature maps of real ``y`` and generated ``y_hat`` to ``out``."""
    (y_d_r, fmap_r), (y_d_g, fmap_g) = d(y), d(y_hat)
    for acc, v in zip(out, (y_d_r, y_d_g, fmap_r, fmap_g)):
        acc.append(v)


class DiscriminatorP(nn.Module):
    """Period discriminator: audio ``[B, 1, L]`` folded to ``[B, 1, L/p, p]``, 2-D convs over time.

    Returns (score ``[B, N]``, feature maps). ``channels`` defaults to the official widths; smaller
    ones are for tests and tiny runs.
    """

    def __init__(
        self,
        period: int,
        kernel_size: int = 5,
        stride: int = 3,
        use_spectral_norm: bool = False,
        channels: Sequence[int] = (32, 128, 512, 1024, 1024),
    ):
        super().__init__()
        self.period = period
        norm_f = spectral_norm if use_spectral_norm else weight_norm
        chans = [1, *channels]
        pad = (get_padding(kernel_size, 1), 0)
        strides = [stride] * (len(channels) - 1) + [1]  # the last conv keeps the time resolution
        self.convs = nn.ModuleList(
            norm_f(nn.Conv2d(chans[i], chans[i + 1], (kernel_size, 1), (s, 1), padding=pad)) for i, s in enumerate(strides)
        )
        self.conv_post = norm_f(nn.Conv2d(chans[-1], 1, (3, 1), 1, padding=(1, 0)))

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        b, c, t = x.shape
        if t % self.period != 0:  # reflect-pad to a whole number of periods
            n_pad = self.period - (t % self.period)
            x = F.pad(x, (0, n_pad), "reflect")
            t = t + n_pad
        x = x.view(b, c, t // self.period, self.period)  # [B, 1, L/p, p]
        return _conv_stack(self, x)


class MultiPeriodDiscriminator(nn.Module):
    """MPD over periods 2, 3, 5, 7, 11.

    ``forward(y [B, 1, L], y_hat [B, 1, L])`` → (real scores, fake scores, real fmaps, fake fmaps),
    one entry per period, as in the official code.
    """

    def __init__(self, periods: Sequence[int] = (2, 3, 5, 7, 11), channels: Sequence[int] = (32, 128, 512, 1024, 1024)):
        super().__init__()
        self.discriminators = nn.ModuleList(DiscriminatorP(p, channels=channels) for p in periods)

    def forward(self, y: torch.Tensor, y_hat: torch.Tensor):
        out: Scores = ([], [], [], [])
        for d in self.discriminators:
            _score(d, y, y_hat, out)
        return out


#: (kernel, stride, groups, padding) of the official DiscriminatorS convs; channels come separately
_MSD_LAYERS = ((15, 1, 1, 7), (41, 2, 4, 20), (41, 2, 16, 20), (41, 4, 16, 20), (41, 4, 16, 20), (41, 1, 16, 20), (5, 1, 1, 2))


class DiscriminatorS(nn.Module):
    """Scale discriminator: grouped strided 1-D convs over audio ``[B, 1, L]`` → (score ``[B, N]``, fmaps)."""

    def __init__(self, use_spectral_norm: bool = False, channels: Sequence[int] = (128, 128, 256, 512, 1024, 1024, 1024)):
        super().__init__()
        if len(channels) != len(_MSD_LAYERS):
            raise ValueError(f"DiscriminatorS needs {len(_MSD_LAYERS)} channel counts, got {list(channels)}")
        norm_f = spectral_norm if use_spectral_norm else weight_norm
        chans = [1, *channels]
        layers = []
        for i, (k, s, g, p) in enumerate(_MSD_LAYERS):
            if chans[i] % g or chans[i + 1] % g:
                raise ValueError(f"DiscriminatorS conv {i}: channels {chans[i]}→{chans[i + 1]} not divisible by groups {g}")
            layers.append(norm_f(nn.Conv1d(chans[i], chans[i + 1], k, s, groups=g, padding=p)))
        self.convs = nn.ModuleList(layers)
        self.conv_post = norm_f(nn.Conv1d(chans[-1], 1, 3, 1, padding=1))

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        return _conv_stack(self, x)


class MultiScaleDiscriminator(nn.Module):
    """MSD on raw, ×2 and ×4 average-pooled audio; spectral norm on the first (raw) scale.

    ``forward(y, y_hat)`` → (real scores, fake scores, real fmaps, fake fmaps), one entry per scale.
    """

    def __init__(self, channels: Sequence[int] = (128, 128, 256, 512, 1024, 1024, 1024)):
        super().__init__()
        self.discriminators = nn.ModuleList(
            DiscriminatorS(use_spectral_norm=(i == 0), channels=channels) for i in range(3)
        )
        self.meanpools = nn.ModuleList([nn.AvgPool1d(4, 2, padding=2), nn.AvgPool1d(4, 2, padding=2)])

    def forward(self, y: torch.Tensor, y_hat: torch.Tensor):
        out: Scores = ([], [], [], [])
        for i, d in enumerate(self.discriminators):
            if i != 0:
                y = self.meanpools[i - 1](y)
                y_hat = self.meanpools[i - 1](y_hat)
            _score(d, y, y_hat, out)
        return out
