"""luna.audio.resample (the polyphase and phase-group forms used by the data pipeline) equals torchaudio's Resample."""
from __future__ import annotations

import pytest
import torch
import torchaudio

from luna.audio import _phase_groups, resample


@pytest.mark.parametrize("orig,new", [(16000, 24000), (8000, 24000), (48000, 24000), (44100, 24000),
                                      (22050, 24000), (24000, 16000), (11025, 22050), (16000, 22050),
                                      (22050, 16000), (48000, 22050), (24000, 22050), (8000, 22050)])
@pytest.mark.parametrize("length", [1, 7, 4000, 4001])
def test_matches_torchaudio(orig, new, length):
    x = torch.randn(2, 3, length, generator=torch.Generator().manual_seed(length))
    expected = torchaudio.transforms.Resample(orig, new)(x)
    got = resample(x, orig, new)
    assert got.shape == expected.shape and got.dtype == torch.float32
    assert torch.allclose(got, expected, atol=1e-5)


def test_same_rate_is_identity_and_1d_works():
    x = torch.randn(100)
    assert resample(x, 16000, 16000) is x
    assert resample(x, 16000, 24000).shape == (150,)


def test_large_reduced_rates_use_the_phase_groups():
    """16 -> 22.05 kHz is 320 -> 441: the polyphase kernel would be 96% zeros, so the grouped form runs."""
    cpu = torch.device("cpu")
    plan = _phase_groups(16000, 22050, cpu)
    assert plan is not None and plan.orig == 320 and plan.new == 441 and plan.span < 40
    assert _phase_groups(16000, 24000, cpu) is None  # 2 -> 3: the polyphase conv is as cheap
