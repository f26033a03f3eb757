"""A small client of ``python -m luna.serve`` (protocol: docs/streaming.md "Server (WebSocket)").

``tokenize_stream(url, audio, sr)`` streams chunks and collects codes as they arrive; ``tokenize_turn`` sends one
utterance and gets all codes and the reconstruction; ``speak(url, codes)`` sends codes and gets their audio
(``speak_on`` does it on an open connection, between utterances: a dialogue's loop). ``stream_async`` is the asyncio core (many streams in one
loop, per-chunk latencies). ``python -m luna.client URL FILE [--turn] [--audio] [--token T]`` prints a summary.
A server started with a token needs it: ``token=`` (sent as the header ``Authorization: Bearer TOKEN``); the
command line reads ``--token`` or the environment variable ``LUNA_SERVE_TOKEN``.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidHandshake

from luna.cli import entry_point
from luna.errors import ConfigError, ServerError, one_line
from luna.serving.protocol import encode_pcm, parse_audio_frame


@dataclass
class Result:
    codes: torch.Tensor  # [1, n, T] LongTensor, frames in utterance order
    audio: Optional[torch.Tensor]  # [1, S] float32 at ready["sample_rate"], or None
    ready: Dict[str, Any]  # the server's ready message (model info)
    done: Dict[str, Any]  # the server's done message ({"frames": T, "samples": S})
    latencies: List[float] = field(default_factory=list)  # stream: seconds from sending chunk k to its codes reply


def _raise_if_error(msg: Dict[str, Any]) -> None:
    if msg.get("type") == "error":
        raise ServerError(msg.get("code", "?"), msg.get("message", ""))


class _AudioIn:
    """The binary audio frames of one answer, each checked to start where the previous one ended."""

    def __init__(self) -> None:
        self.pieces: List[np.ndarray] = []
        self.samples = 0

    def add(self, message: bytes) -> None:
        index, x = parse_audio_frame(message)
        if index != self.samples:
            raise ServerError("out_of_order", f"audio at sample {index}, expected {self.samples}")
        self.pieces.append(x)
        self.samples += len(x)


async def stream_async(url: str, audio: Any, sample_rate: int, *, mode: str = "stream", chunk_ms: float = 40.0,
                       audio_out: bool = False, fmt: str = "f32le", num_quantizers: Optional[int] = None,
                       realtime: bool = False, token: Optional[str] = None) -> Result:
    """Send ``audio [S]`` in ``chunk_ms`` chunks (paced at real time if ``realtime``), then ``end``; collect replies."""
    pcm = encode_pcm(audio, fmt)  # bytes
    width = 4 if fmt == "f32le" else 2
    step = max(1, int(sample_rate * chunk_ms / 1000)) * width
    chunks = [pcm[i:i + step] for i in range(0, len(pcm), step)]
    hello = {"type": "hello", "mode": mode, "sample_rate": int(sample_rate), "format": fmt, "audio": audio_out}
    if num_quantizers is not None:
        hello["num_quantizers"] = num_quantizers
    headers = {"Authorization": f"Bearer {token}"} if token else None
    async with connect(url, max_size=None, additional_headers=headers) as ws:
        await ws.send(json.dumps(hello))
        ready = json.loads(await ws.recv())
        _raise_if_error(ready)
        sent: List[float] = []

        async def send() -> None:
            t0 = time.perf_counter()
            for k, c in enumerate(chunks):
                if realtime:
                    await asyncio.sleep(max(0.0, t0 + k * chunk_ms / 1000 - time.perf_counter()))
                sent.append(time.perf_counter())
                await ws.send(c)  # awaits while the server pushes back
            await ws.send(json.dumps({"type": "end"}))

        sender = asyncio.create_task(send())
        codes: List[torch.Tensor] = []  # each [n, t]
        audio_in = _AudioIn()
        frames, latencies = 0, []
        try:
            while True:
                message = await ws.recv()
                if isinstance(message, bytes):
                    audio_in.add(message)
                    continue
                msg = json.loads(message)
                _raise_if_error(msg)
                if msg["type"] == "done":
                    break
                c = torch.tensor(msg["codes"], dtype=torch.long).reshape(ready["num_quantizers"], -1)  # [n, t]
                if msg["index"] != frames:
                    raise ServerError("out_of_order", f"codes at frame {msg['index']}, expected {frames}")
                if "chunk" in msg:
                    latencies.append(time.perf_counter() - sent[msg["chunk"]])
                codes.append(c)
                frames += c.shape[-1]
        finally:
            sender.cancel()
        n = ready["num_quantizers"]
        all_codes = torch.cat(codes, -1)[None] if codes else torch.zeros(1, n, 0, dtype=torch.long)
        rec = torch.from_numpy(np.concatenate(audio_in.pieces))[None] if audio_in.pieces else None
        return Result(all_codes, rec, ready, msg, latencies)


def tokenize_stream(url: str, audio: Any, sample_rate: int, chunk_ms: float = 40.0, audio_out: bool = False,
                    token: Optional[str] = None) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Stream ``audio [S]``: (codes ``[1, n, T]``, reconstruction ``[1, S']`` or None)."""
    r = asyncio.run(stream_async(url, audio, sample_rate, chunk_ms=chunk_ms, audio_out=audio_out, token=token))
    return r.codes, r.audio


