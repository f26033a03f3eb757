"""Codebook statistics on hand-built code streams whose usage, perplexity and entropy are known."""
from __future__ import annotations

import math

import pytest
import torch

from luna.evaluation.codebook import code_histogram, codebook_stats


def test_known_usage_perplexity_entropy():
    # K=4, N=2, B=2, T=4: quantizer 0 uses codes {0, 1} equally, quantizer 1 all four equally
    codes = torch.tensor(
        [
            [[0, 1, 0, 1], [0, 1, 2, 3]],
            [[1, 0, 1, 0], [3, 2, 1, 0]],
        ]
    )
    counts = code_histogram(codes, 4)
    assert counts.tolist() == [[4, 4, 0, 0], [2, 2, 2, 2]]
    q0, q1 = codebook_stats(codes, 4)
    assert q0 == pytest.approx({"usage": 0.5, "perplexity": 2.0, "entropy_normalized": 0.5, "dead_codes": 2})
    assert q1 == pytest.approx({"usage": 1.0, "perplexity": 4.0, "entropy_normalized": 1.0, "dead_codes": 0})


def test_skewed_counts():
    counts = torch.tensor([[2, 1, 1, 0, 0, 0, 0, 0], [8, 0, 0, 0, 0, 0, 0, 0]])
    q0, q1 = codebook_stats(counts)
    entropy = 1.5 * math.log(2)  # p = 1/2, 1/4, 1/4
    assert q0["perplexity"] == pytest.approx(2 ** 1.5)
    assert q0["entropy_normalized"] == pytest.approx(entropy / math.log(8))
    assert q0["usage"] == pytest.approx(3 / 8) and q0["dead_codes"] == 5
    assert q1 == pytest.approx({"usage": 1 / 8, "perplexity": 1.0, "entropy_normalized": 0.0, "dead_codes": 7})


def test_histograms_accumulate_and_empty_quantizer():
    a = torch.tensor([[[0, 0], [1, 1]]])
    b = torch.tensor([[[2, 2], [1, 1]]])
    total = code_histogram(a, 3) + code_histogram(b, 3)
    assert total.tolist() == [[2, 0, 2], [0, 4, 0]]
    empty = codebook_stats(torch.zeros(1, 5, dtype=torch.long))[0]
    assert empty == {"usage": 0.0, "dead_codes": 5, "perplexity": None, "entropy_normalized": None}


def test_bad_input_raises():
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        code_histogram(torch.tensor([[[0, 4]]]), 4)
    with pytest.raises(ValueError, match="codebook_size"):
        codebook_stats(torch.zeros(1, 2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="expected 8"):
        codebook_stats(torch.zeros(2, 4, dtype=torch.long), 8)
