"""Streaming tokenization of a causal model, with codes bit-identical to ``SpeechTokenizer.tokenize``.

Why blocks: float convolutions and matmuls over different lengths may round differently (oneDNN/BLAS pick
their blocking by shape), which would flip argmin codes. So a causal model computes codes in *blocks* of
``block_tokens`` tokens, each from one fixed-shape window of samples: ``context`` past samples (the mel
frame's left pad + the encoder's receptive field, zeros before the stream starts) + the block's own
samples (zeros past what has arrived). ``tokenize`` on a whole file runs the same windows one by one
(:func:`tokenize_blockwise`), and a stream recomputes the current block whenever one of its tokens becomes
final, so every code comes out of the same operations on the same numbers whatever the chunking.
Causality makes the zeros past the end harmless: a token reads no sample after its own last one.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F

from luna.errors import ConfigError
from luna.streaming.resample import StreamingResampler


class BlockEncoder:
    """The fixed-shape window → codes step shared by whole-file and streamed tokenization of a causal model."""

    def __init__(self, tok: Any):
        if not tok.config.causal:
            raise ConfigError("model.causal=false: streaming needs a causal model (its GroupNorm and centred "
                              "convs read the future); use a causal preset such as model=rvq8_causal")
        self.tok = tok
        mel = tok.config.mel
        s = tok.config.encoder_stride
        ctx_frames = tok.encoder.context  # past mel frames a token reads besides its own
        self.block_tokens = max(1, math.ceil(ctx_frames / s))  # a window is about half context, half new
        self.block_samples = self.block_tokens * tok.samples_per_token
        self.context = ctx_frames * mel.hop_length + mel.n_fft - mel.hop_length  # past samples a block reads
        self.window = self.context + self.block_samples

    @torch.no_grad()
    def encode(self, window: torch.Tensor, num_quantizers: Optional[int] = None) -> torch.Tensor:
        """Samples ``[window]`` (zeros where nothing is known) → codes ``[1, N, block_tokens]``."""
        tok = self.tok
        mel = tok.mel.frames(window.reshape(1, -1))  # [1, M, ctx_frames + block_tokens·s]
        z = tok.encoder.valid((mel - tok._offset) / tok._scale)  # [1, D, block_tokens]
        return tok.quantizer.encode(z, num_quantizers)


def tokenize_blockwise(tok: Any, x: torch.Tensor, num_quantizers: Optional[int] = None) -> torch.Tensor:
    """Audio ``[B, S]`` at the model rate, S a multiple of samples_per_token → codes ``[B, N, S / spt]``."""
    blocks = BlockEncoder(tok)
    tokens = x.shape[-1] // tok.samples_per_token
    n = math.ceil(tokens / blocks.block_tokens)
    out = []
    for row in x.float():  # one stream per row: the same shapes as a stream of batch 1
        padded = F.pad(row, (blocks.context, n * blocks.block_samples - row.shape[-1]))
        codes = [blocks.encode(padded[k * blocks.block_samples : k * blocks.block_samples + blocks.window],
                               num_quantizers) for k in range(n)]
        out.append(torch.cat(codes, dim=-1)[..., :tokens])  # [1, N, tokens]
    return torch.cat(out, dim=0)


def as_samples(chunk: Any, device: torch.device) -> torch.Tensor:
    """A 1-D (or ``[1, S]``) chunk of PCM, torch or numpy → float32 ``[S]`` on ``device``."""
    if isinstance(chunk, np.ndarray):
        chunk = torch.from_numpy(np.ascontiguousarray(chunk))
    if not torch.is_tensor(chunk):
        raise TypeError(f"a chunk must be a tensor or numpy array, got {type(chunk).__name__}")
    if chunk.dim() == 2 and chunk.shape[0] == 1:
        chunk = chunk[0]
    if chunk.dim() != 1:
        raise ValueError(f"a chunk must be 1-D mono samples [S], got shape {tuple(chunk.shape)}")
    return chunk.to(device=device, dtype=torch.float32)


class StreamingEncoder:
    """``push(pcm) → codes [1, N, t]`` (the tokens that became final), ``flush() → the rest``.

    Concatenated, the codes of one stream equal ``tok.tokenize(whole, sample_rate)`` exactly at the model's
    rate (``torch.equal``; tests/streaming/test_encoder.py); at another rate the incremental resampler matches
    the whole-file one to float rounding, which can flip a few codes. ``flush`` pads the tail with zeros to a
    whole token as ``tokenize`` does, then the object is ready for a new stream.
    """

    def __init__(self, tok: Any, sample_rate: int, num_quantizers: Optional[int] = None):
        self.blocks = BlockEncoder(tok)
        self.tok = tok
        self.num_quantizers = num_quantizers
        self.resampler = StreamingResampler(int(sample_rate), tok.sample_rate, tok.device)
        self.reset()

    def reset(self) -> None:
        self.resampler.reset()
        b = self.blocks
        self.buffer = torch.zeros(b.context, device=self.tok.device)  # padded samples from `start` on
        self.start = 0  # padded index of buffer[0]; padded index = sample index + context
        self.received = 0  # samples (model rate) so far
        self.emitted = 0  # tokens returned so far

    def push(self, chunk: Any) -> torch.Tensor:
        """1-D PCM at the stream's rate → codes ``[1, N, t]`` of the tokens completed by it (t ≥ 0)."""
        return self._feed(self.resampler.push(as_samples(chunk, self.tok.device)))

    def flush(self) -> torch.Tensor:
        """The remaining codes (tail zero-padded to a whole token, as ``tokenize`` pads); then reset."""
        x = self.resampler.flush()
        spt = self.tok.samples_per_token
        total = self.received + x.shape[-1]
        pad = (-total) % spt if total else spt  # an empty stream is one token of silence, like tokenize
        codes = self._feed(F.pad(x, (0, pad)))
        self.reset()
        return codes

    def _feed(self, x: torch.Tensor) -> torch.Tensor:
        b, spt = self.blocks, self.tok.samples_per_token
        self.buffer = torch.cat([self.buffer, x])
        self.received += x.shape[-1]
        final = self.received // spt
        out = []
        while self.emitted < final:
            k = self.emitted // b.block_tokens
            lo = k * b.block_samples - self.start  # block k's window within the buffer
            window = self.buffer[lo : lo + b.window]
            window = F.pad(window, (0, b.window - window.shape[-1]))  # zeros past what has arrived
            codes = b.encode(window, self.num_quantizers)  # [1, N, block_tokens]
            end = min(final, (k + 1) * b.block_tokens)
            out.append(codes[..., self.emitted - k * b.block_tokens : end - k * b.block_tokens])
            self.emitted = end
        keep = (self.emitted // b.block_tokens) * b.block_samples  # the current block's window start
        if keep > self.start:
            self.buffer = self.buffer[keep - self.start :]
            self.start = keep
        if out:
            return torch.cat(out, dim=-1)
        n = self.num_quantizers or self.tok.num_quantizers
        return torch.zeros(1, n, 0, dtype=torch.long, device=self.tok.device)
