"""The token clock of a model: samples per token, tokens/s and bits/s, derived in one place from its config."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from luna.config import plain


@dataclass(frozen=True)
class Rate:
    """The token clock of a model: the one place samples per token, tokens/s and bits/s are derived."""

    sample_rate: int
    samples_per_token: int  # mel hop × encoder stride
    num_quantizers: int
    codebook_size: int

    @property
    def tokens_per_second(self) -> float:
        return self.sample_rate / self.samples_per_token

    @property
    def bits_per_token(self) -> float:
        """Bits of one frame of codes at ``num_quantizers`` streams: N × log2(K)."""
        return self.num_quantizers * math.log2(self.codebook_size)

    @property
    def bitrate(self) -> float:
        """Bits per second at all quantizers: tokens/s × N × log2(K)."""
        return self.tokens_per_second * self.bits_per_token

    def at(self, num_quantizers: int) -> "Rate":
        """The same clock with the first ``num_quantizers`` streams."""
        return Rate(self.sample_rate, self.samples_per_token, int(num_quantizers), self.codebook_size)


def model_rate(model: Any) -> Rate:
    """The :class:`Rate` of a model config (dataclass, DictConfig or dict)."""
    m = plain(model)
    mel = m["mel"]
    return Rate(int(mel["sample_rate"]), int(mel["hop_length"]) * int(m["encoder_stride"]), int(m["num_quantizers"]),
                int(m["codebook_size"]))
