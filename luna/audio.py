"""Audio files in and out: soundfile for I/O, torchaudio for resampling. The one module that touches files."""
from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import NamedTuple, Optional, Tuple, Union

import numpy as np
import soundfile as sf
import torch
import torchaudio
from luna.errors import AudioError, one_line  # noqa: F401 - AudioError: raised here, importable from here

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")
PathLike = Union[str, Path]



def info(path: PathLike) -> Tuple[int, int, int]:
    """(frames, sample_rate, channels) without decoding the samples."""
    try:
        i = sf.info(str(path))
    except Exception as e:  # soundfile raises LibsndfileError / RuntimeError / TypeError for bad files
        raise AudioError(one_line(e)) from None
    return int(i.frames), int(i.samplerate), int(i.channels)


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
        raise AudioError(one_line(e)) from None
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

    Same result as ``torchaudio.transforms.Resample`` (to float rounding), without its strided
    single-channel conv (~3x slower on CPU; the data pipeline resamples every training crop). Two forms
    of the same sum, whichever multiplies fewer zeros for this rate pair: a stride-1 polyphase
    convolution for small reduced rates (16 -> 24 kHz: 2 -> 3), and, for large ones (16 -> 22.05 kHz:
    320 -> 441, where the polyphase kernel is 96% zeros), one batched matmul over groups of output phases
    that read only the input window their taps cover (:func:`_phase_groups`).
    """
    if orig == new:
        return wav
    plan = _phase_groups(int(orig), int(new), wav.device)
    if plan is not None:
        return _resample_grouped(wav, int(orig), int(new), plan)
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


class _Groups(NamedTuple):
    weight: torch.Tensor  # [G, q, span]: the taps of each output phase of each group
    index: torch.Tensor  # [G * span] long: positions (within one block's input window) each group reads
    groups: int  # G
    phases: int  # q output phases per group (G * q >= n; the extra rows are zero)
    span: int  # input samples each group reads
    window: int  # input samples per output block (taps * o)
    width: int  # torchaudio's left padding
    orig: int  # o, the reduced input rate: input samples per output block
    new: int  # n, the reduced output rate: output samples per block


#: the grouped form is used when the polyphase conv would multiply this many times more taps per output
_GROUPED_MIN_GAIN = 8


@functools.lru_cache(maxsize=64)
def _phase_groups(orig: int, new: int, device: torch.device) -> Optional[_Groups]:
    """torchaudio's kernel as groups of consecutive output phases with only the taps they use, or None
    when the polyphase conv is as cheap (small reduced input rate, e.g. 16 -> 24 kHz).

    Output ``s * n + j`` (block s, phase j) is ``kernel[j] · x[s*o : s*o + K]``; row j is non-zero only on
    about ``2 * width`` consecutive taps, which move by ``o / n`` per phase. ``q`` consecutive phases
    therefore read one window of ``span ≈ q * o / n + 2 * width`` samples, and every group is one small
    matmul of the same shape.
    """
    r = _resampler(orig, new)
    g = math.gcd(orig, new)
    o, n = orig // g, new // g
    k = r.kernel[:, 0, :]  # [n, K], K = 2 * width + o
    taps = -(-k.shape[1] // o)
    k = torch.nn.functional.pad(k, (0, taps * o - k.shape[1]))  # [n, taps * o]
    pos = torch.arange(k.shape[1])
    nonzero = k != 0
    lo = torch.where(nonzero, pos, k.shape[1]).min(1).values  # first and last non-zero tap of each phase
    hi = torch.where(nonzero, pos, -1).max(1).values
    used = int((hi - lo).max()) + 1
    q = max(1, min(n, round(used * n / o)))  # phases per group: its window grows by about its own taps
    groups = -(-n // q)
    starts, span = [], 0
    for c in range(groups):
        a, b = int(lo[c * q : (c + 1) * q].min()), int(hi[c * q : (c + 1) * q].max())
        starts.append(a)
        span = max(span, b - a + 1)
    if o * taps < _GROUPED_MIN_GAIN * span:
        return None
    index = torch.tensor([min(a, taps * o - span) for a in starts])[:, None] + torch.arange(span)  # [G, span]
    k = torch.nn.functional.pad(k, (0, 0, 0, groups * q - n)).view(groups, q, -1)  # [G, q, taps * o]
    weight = k.gather(2, index[:, None, :].expand(groups, q, span))  # [G, q, span]
    return _Groups(weight.contiguous().to(device), index.reshape(-1).to(device), groups, q, span, taps * o,
                   r.width, o, n)


@functools.lru_cache(maxsize=16)
def _group_positions(orig: int, new: int, device: torch.device, blocks: int) -> torch.Tensor:
    """``[G * span * blocks]`` padded-input positions read by each (group, tap, block): one index_select
    gathers a ``[G, span, blocks]`` operand (cached: training crops all have the same length)."""
    p = _phase_groups(orig, new, device)
    index = p.index.view(p.groups, p.span, 1)
    return (index + torch.arange(blocks, device=device) * p.orig).reshape(-1)


def _resample_grouped(wav: torch.Tensor, orig: int, new: int, p: _Groups) -> torch.Tensor:
    shape = wav.shape
    x = wav.float().reshape(-1, shape[-1])  # [B, L]
    b, length = x.shape
    out = -(-p.new * length // p.orig)
    blocks = -(-out // p.new)
    x = torch.nn.functional.pad(x, (p.width, (blocks - 1) * p.orig + p.window - length - p.width))
    xg = x.index_select(1, _group_positions(orig, new, x.device, blocks)).view(b, p.groups, p.span, blocks)
    y = torch.matmul(p.weight, xg)  # [B, G, q, blocks]
    y = y.reshape(b, p.groups * p.phases, blocks)[:, : p.new].transpose(1, 2).reshape(b, -1)[:, :out]
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
