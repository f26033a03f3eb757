"""Algorithmic latency of tokenizing: the time from a sample's arrival to the code that covers it."""
from __future__ import annotations

import math
from typing import Any


def algorithmic_latency_ms(tok: Any) -> float:
    """Causal model: one token of samples (the token is final at its last sample; the causal mel frame t
    reads samples < (t+1)·hop, so the front end adds no lookahead) = 1000 · hop · stride / sample_rate.
    Non-causal: ``inf`` (GroupNorm statistics over time read the whole clip)."""
    if not tok.config.causal:
        return math.inf
    return 1000.0 * tok.samples_per_token / tok.sample_rate
