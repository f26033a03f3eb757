"""The wire protocol of ``python -m luna.serve``: message schema, validation and encodings.

Client → server: a JSON ``hello``, then binary frames of PCM (mono, ``f32le`` or ``s16le`` at the hello's
``sample_rate``), then JSON ``{"type": "end"}``; after the server's ``done`` another utterance may follow on the
same connection (same hello). Between utterances a JSON ``{"type": "speak", "codes": [[...], ...]}`` (codes
``[n][T]``) asks the server to speak codes: audio frames, then ``done`` (a ``"mode": "speak"`` hello, which needs
no sample rate, opens a connection for that alone). Server → client: JSON ``ready``, ``codes``, ``done``, ``error``; reconstructed
audio travels as binary frames: an 8-byte little-endian uint64 (index of the first sample of the utterance's
reconstruction) followed by float32 little-endian samples at the model rate. The table is in docs/streaming.md.

Every violation is a :class:`ProtocolError` with a stable ``code``; the server answers it with
``{"type": "error", "code", "message"}`` and closes that connection (1008; 1013 when the server is full),
never the server.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence

import numpy as np
import torch

MODES = ("stream", "turn", "speak")  # speak: codes in, audio out (no PCM in)
FORMATS = {"f32le": np.dtype("<f4"), "s16le": np.dtype("<i2")}  # bytes per sample: 4, 2
AUDIO_HEADER = struct.Struct("<Q")  # first sample index of a binary audio frame
CLOSE_POLICY = 1008  # a client that broke the protocol
CLOSE_INTERNAL = 1011  # the server failed (a bug; logged with its traceback)
CLOSE_TRY_AGAIN = 1013  # the server is full (max_connections, max_buffered_bytes): try again later


class ProtocolError(Exception):
    """A client message the server refuses: ``code`` is stable (docs/streaming.md, "Protocol"), ``message`` one line."""

    def __init__(self, code: str, message: str, close: int = CLOSE_POLICY):
        super().__init__(message)
        self.code = code
        self.close = close  # the close code that follows the JSON error

    def to_json(self) -> str:
        return json.dumps({"type": "error", "code": self.code, "message": " ".join(str(self).split())})


@dataclass(frozen=True)
class Hello:
    mode: str  # stream | turn | speak
    sample_rate: Optional[int]  # of the client's PCM (None in speak mode, which sends none)
    format: str  # f32le | s16le
    audio: bool  # also send the reconstruction
    num_quantizers: Optional[int]  # None: all of the model's

    @property
    def sample_width(self) -> int:
        return FORMATS[self.format].itemsize


def parse_json(text: str) -> Dict[str, Any]:
    """A text frame → its JSON object with a string ``type``."""
    try:
        msg = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise ProtocolError("bad_json", f"a text frame is not JSON: {e}") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise ProtocolError("bad_json", 'a text frame must be a JSON object with a string "type"')
    return msg


def parse_hello(msg: Dict[str, Any], sample_rates: Sequence[int], model_quantizers: int) -> Hello:
    """Validate a ``hello`` against the server's accepted rates and the model's quantizer count."""
    unknown = sorted(set(msg) - {"type", "mode", "sample_rate", "format", "audio", "num_quantizers", "token"})
    if unknown:
        raise ProtocolError("bad_hello", f"unknown hello field(s): {', '.join(unknown)}")
    mode = msg.get("mode")
    if not isinstance(mode, str) or mode not in MODES:
        raise ProtocolError("bad_hello", f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    rate = msg.get("sample_rate")
    if rate is None and mode == "speak":
        pass  # a speak connection sends codes, not PCM
    elif not isinstance(rate, int) or isinstance(rate, bool):
        raise ProtocolError("bad_hello", f"sample_rate must be an integer, got {rate!r}")
    elif rate not in list(sample_rates):
        accepted = ", ".join(str(r) for r in sample_rates)
        raise ProtocolError("unsupported_rate", f"sample_rate {rate} is not served (accepted: {accepted})")
    fmt = msg.get("format", "f32le")
    if not isinstance(fmt, str) or fmt not in FORMATS:  # a list or dict is unhashable: check the type first
        raise ProtocolError("unsupported_format", f"format must be f32le or s16le, got {fmt!r}")
    audio = msg.get("audio", mode != "stream")
    if not isinstance(audio, bool):
        raise ProtocolError("bad_hello", f"audio must be true or false, got {audio!r}")
    n = msg.get("num_quantizers")
    if not isinstance(msg.get("token", ""), str):
        raise ProtocolError("bad_hello", "token must be a string")  # its value is never echoed
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= model_quantizers):
        raise ProtocolError("bad_hello", f"num_quantizers must be 1..{model_quantizers} or absent, got {n!r}")
    return Hello(mode, rate, fmt, audio, n)


def check_chunk(data: bytes, hello: Optional[Hello], max_chunk_bytes: int) -> None:
    """A binary frame is PCM only after a hello, at most ``max_chunk_bytes``, whole samples of the format."""
    if hello is None:
        raise ProtocolError("binary_before_hello", "a binary frame arrived before the hello")
    if hello.mode == "speak":
        raise ProtocolError("unsupported_mode", "a speak connection sends codes (speak messages), not audio")
    if len(data) > max_chunk_bytes:
        raise ProtocolError("chunk_too_large", f"a chunk of {len(data)} bytes exceeds max_chunk_bytes={max_chunk_bytes}")
    if len(data) % hello.sample_width:
        raise ProtocolError(
            "bad_alignment", f"a chunk of {len(data)} bytes is not whole {hello.format} samples ({hello.sample_width} bytes each)"
        )


def parse_codes(msg: Dict[str, Any], model_quantizers: int, codebook_size: int) -> torch.Tensor:
    """A ``speak`` message's codes → LongTensor ``[n, T]`` (1 <= n <= the model's quantizers, T >= 1, every code in
    0 .. codebook_size - 1); anything else is ``bad_input``."""
    unknown = sorted(set(msg) - {"type", "codes"})
    if unknown:
        raise ProtocolError("bad_input", f"unknown speak field(s): {', '.join(unknown)}")
    try:
        codes = np.asarray(msg.get("codes"))
    except (ValueError, TypeError, OverflowError):  # ragged rows
        codes = np.zeros(0)
    if codes.ndim != 2 or codes.dtype.kind not in "iu" or not 1 <= codes.shape[0] <= model_quantizers or not codes.shape[1]:
        raise ProtocolError("bad_input", f"speak codes must be integers [n][T] with 1 <= n <= {model_quantizers} "
                            f"and T >= 1 (got shape {list(codes.shape)}, {codes.dtype.name})")
    if codes.min() < 0 or codes.max() >= codebook_size:
        raise ProtocolError("bad_input", f"speak codes must be in 0..{codebook_size - 1}, got {codes.min()}..{codes.max()}")
    return torch.from_numpy(codes.astype(np.int64))


def decode_pcm(data: bytes, fmt: str) -> torch.Tensor:
    """PCM bytes → float32 tensor ``[S]`` in [-1, 1] (s16le is scaled by 1/32768); NaN or inf is ``bad_input``."""
    x = np.frombuffer(data, dtype=FORMATS[fmt]).astype(np.float32)
    if fmt == "s16le":
        x /= 32768.0
    elif not np.isfinite(x).all():
        raise ProtocolError("bad_input", f"the PCM holds {int((~np.isfinite(x)).sum())} NaN or infinite sample(s)")
    return torch.from_numpy(x)


def encode_pcm(audio: Any, fmt: str = "f32le") -> bytes:
    """float audio ``[S]`` → PCM bytes of ``fmt`` (s16le clips to [-1, 1))."""
    x = np.asarray(audio.detach().cpu() if torch.is_tensor(audio) else audio, dtype=np.float32).reshape(-1)
    if fmt == "s16le":
        return (np.clip(x, -1.0, 32767 / 32768) * 32768.0).round().astype("<i2").tobytes()
    return x.astype("<f4").tobytes()


def codes_message(index: int, codes: torch.Tensor, chunk: Optional[int] = None) -> str:
    """codes ``[n, t]`` (frames ``index .. index+t-1`` of the utterance) → a JSON ``codes`` message."""
    msg: Dict[str, Any] = {"type": "codes", "index": int(index), "codes": codes.tolist()}
    if chunk is not None:
        msg["chunk"] = int(chunk)  # the audio chunk (0-based, per utterance) whose arrival produced these frames
    return json.dumps(msg, separators=(",", ":"))


def audio_frame(index: int, audio: torch.Tensor) -> bytes:
    """audio ``[s]`` starting at sample ``index`` of the reconstruction → one binary frame."""
    return AUDIO_HEADER.pack(int(index)) + encode_pcm(audio)


def parse_audio_frame(data: bytes) -> "tuple[int, np.ndarray]":
    """Inverse of :func:`audio_frame`: (first sample index, float32 samples ``[s]``)."""
    (index,) = AUDIO_HEADER.unpack_from(data)
    return index, np.frombuffer(data, dtype="<f4", offset=AUDIO_HEADER.size)
