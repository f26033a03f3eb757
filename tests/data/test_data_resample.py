"""luna.audio.resample (polyphase form used by the data pipeline) equals torchaudio's Resample."""
from __future__ import annotations

import pytest
import torch
import torchaudio

from luna.audio import resample


@pytest.mark.parametrize("orig,new", [(16000, 24000), (8000, 24000), (48000, 24000), (44100, 24000),
                                      (22050, 24000), (24000, 16000), (11025, 22050)])
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
