"""Small random-init causal tokenizers with k-means-initialised codebooks (so codes are non-trivial)."""
from __future__ import annotations

import pytest
import torch

from luna import SpeechTokenizer
from tests.conftest import compose_train


def speechlike(seconds: float, rate: int, seed: int = 0) -> torch.Tensor:
    """Noise under a slow syllable-like envelope, with a few silent stretches: ``[S]``."""
    g = torch.Generator().manual_seed(seed)
    n = round(seconds * rate)
    t = torch.arange(n) / rate
    envelope = (torch.sin(2 * torch.pi * 3.0 * t).clamp(min=0) + 0.05) * (torch.sin(2 * torch.pi * 0.4 * t) > -0.8)
    return torch.randn(n, generator=g) * 0.2 * envelope


def causal_tokenizer(overrides, rate: int) -> SpeechTokenizer:
    torch.manual_seed(0)
    tok = SpeechTokenizer.from_config(compose_train(["vocoder=griffinlim", "model.causal=true", *overrides]))
    tok.train()
    with torch.no_grad():  # the first training forward k-means-initialises every codebook
        tok(torch.stack([speechlike(1.0, rate, seed) for seed in range(8)]))
    return tok.eval()


@pytest.fixture(scope="package")
def tiny_causal() -> SpeechTokenizer:
    """model=tiny, causal: 16 kHz, hop 160, stride 2, hidden 32, 2 × 32 codes."""
    return causal_tokenizer(["model=tiny"], 16000)


@pytest.fixture(scope="package")
def causal_12hz() -> SpeechTokenizer:
    """The rvq8_12hz_causal shape (22.05 kHz, hop 256, stride 8, 2 res blocks) at hidden 32, 4 × 64 codes."""
    return causal_tokenizer(["model=rvq8_12hz_causal", "model.hidden=32", "model.codebook_dim=0",
                             "model.num_quantizers=4", "model.codebook_size=64"], 22050)
