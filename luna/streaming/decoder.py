"""Streaming decoding of a causal model: codes → log-mel (→ audio through a :class:`StreamingVocoder`).

The causal decoder's valid chain (luna/models/causal.py) turns ``context`` past latent tokens + t new ones into
exactly the t·s new mel frames; the stream keeps those past latents (zeros before the stream starts, as the
whole-clip ``decode_mel`` pads). Streamed mel equals ``decode_mel`` to float rounding (the shapes differ).
"""
from __future__ import annotations

from typing import Any, Optional

import torch

from luna.streaming.encoder import BlockEncoder
from luna.streaming.vocoder import StreamingVocoder


class StreamingDecoder:
    """``push(codes [1, n, t]) → audio [1, samples]``; ``push_mel(codes) → log-mel [1, M, t·s]``; ``flush()``.

    ``vocoder``: None (the tokenizer's configured vocoder), a vocoder module, or False (mel only). ``lookahead``:
    vocoder frames to wait for (default: its receptive field, exact). ``last_mel`` holds the latest chunk's mel.
    """

    def __init__(self, tok: Any, vocoder: Any = None, lookahead: Optional[int] = None):
        BlockEncoder(tok)  # the same ConfigError for a non-causal model
        self.tok = tok
        self.vocoder = None
        if vocoder is not False:
            self.vocoder = StreamingVocoder(tok.vocoder if vocoder is None else vocoder.to(tok.device, tok.dtype).eval(), lookahead)
        self.reset()

    def reset(self) -> None:
        d = self.tok.decoder
        dim = self.tok.quantizer.layers[0].codebook.shape[-1]
        self.history = torch.zeros(1, dim, d.context, device=self.tok.device, dtype=self.tok.dtype)  # [1, D, context] past latents
        self.last_mel: Optional[torch.Tensor] = None
        self.skip = self.tok.frame_offset  # samples still to drop: the alignment ``detokenize`` applies
        if self.vocoder is not None:
            self.vocoder.reset()

    @torch.no_grad()
    def push_mel(self, codes: torch.Tensor) -> torch.Tensor:
        """codes ``[1, n, t]`` → log-mel ``[1, n_mels, t · encoder_stride]`` of those tokens."""
        tok = self.tok
        codes = codes.to(tok.device).long()
        if codes.shape[-1] == 0:
            self.last_mel = torch.zeros(1, tok.config.mel.n_mels, 0, device=tok.device, dtype=tok.dtype)
            return self.last_mel
        z = torch.cat([self.history, tok.quantizer.decode(codes)], dim=-1)  # [1, D, context + t]
        self.history = z[..., z.shape[-1] - tok.decoder.context :]
        self.last_mel = tok.decoder.valid(z) * tok._scale + tok._offset
        return self.last_mel

    def push(self, codes: torch.Tensor) -> torch.Tensor:
        """codes ``[1, n, t]`` → the audio ``[1, samples]`` that became final (the vocoder's lookahead lags)."""
        return self._aligned(self._vocoder().push(self.push_mel(codes)))

    def flush(self) -> torch.Tensor:
        """The remaining audio (ending with the ``frame_offset`` zeros ``detokenize`` ends with); then ready for a
        new stream."""
        out = None
        if self.vocoder is not None:
            out = self._aligned(self.vocoder.flush())
            out = torch.cat([out, out.new_zeros(1, self.tok.frame_offset)], dim=-1)
        self.reset()
        return out

    def _aligned(self, audio: torch.Tensor) -> torch.Tensor:
        """Drop the stream's first ``frame_offset`` samples (causal frames sit that early; see ``tok.vocode``)."""
        k = min(self.skip, audio.shape[-1])
        self.skip -= k
        return audio[..., k:]

    def _vocoder(self) -> StreamingVocoder:
        if self.vocoder is None:
            raise ValueError("this stream decoder has no vocoder (vocoder=False): use push_mel")
        return self.vocoder
