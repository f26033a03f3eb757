"""The tokenizer's objective: masked mel reconstruction + commitment, weighted by the ``loss`` config node.

``SpeechTokenizer.forward`` returns what the network computed (mel, reconstruction, codes, commitment);
:class:`MelLoss` turns that into the scalar the trainer minimises and the named, unweighted terms it logs.
Padded frames (past each item's ``lengths``) are masked out of every mel term.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from luna.config import LossConfig, typed


class MelLoss:
    """``loss = mel_l1·L1 + mel_mse·MSE + commitment·C (+ multiscale_mel·L1 of 2×/4× time-pooled mels)``."""

    def __init__(self, weights: Any = None, hop_length: int = 256):
        self.w = typed(LossConfig, weights if weights is not None else LossConfig())
        self.hop_length = int(hop_length)

    def mask(self, mel: torch.Tensor, lengths: Optional[torch.Tensor]) -> torch.Tensor:
        """``[B, 1, T]``: 1 on frames inside each item's ``lengths`` (valid samples), 0 on padding."""
        if lengths is None:
            return torch.ones_like(mel[:, :1, :], dtype=torch.float32)
        frames = (lengths.to(mel.device) // self.hop_length).clamp(min=1)
        return (torch.arange(mel.shape[-1], device=mel.device)[None, :] < frames[:, None]).float()[:, None, :]

    def __call__(self, out: Any, lengths: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """``out``: a :class:`~luna.models.tokenizer.TokenizerOutput`. Returns (weighted loss, unweighted terms)."""
        mel, hat = out.mel.float(), out.mel_hat.float()  # [B, M, T]
        mask = self.mask(mel, lengths)
        denom = (mask.sum() * mel.shape[1]).clamp(min=1)
        diff = (hat - mel) * mask
        terms = {"mel_l1": diff.abs().sum() / denom, "mel_mse": diff.pow(2).sum() / denom, "commitment": out.commitment}
        w = self.w
        loss = w.mel_l1 * terms["mel_l1"] + w.mel_mse * terms["mel_mse"] + w.commitment * terms["commitment"]
        if w.multiscale_mel > 0:
            ms = 0.0
            for k in (2, 4):
                ms = ms + (F.avg_pool1d(hat * mask, k) - F.avg_pool1d(mel * mask, k)).abs().mean()
            terms["multiscale_mel"] = ms / 2
            loss = loss + w.multiscale_mel * terms["multiscale_mel"]
        return loss, terms
