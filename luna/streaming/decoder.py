"""Streaming decoding of a causal model: codes → log-mel (→ audio through a :class:`StreamingVocoder`).

The causal decoder (luna/models/causal.py) is a chain of valid convolutions: the stream runs it as stateful
layers (luna/streaming/stateful.py), each convolution keeping the (k-1)·d input frames it still needs, so t new
tokens cost exactly the t·s new mel frames (no recomputed context). A new stream starts by pushing the
``context`` zero latents the whole-clip ``decode_mel`` pads with (they give no frame). Streamed mel equals
``decode_mel`` to float rounding (the shapes differ).
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from luna.models.causal import CausalDecoder, CausalResBlock, ChannelNorm
from luna.streaming.encoder import BlockEncoder
from luna.streaming.stateful import Chain, Drop, Pointwise, Residual, conv
from luna.streaming.vocoder import StreamingVocoder


def _streamed(m: nn.Module) -> Any:
    """A module of the causal decoder as stream layers."""
    if isinstance(m, (nn.Conv1d, nn.ConvTranspose1d)):
        return conv(m)
    if isinstance(m, nn.Sequential):
        return Chain([_streamed(c) for c in m])
    if isinstance(m, CausalResBlock):  # x[..., context:] + block(x)
        return Residual(_streamed(m.block), drop=m.context)
    if isinstance(m, (ChannelNorm, nn.GELU, nn.Identity)):  # per frame
        return Pointwise(m)
    raise TypeError(f"cannot stream a {type(m).__name__}")


def stream_causal_decoder(d: CausalDecoder) -> Chain:
    """``CausalDecoder.valid`` as stateful stream layers: latents ``[1, D, t]`` → frames ``[1, H, t·s]``."""
    up = [conv(d.up, pad=d.stride)] if d.stride > 1 else []  # up(x)[..., s:-s]: padding s crops as much
    return Chain([conv(d.conv_in), _streamed(d.pre), *up, Drop(d.crop), _streamed(d.post), _streamed(d.out)])


class StreamingDecoder:
    """``push(codes [1, n, t]) → audio [1, samples]``; ``push_mel(codes) → log-mel [1, M, t·s]``; ``flush()``.

    ``vocoder``: None (the tokenizer's configured vocoder), a vocoder module, or False (mel only). ``lookahead``:
    None (the vocoder's fixed, exact lookahead; a shorter one is refused). ``last_mel`` holds the latest chunk's mel.
    """

    def __init__(self, tok: Any, vocoder: Any = None, lookahead: Optional[int] = None):
        BlockEncoder(tok)  # the same ConfigError for a non-causal model
        self.tok = tok
        self.layers = stream_causal_decoder(tok.decoder)
        self.vocoder = None
        if vocoder is not False:
            self.vocoder = StreamingVocoder(tok.vocoder if vocoder is None else vocoder.to(tok.device, tok.dtype).eval(), lookahead)
        self.reset()

    def reset(self) -> None:
        d = self.tok.decoder
        dim = self.tok.quantizer.layers[0].codebook.shape[-1]
        self.layers.reset()
        with torch.no_grad():  # the whole clip's left zero padding: fills every layer's past, gives no frame
            self.layers.step(torch.zeros(1, dim, d.context, device=self.tok.device, dtype=self.tok.dtype))
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
        self.last_mel = self.layers.step(tok.quantizer.decode(codes)) * tok._scale + tok._offset
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
