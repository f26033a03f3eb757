"""Shared by the vocoder tests (tests/models/test_vocoder.py) and the discriminator tests
(tests/training/test_discriminators.py): tiny architectures, a test signal, official parameter names."""
from __future__ import annotations

import math

import pytest
import torch

from luna.config import MelConfig

#: a generator small enough for CPU tests: hop 8·8 = 64
TINY_H = {
    "resblock": "1",
    "upsample_rates": [8, 8],
    "upsample_kernel_sizes": [16, 16],
    "upsample_initial_channel": 32,
    "resblock_kernel_sizes": [3],
    "resblock_dilation_sizes": [[1, 3, 5]],
}
TINY_MEL = MelConfig(sample_rate=8000, n_fft=256, win_length=256, hop_length=64, n_mels=20, f_min=0.0, f_max=4000.0)
TINY_MPD = (8, 16, 32, 32, 32)
TINY_MSD = (16, 16, 16, 32, 32, 32, 32)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny convs gain nothing from threads, and on shared cores intra-op spinning can cost 10×."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def harmonic(sample_rate: int, seconds: float, batch: int = 1, f0: float = 140.0) -> torch.Tensor:
    """A vibrato harmonic tone with a tremolo envelope, ``[B, S]`` in [-0.8, 0.8]."""
    t = torch.arange(int(sample_rate * seconds)) / sample_rate
    out = []
    for b in range(batch):
        f = f0 * (1 + 0.2 * b) + 30 * torch.sin(2 * math.pi * 1.5 * t)
        phase = 2 * math.pi * torch.cumsum(f / sample_rate, 0)
        x = sum((0.3 / k) * torch.sin(k * phase) for k in range(1, 30) if k * f0 * 1.5 < sample_rate / 2)
        x = x * (0.5 + 0.5 * torch.sin(2 * math.pi * 3 * t) ** 2)
        out.append(x / x.abs().max() * 0.8)
    return torch.stack(out)


def to_official_names(state_dict):
    """Parametrization names → the hook-style names of official files (what jik876/hifi-gan saves)."""
    out = {}
    for k, v in state_dict.items():
        k = k.replace("parametrizations.weight.original0", "weight_g").replace("parametrizations.weight.original1", "weight_v")
        k = k.replace("parametrizations.weight.original", "weight_orig")
        k = k.replace("parametrizations.weight.0._u", "weight_u").replace("parametrizations.weight.0._v", "weight_v")
        out[k] = v.clone()
    return out
