"""Per-utterance model state of one connection: a streaming session or a turn (whole-utterance) session.

Both run off the event loop (model work on the server's compute workers) and are used by one connection at a
time (its jobs run one after another, in arrival order). ``push`` takes one chunk of PCM ``[S]`` at the client's rate,
``flush`` ends the utterance; each returns an :class:`Output` (possibly empty) to send.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional

import torch

from luna.errors import ConfigError
from luna.serving.protocol import Hello, ProtocolError


@dataclass
class Output:
    index: int  # utterance frame index of codes[:, 0]
    codes: torch.Tensor  # [n, t] LongTensor, t >= 0
    audio_index: int = 0  # utterance sample index (model rate) of audio[0]
    audio: Optional[torch.Tensor] = None  # [s] float32 reconstruction at the model rate, or None


def concat(outputs: List[Output]) -> Output:
    """Consecutive outputs of one session (a chunk pushed in pieces) → one."""
    first = outputs[0]
    audio = [o.audio for o in outputs if o.audio is not None]
    return Output(first.index, torch.cat([o.codes for o in outputs], -1), first.audio_index,
                  torch.cat(audio) if audio else None)


class StreamSession:
    """Causal streaming: codes as soon as they are final (``tok.stream_encoder``), audio via ``tok.stream_decoder``.

    The concatenated codes equal ``tok.tokenize(whole_utterance, sample_rate)`` for a causal model.
    """

    def __init__(self, tok, hello: Hello):
        self.tok, self.hello = tok, hello
        try:
            self.encoder = tok.stream_encoder(hello.sample_rate)
            self.decoder = tok.stream_decoder() if hello.audio else None
        except ConfigError as e:  # e.g. a non-causal model, or a vocoder that cannot stream
            raise ProtocolError("unsupported_mode", f"stream mode is not available for this model: {e}") from None
        self.frames = 0  # codes sent so far
        self.samples = 0  # reconstruction samples sent so far

    @property
    def latency_ms(self) -> Optional[float]:
        value = getattr(self.encoder, "latency_ms", getattr(self.tok, "latency_ms", None))  # algorithmic, ms
        return float(value) if value is not None and math.isfinite(value) else None

    def _out(self, codes: torch.Tensor, final: bool) -> Output:
        codes = self.take(codes)
        out = self.codes_out(codes)
        if self.decoder is not None:
            parts = [self.decoder.push(codes[None])] if codes.shape[-1] else []
            if final:
                parts.append(self.decoder.flush())
            self.audio_out(out, parts)
        return out

    def take(self, codes: torch.Tensor) -> torch.Tensor:
        """The encoder's codes ``[1, N, t]`` → the ``[n, t]`` this client asked for."""
        return codes[0, : self.hello.num_quantizers or codes.shape[1]]

    def codes_out(self, codes: torch.Tensor) -> Output:
        out = Output(self.frames, codes.cpu(), self.samples)
        self.frames += codes.shape[-1]
        return out

    def audio_out(self, out: Output, parts: List[torch.Tensor]) -> None:
        """The decoder's audio pieces ``[1, s_i]`` → ``out.audio`` ``[s]``."""
        out.audio = torch.cat([p.reshape(-1).float().cpu() for p in parts]) if parts else torch.zeros(0)
        self.samples += out.audio.numel()

    @torch.no_grad()
    def push(self, pcm: torch.Tensor) -> Output:
        return self._out(self.encoder.push(pcm), final=False)

    @torch.no_grad()
    def flush(self) -> Output:
        return self._out(self.encoder.flush(), final=True)


class TurnSession:
    """Whole utterances: buffers the PCM, then ``tokenize`` (and ``detokenize``) it at ``end``."""

    def __init__(self, tok, hello: Hello, max_seconds: float):
        self.tok, self.hello = tok, hello
        self.max_samples = int(max_seconds * hello.sample_rate)
        self.chunks: List[torch.Tensor] = []  # each [S_i] at the client's rate
        self.length = 0
        self.latency_ms = None  # a turn answers after the end of the utterance

    def push(self, pcm: torch.Tensor) -> Output:
        self.length += pcm.numel()
        if self.length > self.max_samples:
            raise ProtocolError("turn_too_long", f"the utterance exceeds max_turn_seconds ({self.max_samples} samples at {self.hello.sample_rate} Hz)")
        self.chunks.append(pcm)
        return Output(0, torch.zeros(0, 0, dtype=torch.long))

    @torch.no_grad()
    def flush(self) -> Output:
        audio = torch.cat(self.chunks) if self.chunks else torch.zeros(0)  # [S]
        self.chunks, self.length = [], 0
        codes = self.tok.tokenize(audio, self.hello.sample_rate, self.hello.num_quantizers)[0]  # [n, T]
        rec = self.tok.detokenize(codes[None])[0].float().cpu() if self.hello.audio else None  # [T * samples_per_token]
        return Output(0, codes.cpu(), 0, rec)


class Speech:
    """A ``speak`` request: codes ``[n, T]`` → the reconstruction at the model rate, as jobs of at most ``frames``
    tokens each. With a vocoder that streams, each job pushes its tokens through ``tok.stream_decoder`` (the last
    one also flushes it); otherwise one job runs ``tok.detokenize`` on all of them. Either way the audio,
    concatenated, is ``detokenize(codes)``."""

    def __init__(self, tok, codes: torch.Tensor, frames: int):
        self.tok, self.codes, self.frames = tok, codes.to(tok.device), max(1, int(frames))
        try:
            self.decoder = tok.stream_decoder()
        except ConfigError:  # Griffin-Lim iterates over the whole spectrogram: it cannot stream
            self.decoder = None

    def jobs(self) -> List[tuple]:
        """``[(audio seconds, fn)]`` in order; ``fn()`` → audio ``[s]`` float32."""
        total = self.codes.shape[-1]
        seconds = self.tok.samples_per_token / self.tok.sample_rate
        if self.decoder is None:
            return [(total * seconds, self.detokenize)]
        starts = range(0, total, self.frames)
        return [(min(self.frames, total - a) * seconds, lambda a=a: self.push(a, a + self.frames >= total)) for a in starts]

    @torch.no_grad()
    def detokenize(self) -> torch.Tensor:
        return self.tok.detokenize(self.codes[None])[0].float().cpu()

    @torch.no_grad()
    def push(self, start: int, last: bool) -> torch.Tensor:
        parts = [self.decoder.push(self.codes[None, :, start:start + self.frames])]
        if last:
            parts.append(self.decoder.flush())
        return torch.cat([p.reshape(-1).float().cpu() for p in parts])


class NoSession:
    """A speak connection: no PCM, so no utterance state (its requests are :class:`Speech`)."""

    latency_ms = None


def new_session(tok, hello: Hello, max_turn_seconds: float):
    """The session for ``hello.mode`` (raises :class:`ProtocolError` when the model cannot serve it)."""
    if hello.mode == "stream":
        return StreamSession(tok, hello)
    if hello.mode == "speak":
        return NoSession()
    return TurnSession(tok, hello, max_turn_seconds)
