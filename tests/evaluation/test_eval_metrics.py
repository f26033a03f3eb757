"""Waveform metrics: exact values on constructed signals, known-SNR behaviour, None + reason for degenerate input."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from luna.audio import load, resample
from luna.config import MelConfig
from tests.paths import ROOT
from luna.evaluation import metrics as M
from luna.features import MelSpectrogram

SPEECH = ROOT / "tests" / "fixtures" / "synthetic_mini" / "dev-mini" / "108" / "1000" / "108-1000-0000.flac"


@pytest.fixture(scope="module")
def speech() -> torch.Tensor:
    wav, sr = load(SPEECH)
    assert sr == 16000
    return wav[: 3 * sr]


def with_noise(ref: torch.Tensor, snr_db: float, seed: int = 0) -> torch.Tensor:
    """ref + white noise whose energy is exactly ref's (zero-mean) energy / 10^(snr/10)."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    noise = noise - noise.mean()
    r = ref.double() - ref.double().mean()
    noise *= torch.sqrt((r @ r) / (noise @ noise) / 10 ** (snr_db / 10))
    return (ref.double() + noise).float()


@pytest.fixture(scope="module")
def mel16k() -> MelSpectrogram:
    return MelSpectrogram(MelConfig(sample_rate=16000, n_fft=512, win_length=512, hop_length=160, n_mels=40, f_max=8000.0))


def test_identical_signals_score_perfectly(speech, mel16k):
    values, reasons = M.compute_all(speech, speech.clone(), 16000, mel16k)
    assert reasons == {}
    assert values["mse"] == 0.0 and values["mae"] == 0.0
    assert values["si_sdr"] == M.SI_SDR_LIMIT_DB
    assert values["stoi"] == pytest.approx(1.0, abs=1e-6)
    assert values["pesq_wb"] > 4.5
    assert values["stft_distance"] == pytest.approx(0.0, abs=1e-9)
    assert values["mel_l1"] == 0.0
    assert values["peak_original"] == values["peak_reconstructed"] == pytest.approx(float(speech.abs().max()))


@pytest.mark.parametrize("snr", [10.0, 20.0])
def test_si_sdr_matches_known_snr(speech, snr):
    value, reason = M.si_sdr(speech, with_noise(speech, snr))
    assert reason is None
    assert value == pytest.approx(snr, abs=0.5)


def test_si_sdr_exact_on_orthogonal_sines():
    t = torch.arange(16000, dtype=torch.float64) / 16000
    ref = torch.sin(2 * math.pi * 100 * t)
    est = 0.7 * ref + 0.1 * torch.sin(2 * math.pi * 300 * t)  # whole periods: exactly orthogonal
    assert M.si_sdr(ref, est).value == pytest.approx(20 * math.log10(0.7 / 0.1), abs=1e-6)
    # scale-invariant: rescaling the estimate changes nothing, an added offset is removed (zero-mean)
    assert M.si_sdr(ref, 3 * est + 0.2).value == pytest.approx(M.si_sdr(ref, est).value, abs=1e-6)


def test_quality_orders_with_noise_level(speech, mel16k):
    clean = M.compute_all(speech, with_noise(speech, 25.0), 16000, mel16k)[0]
    noisy = M.compute_all(speech, with_noise(speech, 5.0), 16000, mel16k)[0]
    assert clean["stoi"] > noisy["stoi"]
    assert clean["pesq_wb"] > noisy["pesq_wb"]
    assert clean["si_sdr"] > noisy["si_sdr"]
    assert clean["stft_distance"] < noisy["stft_distance"]
    assert clean["mel_l1"] < noisy["mel_l1"]
    assert clean["mse"] < noisy["mse"]


def test_stft_distance_of_doubled_signal():
    """|S_est| = 2|S_ref| at every resolution: spectral convergence 1, log-magnitude L1 log 2."""
    ref = torch.randn(16000, generator=torch.Generator().manual_seed(1))
    value, reason = M.stft_distance(ref, 2 * ref)
    assert reason is None
    assert value == pytest.approx(1.0 + math.log(2.0), abs=1e-3)


def test_metrics_at_other_rates_resample_to_16k(speech):
    x24 = resample(speech, 16000, 24000)
    assert M.stoi(x24, x24, 24000).value == pytest.approx(1.0, abs=1e-6)
    assert M.pesq_wb(x24, x24, 24000).value > 4.5


def test_silence_is_undefined_with_reason(speech, mel16k):
    silence = torch.zeros(16000)
    values, reasons = M.compute_all(silence, silence, 16000, mel16k)
    for name in ("si_sdr", "stoi", "pesq_wb", "stft_distance"):
        assert values[name] is None
        assert "silent" in reasons[name]
    assert values["mse"] == 0.0 and values["mel_l1"] == 0.0  # defined for silence
    # a silent reconstruction of real speech: SI-SDR and PESQ are undefined, STOI says "unintelligible"
    values, reasons = M.compute_all(speech, torch.zeros_like(speech), 16000)
    assert values["si_sdr"] is None and "reconstruction is silent" in reasons["si_sdr"]
    assert values["pesq_wb"] is None and "reconstruction is silent" in reasons["pesq_wb"]
    assert values["stoi"] is not None and values["stoi"] < 0.1


def test_short_clip_is_undefined_with_reason(speech, mel16k):
    clip = speech[8000:8800]  # 50 ms of speech
    values, reasons = M.compute_all(clip, clip * 0.9, 16000, mel16k)
    assert values["stoi"] is None and "30" in reasons["stoi"]
    assert values["pesq_wb"] is None and "1/4 of a second" in reasons["pesq_wb"]
    assert values["si_sdr"] == M.SI_SDR_LIMIT_DB  # scale-invariant: a scaled copy is perfect
    assert values["mel_l1"] is not None
    tiny = speech[8000:8100]  # shorter than one mel hop
    assert M.mel_l1(tiny, tiny, mel16k) == M.MetricResult(None, "clip shorter than one mel frame")
    for n in (1, 10, 300):  # shorter than any analysis window: still no exception
        values, reasons = M.compute_all(speech[8000 : 8000 + n], speech[8100 : 8100 + n], 44100, mel16k)
        assert values["stoi"] is None and values["pesq_wb"] is None and values["stft_distance"] is not None
        assert {"stoi", "pesq_wb"} <= set(reasons)


def test_numpy_input_and_length_mismatch(speech):
    x = speech.numpy().astype(np.float64)
    assert M.mse(x, x + 0.5) == pytest.approx(0.25)
    assert M.mae(x, x - 0.5) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="same length"):
        M.mse(speech, speech[:-1])
