"""Reconstruction metrics on 1-D signals (reference vs estimate, same length and rate).

Metrics that can be undefined for valid audio (silence, clips shorter than a metric's analysis window)
return a :class:`MetricResult` whose value is ``None`` and whose ``reason`` says why, so one degenerate
file never aborts an evaluation. STOI and PESQ come from the pystoi and pesq packages; SI-SDR and the
multi-resolution STFT distance are short enough to state and compute here.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Dict, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch

from luna.audio import resample

#: peak amplitude at or below which a signal counts as silence (-120 dBFS: below one 16-bit LSB)
SILENCE_PEAK = 1e-6
#: SI-SDR is clamped to +-this many dB so identical (or orthogonal) signals give a finite, JSON-safe value
SI_SDR_LIMIT_DB = 100.0
#: (n_fft, hop_length, win_length) of the multi-resolution STFT distance (the Parallel WaveGAN set)
STFT_RESOLUTIONS: Tuple[Tuple[int, int, int], ...] = ((512, 128, 512), (1024, 256, 1024), (2048, 512, 2048))
#: STOI and wide-band PESQ are defined at 16 kHz; signals are resampled with luna.audio.resample first
PESQ_STOI_RATE = 16000
#: STOI needs 30 frames of 256 samples, hop 128, at its internal 10 kHz: (30 + 1) * 128 / 10000 s
STOI_MIN_SECONDS = (30 + 1) * 128 / 10000

Signal = Any  # 1-D torch.Tensor or numpy array


class MetricResult(NamedTuple):
    """A metric value, or ``None`` with the reason it is undefined for this input."""

    value: Optional[float]
    reason: Optional[str] = None


def _as_tensor(x: Signal) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    return t.detach().reshape(-1).to(device="cpu", dtype=torch.float64)


def _pair(ref: Signal, est: Signal) -> Tuple[torch.Tensor, torch.Tensor]:
    r, e = _as_tensor(ref), _as_tensor(est)
    if r.shape != e.shape:
        raise ValueError(f"reference and estimate must have the same length, got {r.numel()} and {e.numel()}")
    if r.numel() == 0:
        raise ValueError("reference and estimate are empty")
    return r, e


def _silent(x: torch.Tensor) -> bool:
    return x.numel() == 0 or float(x.abs().max()) <= SILENCE_PEAK


def mse(ref: Signal, est: Signal) -> float:
    r, e = _pair(ref, est)
    return float(((r - e) ** 2).mean())


def mae(ref: Signal, est: Signal) -> float:
    r, e = _pair(ref, est)
    return float((r - e).abs().mean())


def peak(x: Signal) -> float:
    """Max absolute sample (0 for an empty signal)."""
    t = _as_tensor(x)
    return float(t.abs().max()) if t.numel() else 0.0


def mel_l1(ref: Signal, est: Signal, mel_module: torch.nn.Module) -> MetricResult:
    """Mean |log-mel(ref) - log-mel(est)| with luna's front end (``luna.features.MelSpectrogram``)."""
    r, e = _pair(ref, est)
    param = next(iter(mel_module.buffers()), None)
    device = param.device if param is not None else torch.device("cpu")
    with torch.no_grad():
        m_r = mel_module(r.float().to(device))
        m_e = mel_module(e.float().to(device))
    return mel_l1_from_mels(m_r, m_e)


def mel_l1_from_mels(mel_ref: torch.Tensor, mel_est: torch.Tensor) -> MetricResult:
    """Mean absolute difference of two log-mels ``[..., n_mels, T]``, cropped to the shorter T."""
    frames = min(mel_ref.shape[-1], mel_est.shape[-1])
    if frames == 0:
        return MetricResult(None, "clip shorter than one mel frame")
    diff = mel_ref[..., :frames].float() - mel_est[..., :frames].float()
    return MetricResult(float(diff.abs().mean()))


def stft_distance(
    ref: Signal, est: Signal, resolutions: Sequence[Tuple[int, int, int]] = STFT_RESOLUTIONS
) -> MetricResult:
    """Multi-resolution STFT distance, averaged over resolutions (lower is better, 0 for identical signals).

    For each (n_fft, hop, win) with a Hann window, centred frames and zero padding (so any length works):
    spectral convergence ``||S_ref| - |S_est||_F / ||S_ref||_F`` plus log-magnitude L1
    ``mean|log(|S_ref| + 1e-7) - log(|S_est| + 1e-7)|``; the sum of the two is averaged over resolutions
    (Yamamoto et al., Parallel WaveGAN, 2020; the auxiliary loss used by DAC/EnCodec-style codecs).
    Undefined for a silent reference (spectral convergence divides by its norm).
    """
    r, e = _pair(ref, est)
    if _silent(r):
        return MetricResult(None, "reference is silent (spectral convergence undefined)")
    total = 0.0
    for n_fft, hop, win in resolutions:
        window = torch.hann_window(win, dtype=torch.float64)
        spec = [
            torch.stft(x, n_fft, hop, win, window, center=True, pad_mode="constant", return_complex=True).abs()
            for x in (r, e)
        ]
        sc = torch.linalg.norm(spec[0] - spec[1]) / torch.linalg.norm(spec[0])
        log_l1 = (torch.log(spec[0] + 1e-7) - torch.log(spec[1] + 1e-7)).abs().mean()
        total += float(sc + log_l1)
    return MetricResult(total / len(resolutions))


