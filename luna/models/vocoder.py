"""Vocoders: luna log-mel ``[B, n_mels, T]`` → audio ``[B, T · hop]``.

Three kinds behind one :class:`Vocoder` interface (see :func:`build_vocoder`):

* ``griffinlim`` — no weights, always works (:class:`GriffinLimVocoder`);
* ``hifigan`` — a HiFi-GAN generator trained by luna (``python -m luna.train task=vocoder``);
* ``hifigan_universal`` — the official pretrained generator file (e.g. ``g_02500000``), frozen (:func:`load_official_hifigan`).

The HiFi-GAN generator and discriminators keep the official module and parameter names
(jik876/hifi-gan ``models.py``) so official checkpoints map onto them one-to-one; weight norm uses the
``torch.nn.utils.parametrizations`` API (the hook-based one is deprecated), and the old
``weight_g``/``weight_v`` names are translated on load by :func:`convert_official_state_dict`.
"""
from __future__ import annotations

import json
import logging
import math
import pickle
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
import torchaudio
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm, weight_norm

from luna.config import ConfigError, check_mel_compatible, MelConfig, validate_mel
from luna.features import mel_config
from luna.models.gan_losses import discriminator_loss, feature_loss, generator_loss
from luna.pretrained import PretrainedError, universal_hifigan_files

log = logging.getLogger(__name__)

__all__ = [
    "HIFIGAN_PRESETS",
    "LRELU_SLOPE",
    "HiFiGANGenerator",
    "ResBlock1",
    "ResBlock2",
    "DiscriminatorP",
    "DiscriminatorS",
    "MultiPeriodDiscriminator",
    "MultiScaleDiscriminator",
    "feature_loss",
    "discriminator_loss",
    "generator_loss",
    "hifigan_generator_config",
    "convert_official_state_dict",
    "load_generator_state_dict",
    "load_official_hifigan",
    "generator_for_training",
    "load_weights",
    "check_mel_compatible",
    "Vocoder",
    "GriffinLimVocoder",
    "HiFiGANVocoder",
    "build_vocoder",
]

LRELU_SLOPE = 0.1

#: Architecture fields of the official config_v1/v2/v3.json (all hop 256 at 22.05 kHz).
HIFIGAN_PRESETS: Dict[str, Dict[str, Any]] = {
    "v1": {
        "resblock": "1",
        "upsample_rates": [8, 8, 2, 2],
        "upsample_kernel_sizes": [16, 16, 4, 4],
        "upsample_initial_channel": 512,
        "resblock_kernel_sizes": [3, 7, 11],
        "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
    },
    "v2": {
        "resblock": "1",
        "upsample_rates": [8, 8, 2, 2],
        "upsample_kernel_sizes": [16, 16, 4, 4],
        "upsample_initial_channel": 128,
        "resblock_kernel_sizes": [3, 7, 11],
        "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
    },
    "v3": {
        "resblock": "2",
        "upsample_rates": [8, 8, 4],
        "upsample_kernel_sizes": [16, 16, 8],
        "upsample_initial_channel": 256,
        "resblock_kernel_sizes": [3, 5, 7],
        "resblock_dilation_sizes": [[1, 2], [2, 6], [3, 12]],
    },
}
_ARCH_KEYS = tuple(HIFIGAN_PRESETS["v1"])


def get_padding(kernel_size: int, dilation: int = 1) -> int:
    """'Same' padding of a stride-1 dilated conv with an odd kernel."""
    return (kernel_size * dilation - dilation) // 2


def _wn_conv(conv: nn.Module) -> nn.Module:
    """Weight norm with PyTorch's default conv init, which is the official code's effective init.

    The official code calls ``init_weights`` (N(0, 0.01)) *after* ``weight_norm``, where it only
    overwrites the derived ``weight`` tensor that the next forward recomputes from g and v: a no-op.
    Applying N(0, 0.01) for real would be a different init (far smaller than PyTorch's U(±1/√fan_in)
    for narrow layers).
    """
    return weight_norm(conv)


def _res_conv(channels: int, kernel_size: int, dilation: int) -> nn.Module:
    """Length-preserving dilated conv of the MRF blocks, ``[B, C, L] → [B, C, L]``."""
    return _wn_conv(nn.Conv1d(channels, channels, kernel_size, 1, dilation=dilation, padding=get_padding(kernel_size, dilation)))


def _remove_norm(module: nn.Module) -> None:
    if parametrize.is_parametrized(module, "weight"):
        parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)


# ----------------------------------------------------------------------------------------- generator


