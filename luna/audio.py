"""Audio files in and out: soundfile for I/O, torchaudio for resampling. The one module that touches files."""
from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np
import soundfile as sf
import torch
import torchaudio

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")
PathLike = Union[str, Path]


class AudioError(RuntimeError):
    """A file that cannot be used as audio; the message is one line naming the reason."""


def info(path: PathLike) -> Tuple[int, int, int]:
    """(frames, sample_rate, channels) without decoding the samples."""
    try:
        i = sf.info(str(path))
    except Exception as e:  # soundfile raises LibsndfileError / RuntimeError / TypeError for bad files
        raise AudioError(_reason(e)) from None
    return int(i.frames), int(i.samplerate), int(i.channels)


def _reason(e: Exception) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def load(
    path: PathLike,
    sample_rate: Optional[int] = None,
    start: int = 0,
    frames: int = -1,
) -> Tuple[torch.Tensor, int]:
    """Read ``frames`` samples from ``start`` (in the file's own rate) as mono float32 ``[S]``.

    Resamples to ``sample_rate`` after cropping, so a crop costs only its own length.
    Raises :class:`AudioError` for unreadable, empty or non-finite audio.
    """
    try:
        data, sr = sf.read(str(path), start=start, frames=frames, dtype="float32", always_2d=True)
    except Exception as e:
        raise AudioError(_reason(e)) from None
    if data.size == 0:
        raise AudioError("no audio samples")
    if not np.isfinite(data).all():
        raise AudioError("audio contains NaN or infinite samples")
    wav = torch.from_numpy(data.mean(axis=1) if data.shape[1] > 1 else data[:, 0].copy())
    if sample_rate is not None and sr != sample_rate:
        wav = resample(wav, sr, sample_rate)
        sr = sample_rate
    return wav, sr


@functools.lru_cache(maxsize=32)
def _resampler(orig: int, new: int) -> torchaudio.transforms.Resample:
    return torchaudio.transforms.Resample(orig, new)  # kernel built once per rate pair


@functools.lru_cache(maxsize=64)
def _polyphase(orig: int, new: int, device: torch.device) -> Tuple[torch.Tensor, int, int, int]:
    """torchaudio's kernel ``[new', 1, K]`` regrouped as ``[new', orig', ceil(K/orig')]`` (zero taps appended),
    cached per device: the shared CPU module is never moved, so callers on different devices cannot race."""
    r = _resampler(orig, new)
    g = math.gcd(orig, new)
    o = orig // g
    k = r.kernel[:, 0, :]  # [new', K], K = 2 * width + o
    taps = -(-k.shape[1] // o)
    k = torch.nn.functional.pad(k, (0, taps * o - k.shape[1]))
    return k.view(k.shape[0], taps, o).transpose(1, 2).contiguous().to(device), r.width, o, new // g


def resample(wav: torch.Tensor, orig: int, new: int) -> torch.Tensor:
    """Resample along the last axis with torchaudio's cached windowed-sinc kernel (float32 out).

    Same result as ``torchaudio.transforms.Resample`` (to float rounding), computed as a stride-1
    polyphase convolution: the strided single-channel conv it replaces is ~3x slower on CPU, and the
    data pipeline resamples every training crop.
    """
    if orig == new:
        return wav
    kernel, width, o, n = _polyphase(int(orig), int(new), wav.device)
    shape = wav.shape
    x = wav.float().reshape(-1, shape[-1])  # [B, L]
    length = x.shape[-1]
    blocks = -(-(length + 2 * width + o) // o) + kernel.shape[-1]  # input blocks of o samples
    x = torch.nn.functional.pad(x, (width, blocks * o - length - width))  # [B, blocks * o]
    x = x.view(x.shape[0], blocks, o).transpose(1, 2)  # [B, o, blocks]: phase p = samples p, p+o, ...
    y = torch.nn.functional.conv1d(x, kernel)  # [B, n, blocks - taps + 1]
    y = y.transpose(1, 2).reshape(x.shape[0], -1)[:, : -(-n * length // o)]
    return y.reshape(shape[:-1] + y.shape[-1:])


def to_mono(audio: torch.Tensor) -> torch.Tensor:
    """1-D ``[S]``, ``[B, S]`` or ``[B, C, S]`` → ``[B, S]`` (channels averaged)."""
    if audio.dim() == 1:
        return audio.unsqueeze(0)
    if audio.dim() == 2:
        return audio
    if audio.dim() == 3:
        return audio.mean(dim=1)
    raise ValueError(f"audio must be [S], [B, S] or [B, C, S], got shape {tuple(audio.shape)}")


def save(path: PathLike, wav: torch.Tensor, sample_rate: int) -> None:
    """Write mono float audio as 16-bit PCM (format from the extension)."""
    x = wav.detach().float().reshape(-1).clamp(-1, 1).cpu().numpy()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), x, int(sample_rate), subtype="PCM_16")
