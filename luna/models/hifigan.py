"""The HiFi-GAN generator (jik876/hifi-gan ``models.py``): log-mel ``[B, num_mels, T]`` → audio ``[B, 1, T · hop]``.

Module and parameter names are the official ones so official checkpoints map onto them one-to-one
(:mod:`luna.models.hifigan_official` converts and loads those files). Weight norm uses the
``torch.nn.utils.parametrizations`` API (the hook-based one is deprecated). The discriminators, used only
in training, live in :mod:`luna.training.discriminators`.
"""
from __future__ import annotations

import logging
import math
from dataclasses import asdict, is_dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import weight_norm

from luna.config import ConfigError

log = logging.getLogger(__name__)

__all__ = [
    "HIFIGAN_PRESETS",
    "LRELU_SLOPE",
    "HiFiGANGenerator",
    "ResBlock1",
    "ResBlock2",
    "as_plain_dict",
    "freeze",
    "get_padding",
    "hifigan_generator_config",
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



def as_plain_dict(cfg: Any) -> Dict[str, Any]:
    """A dict, AttrDict, DictConfig or dataclass instance as a plain (resolved) dict."""
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    if is_dataclass(cfg) and not isinstance(cfg, type):
        return asdict(cfg)
    return dict(cfg)


def freeze(module: nn.Module) -> nn.Module:
    """Eval mode, no gradients; returns ``module``."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


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
    h = as_plain_dict(h)
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
