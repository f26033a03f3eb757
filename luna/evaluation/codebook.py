"""Codebook health from the codes a tokenizer emits: usage, perplexity, normalized entropy, dead codes.

Computed from histograms so statistics can be accumulated over many files (sum the ``[N, K]`` counts)
and summarized once at the end.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import torch

from luna.models.codebook import usage_stats


def code_histogram(codes: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """Codes ``[B, N, T]`` (Long) → counts ``[N, K]`` of how often each quantizer emitted each code."""
    if codes.dim() != 3:
        raise ValueError(f"codes must be [B, N, T], got shape {tuple(codes.shape)}")
    codes = codes.detach().long().cpu()
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= codebook_size):
        raise ValueError(f"codes must lie in [0, {codebook_size}), got [{int(codes.min())}, {int(codes.max())}]")
    n = codes.shape[1]
    flat = codes.transpose(0, 1).reshape(n, -1)  # [N, B*T]
    flat = flat + torch.arange(n).unsqueeze(1) * codebook_size  # one bincount for all quantizers
    return torch.bincount(flat.reshape(-1), minlength=n * codebook_size).view(n, codebook_size)


def codebook_stats(codes_or_counts: torch.Tensor, codebook_size: Optional[int] = None) -> List[Dict[str, Optional[float]]]:
    """Per quantizer: ``usage`` (fraction of the K codes used at least once), ``perplexity``
    (exp of the natural-log entropy of code frequencies: the effective number of codes, 1..K),
    ``entropy_normalized`` (entropy / log K, 0..1) and ``dead_codes`` (codes never used).

    Accepts codes ``[B, N, T]`` (needs ``codebook_size``) or counts ``[N, K]``. A quantizer with no
    codes at all has usage 0 and undefined (None) perplexity and entropy.
    """
    if codes_or_counts.dim() == 3:
        if codebook_size is None:
            raise ValueError("codebook_size is required when passing codes [B, N, T]")
        counts = code_histogram(codes_or_counts, codebook_size)
    elif codes_or_counts.dim() == 2:
        counts = codes_or_counts.detach().cpu()
        if codebook_size is not None and counts.shape[1] != codebook_size:
            raise ValueError(f"counts have {counts.shape[1]} codes per quantizer, expected {codebook_size}")
    else:
        raise ValueError(f"expected codes [B, N, T] or counts [N, K], got shape {tuple(codes_or_counts.shape)}")
    stats: List[Dict[str, Optional[float]]] = usage_stats(counts)  # the quantizer's own definitions
    for entry, row in zip(stats, counts):
        if float(row.sum()) == 0:  # nothing emitted: a distribution's entropy is undefined
            entry["perplexity"] = entry["entropy_normalized"] = None
    return stats