def si_sdr(ref: Signal, est: Signal) -> MetricResult:
    """Scale-invariant SDR in dB (Le Roux et al., 2019) on zero-mean signals, clamped to +-100 dB.

    ``target = <est, ref> / ||ref||^2 * ref``; ``SI-SDR = 10 log10(||target||^2 / ||est - target||^2)``.
    Undefined when either signal is silent (the projection is 0/0).
    """
    r, e = _pair(ref, est)
    r, e = r - r.mean(), e - e.mean()
    if _silent(r):
        return MetricResult(None, "reference is silent (or constant)")
    if _silent(e):
        return MetricResult(None, "reconstruction is silent (or constant)")
    target = (e @ r) / (r @ r) * r
    noise = e - target
    t_energy, n_energy = float(target @ target), float(noise @ noise)
    if n_energy == 0.0:
        return MetricResult(SI_SDR_LIMIT_DB)
    if t_energy == 0.0:
        return MetricResult(-SI_SDR_LIMIT_DB)
    value = 10.0 * math.log10(t_energy / n_energy)
    return MetricResult(max(-SI_SDR_LIMIT_DB, min(SI_SDR_LIMIT_DB, value)))


def _at_16k(ref: Signal, est: Signal, sample_rate: int) -> Tuple[np.ndarray, np.ndarray]:
    r, e = _pair(ref, est)
    pair = resample(torch.stack([r, e]).float(), int(sample_rate), PESQ_STOI_RATE)
    return pair[0].double().numpy(), pair[1].double().numpy()


def stoi(ref: Signal, est: Signal, sample_rate: int) -> MetricResult:
    """STOI (pystoi, classic) at 16 kHz. Undefined for a silent reference or fewer than 30 speech frames."""
    import pystoi

    too_short = MetricResult(None, f"fewer than 30 non-silent STFT frames (~{STOI_MIN_SECONDS:.2f} s of speech) for STOI")
    r, e = _at_16k(ref, est, sample_rate)
    if _silent(torch.from_numpy(r)):
        return MetricResult(None, "reference is silent")
    if r.size < STOI_MIN_SECONDS * PESQ_STOI_RATE:
        return too_short  # pystoi would fail with an indexing error on clips shorter than one frame
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = pystoi.stoi(r, e, PESQ_STOI_RATE, extended=False)
    # pystoi signals "too short" by warning and returning 1e-5; a real score of 1e-5 is not possible
    if any("Not enough STFT frames" in str(w.message) for w in caught):
        return too_short
    if not math.isfinite(value):
        return MetricResult(None, "STOI is not finite for this input")
    return MetricResult(float(value))


def pesq_wb(ref: Signal, est: Signal, sample_rate: int) -> MetricResult:
    """Wide-band PESQ (ITU-T P.862.2, pesq package) at 16 kHz, MOS-LQO in [1.04, 4.64]."""
    from pesq import PesqError, pesq

    r, e = _at_16k(ref, est, sample_rate)
    if _silent(torch.from_numpy(r)):
        return MetricResult(None, "reference is silent")
    if _silent(torch.from_numpy(e)):
        return MetricResult(None, "reconstruction is silent")
    try:
        value = pesq(PESQ_STOI_RATE, r, e, "wb")
    except PesqError as err:  # BufferTooShortError (< 0.25 s), NoUtterancesError (no speech found)
        msg = err.args[0] if err.args else type(err).__name__
        msg = msg.decode() if isinstance(msg, bytes) else str(msg)
        return MetricResult(None, f"PESQ: {msg}")
    except ValueError as err:  # the C code yields NaN for some near-silent inputs
        return MetricResult(None, f"PESQ: {err}")
    return MetricResult(float(value))


def compute_all(
    ref: Signal,
    est: Signal,
    sample_rate: int,
    mel_module: Optional[torch.nn.Module] = None,
) -> Tuple[Dict[str, Optional[float]], Dict[str, str]]:
    """Every waveform metric for one pair: ``(values, reasons)``; ``reasons`` names each ``None`` value.

    Keys: mse, mae, peak_original, peak_reconstructed, stft_distance, si_sdr, stoi, pesq_wb, and mel_l1
    when ``mel_module`` is given.
    """
    values: Dict[str, Optional[float]] = {
        "mse": mse(ref, est),
        "mae": mae(ref, est),
        "peak_original": peak(ref),
        "peak_reconstructed": peak(est),
    }
    reasons: Dict[str, str] = {}
    results = {
        "stft_distance": stft_distance(ref, est),
        "si_sdr": si_sdr(ref, est),
        "stoi": stoi(ref, est, sample_rate),
        "pesq_wb": pesq_wb(ref, est, sample_rate),
    }
    if mel_module is not None:
        results["mel_l1"] = mel_l1(ref, est, mel_module)
    for name, res in results.items():
        values[name] = res.value
        if res.value is None:
            reasons[name] = res.reason or "undefined"
    return values, reasons