def tokenize_turn(url: str, audio: Any, sample_rate: int, audio_out: bool = True,
                  token: Optional[str] = None) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """One utterance: (codes ``[1, n, T]`` = ``tokenize``, reconstruction ``[1, T × samples_per_token]`` or None)."""
    r = asyncio.run(stream_async(url, audio, sample_rate, mode="turn", chunk_ms=1000.0, audio_out=audio_out, token=token))
    return r.codes, r.audio


async def speak_on(ws: Any, codes: Any) -> Tuple[torch.Tensor, Dict[str, Any]]:
    """On an open connection, between utterances: speak codes ``[n, T]``; (audio ``[1, S]``, the done message)."""
    await ws.send(json.dumps({"type": "speak", "codes": torch.as_tensor(codes).tolist()}, separators=(",", ":")))
    audio_in = _AudioIn()
    while True:
        message = await ws.recv()
        if isinstance(message, bytes):
            audio_in.add(message)
            continue
        msg = json.loads(message)
        _raise_if_error(msg)
        if msg["type"] == "done":
            audio = np.concatenate(audio_in.pieces) if audio_in.pieces else np.zeros(0, np.float32)
            return torch.from_numpy(audio)[None], msg


async def speak_async(url: str, codes: Any, token: Optional[str] = None) -> Tuple[torch.Tensor, Dict[str, Any]]:
    """A speak connection: codes ``[1, n, T]`` or ``[n, T]`` → (audio ``[1, S]`` at ready["sample_rate"], ready)."""
    codes = torch.as_tensor(codes)
    headers = {"Authorization": f"Bearer {token}"} if token else None
    async with connect(url, max_size=None, additional_headers=headers) as ws:
        await ws.send(json.dumps({"type": "hello", "mode": "speak"}))
        ready = json.loads(await ws.recv())
        _raise_if_error(ready)
        audio, _ = await speak_on(ws, codes[0] if codes.dim() == 3 else codes)
        return audio, ready


def speak(url: str, codes: Any, token: Optional[str] = None) -> torch.Tensor:
    """Codes ``[1, n, T]`` (e.g. a speech LM's reply) → the server's audio ``[1, T × samples_per_token]`` =
    ``detokenize(codes)``."""
    return asyncio.run(speak_async(url, codes, token=token))[0]


def parser() -> argparse.ArgumentParser:
    """The command line of ``python -m luna.client`` (tests/test_docs.py parses the documented commands with it)."""
    p = argparse.ArgumentParser(prog="python -m luna.client", description="Tokenize a file on a luna server.")
    p.add_argument("url")
    p.add_argument("file")
    p.add_argument("--turn", action="store_true", help="turn mode (default: stream)")
    p.add_argument("--audio", action="store_true", help="also receive the reconstruction")
    p.add_argument("--chunk-ms", type=float, default=40.0)
    p.add_argument("--token", default=os.environ.get("LUNA_SERVE_TOKEN"), help="the server's token (default: $LUNA_SERVE_TOKEN)")
    return p


@entry_point
def main(argv: Optional[List[str]] = None) -> None:
    from luna import audio as audio_io

    a = parser().parse_args(argv)
    wav, sr = audio_io.load(a.file)
    try:
        r = asyncio.run(stream_async(a.url, wav, sr, mode="turn" if a.turn else "stream", chunk_ms=a.chunk_ms,
                                     audio_out=a.audio, token=a.token))
    except (OSError, InvalidHandshake) as e:  # refused (no server, 401, 403): a user error (one line, exit 2)
        raise ConfigError(f"{a.url}: cannot connect ({one_line(e)})") from None
    print(f"{r.codes.shape[-1]} frames x {r.codes.shape[1]} quantizers ({r.ready['frame_rate']:.4g} tokens/s)")
    print("first codes:", r.codes[0, :, :8].tolist())
    if r.latencies:
        print(f"chunk latency p50 {np.percentile(r.latencies, 50) * 1e3:.1f} ms, p95 {np.percentile(r.latencies, 95) * 1e3:.1f} ms")
    if r.audio is not None:
        print(f"audio: {r.audio.shape[-1]} samples at {r.ready['sample_rate']} Hz")


if __name__ == "__main__":
    main()