class ResBlock1(nn.Module):
    """MRF block type 1: three (dilated conv, conv) pairs with residuals; ``[B, C, L] → [B, C, L]``."""

    def __init__(self, channels: int, kernel_size: int = 3, dilation: Sequence[int] = (1, 3, 5)):
        super().__init__()
        self.convs1 = nn.ModuleList([_res_conv(channels, kernel_size, d) for d in dilation[:3]])
        self.convs2 = nn.ModuleList([_res_conv(channels, kernel_size, 1) for _ in range(3)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for c1, c2 in zip(self.convs1, self.convs2):
            xt = c1(F.leaky_relu(x, LRELU_SLOPE))
            xt = c2(F.leaky_relu(xt, LRELU_SLOPE))
            x = xt + x
        return x

    def remove_weight_norm(self) -> None:
        for conv in [*self.convs1, *self.convs2]:
            _remove_norm(conv)


class ResBlock2(nn.Module):
    """MRF block type 2 (V3): two dilated convs with residuals; ``[B, C, L] → [B, C, L]``."""

    def __init__(self, channels: int, kernel_size: int = 3, dilation: Sequence[int] = (1, 3)):
        super().__init__()
        self.convs = nn.ModuleList([_res_conv(channels, kernel_size, d) for d in dilation[:2]])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for c in self.convs:
            x = c(F.leaky_relu(x, LRELU_SLOPE)) + x
        return x

    def remove_weight_norm(self) -> None:
        for conv in self.convs:
            _remove_norm(conv)


def _plain_arch(h: Any) -> Dict[str, Any]:
    """Architecture fields as plain Python values from a dict, AttrDict, DictConfig or dataclass."""
    if isinstance(h, DictConfig):
        h = OmegaConf.to_container(h, resolve=True)
    elif is_dataclass(h) and not isinstance(h, type):
        h = asdict(h)
    missing = [k for k in _ARCH_KEYS if k not in h]
    if missing:
        raise ConfigError(f"vocoder.generator: missing HiFi-GAN architecture fields {missing}")
    return {
        "resblock": str(h["resblock"]),
        "upsample_rates": [int(u) for u in h["upsample_rates"]],
        "upsample_kernel_sizes": [int(k) for k in h["upsample_kernel_sizes"]],
        "upsample_initial_channel": int(h["upsample_initial_channel"]),
        "resblock_kernel_sizes": [int(k) for k in h["resblock_kernel_sizes"]],
        "resblock_dilation_sizes": [[int(d) for d in ds] for ds in h["resblock_dilation_sizes"]],
    }


def _check_arch(h: Dict[str, Any]) -> None:
    """Reject architectures whose output would not be exactly T · prod(upsample_rates) samples."""
    key = "vocoder.generator"
    if h["resblock"] not in ("1", "2"):
        raise ConfigError(f"{key}.resblock: must be '1' or '2', got {h['resblock']!r}")
    rates, kernels = h["upsample_rates"], h["upsample_kernel_sizes"]
    if not rates or len(rates) != len(kernels):
        raise ConfigError(f"{key}.upsample_rates: need one kernel size per rate, got rates={rates} kernels={kernels}")
    for u, k in zip(rates, kernels):
        if u < 1 or k < u or (k - u) % 2:
            raise ConfigError(
                f"{key}.upsample_kernel_sizes: need kernel >= rate and kernel - rate even (output = T * rate "
                f"exactly), got rate {u} kernel {k}"
            )
    if h["upsample_initial_channel"] // 2 ** len(rates) < 1:
        raise ConfigError(f"{key}.upsample_initial_channel: {h['upsample_initial_channel']} cannot be halved {len(rates)} times")
    ks, ds = h["resblock_kernel_sizes"], h["resblock_dilation_sizes"]
    if not ks or len(ks) != len(ds):
        raise ConfigError(f"{key}.resblock_kernel_sizes: need one dilation list per kernel, got {ks} and {ds}")
    need = 3 if h["resblock"] == "1" else 2
    for k, d in zip(ks, ds):
        if k % 2 == 0:
            raise ConfigError(f"{key}.resblock_kernel_sizes: must be odd ('same' padding), got {k}")
        if len(d) != need:
            raise ConfigError(
                f"{key}.resblock_dilation_sizes: resblock {h['resblock']} takes {need} dilations per kernel, got {d}"
            )


class HiFiGANGenerator(nn.Module):
    """HiFi-GAN generator: log-mel ``[B, num_mels, T]`` → audio ``[B, 1, T · prod(upsample_rates)]`` in [-1, 1].

    Module names match the official ``Generator`` (conv_pre, ups.N, resblocks.N.convs1/convs2 or
    convs, conv_post) so official state dicts load after :func:`convert_official_state_dict`.
    ``h`` holds the architecture fields of an official config (see :data:`HIFIGAN_PRESETS`).
    """

    def __init__(self, h: Any, num_mels: int = 80):
        super().__init__()
        self.h = _plain_arch(h)
        _check_arch(self.h)
        h = self.h
        self.num_mels = int(num_mels)
        self.num_kernels = len(h["resblock_kernel_sizes"])
        self.num_upsamples = len(h["upsample_rates"])
        c0 = h["upsample_initial_channel"]
        self.conv_pre = _wn_conv(nn.Conv1d(self.num_mels, c0, 7, 1, padding=3))
        resblock = ResBlock1 if h["resblock"] == "1" else ResBlock2
        self.ups = nn.ModuleList(
            _wn_conv(nn.ConvTranspose1d(c0 // 2**i, c0 // 2 ** (i + 1), k, u, padding=(k - u) // 2))
            for i, (u, k) in enumerate(zip(h["upsample_rates"], h["upsample_kernel_sizes"]))
        )
        self.resblocks = nn.ModuleList()
        for i in range(self.num_upsamples):
            ch = c0 // 2 ** (i + 1)
            for k, d in zip(h["resblock_kernel_sizes"], h["resblock_dilation_sizes"]):
                self.resblocks.append(resblock(ch, k, d))
        self.conv_post = _wn_conv(nn.Conv1d(ch, 1, 7, 1, padding=3))
        self.weight_norm_removed = False

    @property
    def hop_length(self) -> int:
        """Output samples per input frame."""
        return math.prod(self.h["upsample_rates"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_pre(x)  # [B, C0, T]
        for i in range(self.num_upsamples):
            x = F.leaky_relu(x, LRELU_SLOPE)
            x = self.ups[i](x)  # [B, C0 / 2^(i+1), T · u_1 … u_(i+1)]
            xs = self.resblocks[i * self.num_kernels](x)
            for j in range(1, self.num_kernels):
                xs = xs + self.resblocks[i * self.num_kernels + j](x)
            x = xs / self.num_kernels
        x = F.leaky_relu(x)  # the official default slope 0.01 here, not LRELU_SLOPE
        x = self.conv_post(x)  # [B, 1, T · hop]
        return torch.tanh(x)

    def remove_weight_norm(self) -> None:
        """Fold g · v / ||v|| into plain weights (inference); idempotent."""
        for module in self.modules():
            _remove_norm(module)
        self.weight_norm_removed = True

    def restore_weight_norm(self) -> None:
        """Weight norm back on every conv that lacks it (g = ||w||, v = w: the same function), for training from
        plain weights; idempotent. The trainable layout is the one of a fresh generator."""
        for module in self.modules():
            if isinstance(module, (nn.Conv1d, nn.ConvTranspose1d)) and not parametrize.is_parametrized(module, "weight"):
                weight_norm(module)
        self.weight_norm_removed = False


def _factor_hop(hop: int, max_stages: int) -> Tuple[List[int], List[int]]:
    """Upsample rates multiplying to ``hop`` (≤ ``max_stages``, largest first) and kernels of the official shape.

    Prime factors go one by one to the stage with the smallest product (balanced, cheap), sorted in
    decreasing order like the official presets; kernel = 2·rate (even rate) or 2·rate + 1 (odd rate)
    so that kernel − rate is even and every stage upsamples exactly.
    """
    primes, n, p = [], hop, 2
    while n > 1:
        while n % p == 0:
            primes.append(p)
            n //= p
        p += 1
    stages = min(max_stages, len(primes))
    rates = [1] * stages
    for q in sorted(primes, reverse=True):
        i = min(range(stages), key=lambda j: rates[j])
        rates[i] *= q
    rates.sort(reverse=True)
    return rates, [2 * u if u % 2 == 0 else 2 * u + 1 for u in rates]


def hifigan_generator_config(
    architecture: str = "v1", overrides: Optional[Mapping[str, Any]] = None, hop_length: Optional[int] = None
) -> Dict[str, Any]:
    """The generator architecture: preset ``architecture`` updated with ``overrides``.

    The presets upsample by 256 (22.05 kHz / hop 256). When ``hop_length`` differs and the rates were
    not overridden, the rates are re-factored for that hop (e.g. luna's default hop 240 with v1 →
    rates [5, 4, 4, 3], kernels [11, 8, 8, 7]); overridden rates that do not multiply to the hop are
    an error. Use this same function when training (task=vocoder) and when loading.
    """
    if architecture not in HIFIGAN_PRESETS:
        raise ConfigError(f"vocoder.architecture: must be one of {sorted(HIFIGAN_PRESETS)}, got {architecture!r}")
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(_ARCH_KEYS))
    if unknown:
        raise ConfigError(f"vocoder.generator: unknown keys {unknown} (known: {list(_ARCH_KEYS)})")
    h = {**HIFIGAN_PRESETS[architecture], **overrides}
    if "upsample_rates" in overrides and "upsample_kernel_sizes" not in overrides:
        h["upsample_kernel_sizes"] = [2 * u if u % 2 == 0 else 2 * u + 1 for u in h["upsample_rates"]]
    if hop_length is not None and math.prod(h["upsample_rates"]) != hop_length:
        if "upsample_rates" in overrides:
            raise ConfigError(
                f"vocoder.generator.upsample_rates: {list(h['upsample_rates'])} multiply to "
                f"{math.prod(h['upsample_rates'])}, but vocoder.mel.hop_length is {hop_length}"
            )
        if hop_length < 2:
            raise ConfigError(f"vocoder.mel.hop_length: HiFi-GAN needs hop_length >= 2, got {hop_length}")
        h["upsample_rates"], h["upsample_kernel_sizes"] = _factor_hop(hop_length, len(h["upsample_rates"]))
        log.info(
            "HiFi-GAN %s for hop %d: upsample rates %s, kernels %s",
            architecture, hop_length, h["upsample_rates"], h["upsample_kernel_sizes"],
        )
    h = _plain_arch(h)
    _check_arch(h)
    return h


# ------------------------------------------------------------------------------------ discriminators


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
        fmap = []
        b, c, t = x.shape
        if t % self.period != 0:  # reflect-pad to a whole number of periods
            n_pad = self.period - (t % self.period)
            x = F.pad(x, (0, n_pad), "reflect")
            t = t + n_pad
        x = x.view(b, c, t // self.period, self.period)  # [B, 1, L/p, p]
        for layer in self.convs:
            x = F.leaky_relu(layer(x), LRELU_SLOPE)
            fmap.append(x)
        x = self.conv_post(x)
        fmap.append(x)
        return torch.flatten(x, 1, -1), fmap


class MultiPeriodDiscriminator(nn.Module):
    """MPD over periods 2, 3, 5, 7, 11.

    ``forward(y [B, 1, L], y_hat [B, 1, L])`` → (real scores, fake scores, real fmaps, fake fmaps),
    one entry per period, as in the official code.
    """

    def __init__(self, periods: Sequence[int] = (2, 3, 5, 7, 11), channels: Sequence[int] = (32, 128, 512, 1024, 1024)):
        super().__init__()
        self.discriminators = nn.ModuleList(DiscriminatorP(p, channels=channels) for p in periods)

    def forward(self, y: torch.Tensor, y_hat: torch.Tensor):
        y_d_rs, y_d_gs, fmap_rs, fmap_gs = [], [], [], []
        for d in self.discriminators:
            y_d_r, fmap_r = d(y)
            y_d_g, fmap_g = d(y_hat)
            y_d_rs.append(y_d_r)
            fmap_rs.append(fmap_r)
            y_d_gs.append(y_d_g)
            fmap_gs.append(fmap_g)
        return y_d_rs, y_d_gs, fmap_rs, fmap_gs


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
        fmap = []
        for layer in self.convs:
            x = F.leaky_relu(layer(x), LRELU_SLOPE)
            fmap.append(x)
        x = self.conv_post(x)
        fmap.append(x)
        return torch.flatten(x, 1, -1), fmap


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
        y_d_rs, y_d_gs, fmap_rs, fmap_gs = [], [], [], []
        for i, d in enumerate(self.discriminators):
            if i != 0:
                y = self.meanpools[i - 1](y)
                y_hat = self.meanpools[i - 1](y_hat)
            y_d_r, fmap_r = d(y)
            y_d_g, fmap_g = d(y_hat)
            y_d_rs.append(y_d_r)
            fmap_rs.append(fmap_r)
            y_d_gs.append(y_d_g)
            fmap_gs.append(fmap_g)
        return y_d_rs, y_d_gs, fmap_rs, fmap_gs


# ------------------------------------------------------------------------------------------- loading


def convert_official_state_dict(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Rename hook-style norm parameters (official checkpoints) to ``parametrizations`` names.

    weight norm: ``X.weight_g`` → ``X.parametrizations.weight.original0``, ``X.weight_v`` → ``original1``;
    spectral norm (the MSD's first scale in official ``do_`` files): ``X.weight_orig`` →
    ``X.parametrizations.weight.original``, ``X.weight_u``/``X.weight_v`` → ``...weight.0._u``/``._v``.
    Other keys pass unchanged, so the function is safe on already-converted dicts.
    """
    spectral = {k[: -len("weight_orig")] for k in state_dict if k.endswith("weight_orig")}
    out: Dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        prefix, _, leaf = key.rpartition(".")
        prefix = f"{prefix}." if prefix else ""
        if prefix in spectral and leaf in ("weight_orig", "weight_u", "weight_v"):
            new = {"weight_orig": "original", "weight_u": "0._u", "weight_v": "0._v"}[leaf]
            out[f"{prefix}parametrizations.weight.{new}"] = value
        elif leaf == "weight_g":
            out[f"{prefix}parametrizations.weight.original0"] = value
        elif leaf == "weight_v":
            out[f"{prefix}parametrizations.weight.original1"] = value
        else:
            out[key] = value
    return out


def _load_strict(module: nn.Module, state_dict: Mapping[str, torch.Tensor], what: str) -> None:
    """``load_state_dict(strict=True)`` with one error listing missing, unexpected and mis-shaped keys."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = [
        f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state_dict))
        if tuple(state_dict[k].shape) != tuple(own[k].shape)
    ]

    def listing(name: str, items: List[str]) -> str:
        shown = ", ".join(items[:20]) + (f", ... ({len(items) - 20} more)" if len(items) > 20 else "")
        return f"\n  {name} ({len(items)}): {shown}"

    if missing or unexpected or shapes:
        msg = f"{what}: weights do not match the architecture (wrong preset, generator overrides or num_mels?)"
        for name, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
            if items:
                msg += listing(name, items)
        raise RuntimeError(msg)
    module.load_state_dict(state_dict, strict=True)


def load_generator_state_dict(
    generator: HiFiGANGenerator, state_dict: Mapping[str, torch.Tensor], what: str = "generator"
) -> None:
    """Load weights saved with weight norm (old or parametrization names) or without it (plain ``weight``)."""
    state_dict = convert_official_state_dict(state_dict)
    if not any(k.endswith("parametrizations.weight.original0") for k in state_dict):
        generator.remove_weight_norm()  # a file saved after remove_weight_norm(): plain weights
    _load_strict(generator, state_dict, what)


def load_weights(path: Union[str, Path]) -> Any:
    """``torch.load(weights_only=True)`` on CPU; a file holding anything but tensors/containers is refused."""
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RuntimeError(
            f"{path}: refusing to load: it holds objects other than tensors and plain containers, which "
            f"would run code when unpickled (torch.load weights_only=True): {first}"
        ) from e


def _freeze(module: nn.Module) -> nn.Module:
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def load_official_hifigan(checkpoint_path: Union[str, Path], config_path: Union[str, Path, None] = None) -> HiFiGANGenerator:
    """An official HiFi-GAN generator (``g_<step>`` + ``config.json``, e.g. ``g_02500000``), eval mode, frozen, weight norm removed.

    ``config_path`` defaults to ``config.json`` next to the checkpoint (the official layout). The file
    is a dict with key ``generator`` (state dict with ``weight_g``/``weight_v`` names).
    """
    checkpoint_path = Path(checkpoint_path)
    config_path = Path(config_path) if config_path is not None else checkpoint_path.parent / "config.json"
    if not checkpoint_path.is_file():
        raise FileNotFoundError(f"HiFi-GAN generator checkpoint not found: {checkpoint_path}")
    if not config_path.is_file():
        raise FileNotFoundError(f"HiFi-GAN config.json not found: {config_path} (it belongs next to {checkpoint_path.name})")
    with open(config_path) as f:
        h = json.load(f)
    ckpt = load_weights(checkpoint_path)
    if not isinstance(ckpt, Mapping) or "generator" not in ckpt:
        keys = sorted(ckpt) if isinstance(ckpt, Mapping) else type(ckpt).__name__
        raise RuntimeError(
            f"{checkpoint_path}: not an official HiFi-GAN generator file (expected key 'generator', found {keys})"
        )
    generator = HiFiGANGenerator(h, num_mels=int(h.get("num_mels", 80)))
    load_generator_state_dict(generator, ckpt["generator"], what=str(checkpoint_path))
    generator.remove_weight_norm()
    generator.official_config = h
    return _freeze(generator)


def generator_for_training(init: Optional[str], h: Mapping[str, Any], num_mels: int, mel: Any = None) -> HiFiGANGenerator:
    """A trainable generator (weight norm on) of architecture ``h``, starting from ``init`` (``vocoder.init``):

    * ``None``: fresh (random) weights;
    * ``"universal"``: the UNIVERSAL_V1 weights installed with luna (:mod:`luna.pretrained`, size and sha256
      checked); ``h`` must be the V1 preset, and ``mel`` (when given) the convention of its config.json;
    * a path: the generator weights of a luna vocoder checkpoint (``best.pt``) or an official ``g_`` file.

    Every failure is a :class:`ConfigError` naming ``vocoder.init`` (or ``vocoder.mel``).
    """
    generator = HiFiGANGenerator(h, num_mels=num_mels)
    if not init:
        return generator
    if init == "universal":
        try:
            path, config_path = universal_hifigan_files()
        except PretrainedError as e:
            raise ConfigError(f"vocoder.init: {e}") from None
        official = json.loads(config_path.read_text())
        if _plain_arch(official) != generator.h or int(official.get("num_mels", 80)) != num_mels:
            raise ConfigError(
                f"vocoder.init: universal is the official V1 generator ({_plain_arch(official)}, "
                f"{official.get('num_mels', 80)} mels); the configured one is {generator.h}, {num_mels} mels"
            )
        if mel is not None:
            _check_official_mel(official, mel_config(mel), config_path)
        state = load_weights(path)["generator"]
    else:
        path = _resolve_path(str(init))
        if not path.is_file():
            raise ConfigError(f"vocoder.init: file not found: {init}")
        try:
            state = _generator_weights(load_weights(path), path)
        except RuntimeError as e:
            raise ConfigError(f"vocoder.init: {e}") from None
    try:
        load_generator_state_dict(generator, state, what=f"vocoder.init: {path}")
    except RuntimeError as e:
        raise ConfigError(str(e)) from None
    generator.restore_weight_norm()
    return generator


# ------------------------------------------------------------------------------------------ vocoders


class Vocoder(nn.Module):
    """Common interface: ``forward(log_mel [B, n_mels, T]) → audio [B, T · hop]`` at ``mel.sample_rate``."""

    kind: str = ""

    def __init__(self, mel: Any):
        super().__init__()
        self.mel: MelConfig = mel_config(mel)

    @property
    def sample_rate(self) -> int:
        return self.mel.sample_rate

    @property
    def hop_length(self) -> int:
        return self.mel.hop_length

    def _check_input(self, log_mel: torch.Tensor) -> None:
        if log_mel.dim() != 3 or log_mel.shape[1] != self.mel.n_mels:
            raise ValueError(f"{type(self).__name__}: expected log-mel [B, {self.mel.n_mels}, T], got {tuple(log_mel.shape)}")


class GriffinLimVocoder(Vocoder):
    """Inverts luna's log-mel without weights: undo log → pseudo-inverse filterbank → Griffin-Lim.

    The mel → linear step starts from the precomputed pseudo-inverse of the filterbank (the
    minimum-norm least-squares solution that torchaudio's ``InverseMelScale`` computes with ``lstsq``
    on every call: same numbers, ~10× faster as one matmul), clamped at 0, then refines it with
    ``nnls_iter`` multiplicative non-negative least-squares updates. On a synthetic harmonic signal
    (24 kHz, hop 240, 32 Griffin-Lim iterations) the refinement lowers the log-mel L1 of the
    re-analysed output from 0.26 to 0.16 for ~25 % more time (5 s of 24 kHz audio: ~0.11 s instead
    of ~0.09 s on 2 CPU threads, RTF ≈ 0.02). Phase starts at zero
    (``rand_init=False``) so the output is deterministic. luna frames are STFT frames with
    ``center=False`` after a (n_fft − hop)/2 pad, i.e. frame t is centred at t·hop + hop/2 while
    torchaudio's Griffin-Lim centres frame j at j·hop; the first and last frames are repeated once at
    the edges and the result read from hop/2 on, so the returned audio is aligned with the input
    and exactly T · hop long.
    """

    kind = "griffinlim"

    def __init__(self, mel_cfg: Any, n_iter: int = 32, momentum: float = 0.99, nnls_iter: int = 30):
        super().__init__(mel_cfg)
        c = self.mel
        fb = torchaudio.functional.melscale_fbanks(
            c.n_fft // 2 + 1, c.f_min, c.f_max if c.f_max is not None else float(c.sample_rate // 2), c.n_mels, c.sample_rate,
            "slaney" if c.mel_scale == "slaney" else None, c.mel_scale,
        )  # [n_freq, n_mels]
        self.register_buffer("fb", fb.T.contiguous(), persistent=False)  # [n_mels, n_freq]
        self.register_buffer("inv_fb", torch.linalg.pinv(fb.T.double()).float(), persistent=False)  # [n_freq, n_mels]
        self.register_buffer("window", torch.hann_window(c.win_length), persistent=False)  # as luna's STFT
        self.n_iter = n_iter
        self.momentum = momentum
        self.nnls_iter = nnls_iter

    def forward(self, log_mel: torch.Tensor) -> torch.Tensor:
        self._check_input(log_mel)
        c = self.mel
        b, _, t = log_mel.shape
        if t == 0:
            return log_mel.new_zeros(b, 0)
        with torch.autocast(device_type=log_mel.device.type, enabled=False):
            x = log_mel.float()
            mel = torch.exp(x) if c.log == "ln" else torch.pow(10.0, x)  # [B, n_mels, T] magnitude^power
            spec = torch.relu(self.inv_fb @ mel).clamp(min=1e-8)  # [B, n_freq, T]; > 0 so updates can move it
            target = self.fb.T @ mel  # [B, n_freq, T]
            for _ in range(self.nnls_iter):  # multiplicative NNLS updates: min ||fb · S − mel||, S ≥ 0
                # the floor keeps values out of float32's subnormal range, where CPU arithmetic crawls
                spec = (spec * target / (self.fb.T @ (self.fb @ spec) + 1e-10)).clamp_min(1e-12)
            spec = torch.cat([spec[:, :, :1], spec, spec[:, :, -1:]], dim=2)  # [B, n_freq, T + 2]
            audio = torchaudio.functional.griffinlim(
                spec, self.window, c.n_fft, c.hop_length, c.win_length, c.power, self.n_iter, self.momentum,
                (t + 1) * c.hop_length, False,
            )  # [B, (T + 1) · hop]; frame j centred at j · hop, so luna frame t (GL frame t + 1) at t · hop + hop/2 + hop/2
            start = c.hop_length // 2
            return audio[:, start : start + t * c.hop_length]  # [B, T · hop]


class HiFiGANVocoder(Vocoder):
    """A HiFi-GAN generator behind the common interface; weight norm removed, eval mode, frozen."""

    def __init__(self, generator: HiFiGANGenerator, mel: Any, kind: str = "hifigan"):
        super().__init__(mel)
        self.kind = kind
        if generator.num_mels != self.mel.n_mels:
            raise ConfigError(
                f"vocoder.mel.n_mels: the generator takes {generator.num_mels} mel bins, the mel config has {self.mel.n_mels}"
            )
        if generator.hop_length != self.mel.hop_length:
            raise ConfigError(
                f"vocoder.mel.hop_length: the generator upsamples by {generator.hop_length} "
                f"(rates {generator.h['upsample_rates']}), the mel config has hop {self.mel.hop_length}"
            )
        generator.remove_weight_norm()
        self.generator = _freeze(generator)
        self.eval()

    def forward(self, log_mel: torch.Tensor) -> torch.Tensor:
        self._check_input(log_mel)
        return self.generator(log_mel).squeeze(1)  # [B, T · hop]

    def train(self, mode: bool = True) -> "HiFiGANVocoder":
        """Stay in eval mode: this wrapper is for inference (train a generator with HiFiGANGenerator)."""
        return super().train(False)


def _as_dict(cfg: Any) -> Dict[str, Any]:
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    if is_dataclass(cfg) and not isinstance(cfg, type):
        return asdict(cfg)
    return dict(cfg)


def _resolve_path(path: str) -> Path:
    """A path as given: absolute, or relative to the working directory."""
    return Path(path).expanduser()


def _generator_weights(ckpt: Any, path: Path) -> Dict[str, torch.Tensor]:
    """The generator state dict of a luna vocoder checkpoint (key ``generator``, or ``model`` from the trainer)."""
    if not isinstance(ckpt, Mapping):
        raise RuntimeError(f"{path}: expected a checkpoint dict with key 'generator' or 'model', got {type(ckpt).__name__}")
    if "generator" in ckpt:
        sd = ckpt["generator"]
    elif "model" in ckpt:
        sd = ckpt["model"]
    else:
        raise RuntimeError(f"{path}: no 'generator' or 'model' key in the checkpoint (found {sorted(ckpt)})")
    sd = {k[len("module.") :] if k.startswith("module.") else k: v for k, v in sd.items()}  # DDP-wrapped saves
    if any(k.startswith("generator.") for k in sd):  # a whole GAN module: keep its generator part
        sd = {k[len("generator.") :]: v for k, v in sd.items() if k.startswith("generator.")}
    return sd


def _check_official_mel(h: Mapping[str, Any], mel: MelConfig, path: Path) -> None:
    """The official config.json states its mel convention; it must agree with ``vocoder.mel``."""
    pairs = {"sampling_rate": "sample_rate", "n_fft": "n_fft", "win_size": "win_length", "hop_size": "hop_length",
             "num_mels": "n_mels", "fmin": "f_min", "fmax": "f_max"}  # fmt: skip
    diffs = []
    for theirs, ours in pairs.items():
        if theirs not in h:
            continue
        a, b = h[theirs], getattr(mel, ours)
        if (a is None or b is None) and a is not b or a is not None and b is not None and float(a) != float(b):
            diffs.append(f"{ours}: config.json {a!r} vs vocoder.mel {b!r}")
    if diffs:
        raise ConfigError(f"vocoder.mel: disagrees with {path}: " + "; ".join(diffs))


def build_vocoder(vocoder_cfg: Any, model_mel: Any = None) -> Vocoder:
    """The vocoder described by a ``vocoder`` config node (DictConfig, VocoderConfig or dict).

    With ``model_mel`` (the tokenizer's mel), a different mel convention is a :class:`ConfigError`
    naming every differing field. HiFi-GAN vocoders come back in eval mode, frozen, weight norm removed.
    """
    cfg = _as_dict(vocoder_cfg)
    kind = cfg.get("kind", "griffinlim")
    mel = mel_config(cfg.get("mel", MelConfig()))
    validate_mel(mel, "vocoder.mel")
    if model_mel is not None:
        check_mel_compatible(model_mel, mel)

    if kind == "griffinlim":
        return GriffinLimVocoder(mel, n_iter=int(cfg.get("n_iter", 32)))

    if kind == "hifigan":
        ckpt_path = cfg.get("checkpoint")
        if not ckpt_path:
            raise ConfigError(
                "vocoder.checkpoint: vocoder=hifigan needs a trained HiFi-GAN vocoder checkpoint for this "
                "mel convention. Train one with `python -m luna.train task=vocoder` (same model/mel settings), "
                "then pass vocoder.checkpoint=outputs/.../checkpoints/best.pt; or use vocoder=griffinlim."
            )
        path = _resolve_path(str(ckpt_path))
        if not path.is_file():
            raise ConfigError(f"vocoder.checkpoint: file not found: {ckpt_path}")
        h = hifigan_generator_config(cfg.get("architecture", "v1"), cfg.get("generator") or {}, mel.hop_length)
        generator = HiFiGANGenerator(h, num_mels=mel.n_mels)
        load_generator_state_dict(generator, _generator_weights(load_weights(path), path), what=str(path))
        return HiFiGANVocoder(generator, mel, kind="hifigan")

    if kind == "hifigan_universal":
        ckpt_path = cfg.get("checkpoint")
        if not ckpt_path:  # the UNIVERSAL_V1 weights installed with luna
            try:
                path, config_path = universal_hifigan_files()
            except PretrainedError as e:
                raise ConfigError(f"vocoder.checkpoint: {e}") from None
        else:
            path = _resolve_path(str(ckpt_path))
            config_path = path.parent / "config.json"
        if cfg.get("config_path"):
            config_path = _resolve_path(str(cfg["config_path"]))
        for p, what in ((path, "vocoder.checkpoint"), (config_path, "vocoder.config_path")):
            if not p.is_file():
                raise ConfigError(
                    f"{what}: file not found: {p}. Leave vocoder.checkpoint unset (and LUNA_HIFIGAN_UNIVERSAL "
                    f"unset) to use the UNIVERSAL_V1 weights installed with luna, or point either at an official "
                    f"g_ file (config.json is read from the same folder unless vocoder.config_path is set)."
                )
        generator = load_official_hifigan(path, config_path)
        _check_official_mel(generator.official_config, mel, config_path)
        return HiFiGANVocoder(generator, mel, kind="hifigan_universal")

    raise ConfigError(f"vocoder.kind: must be griffinlim, hifigan or hifigan_universal, got {kind!r}")
