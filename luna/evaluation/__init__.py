"""Evaluation: waveform/mel metrics, codebook health, real-time factor, and the reports built from them."""
from luna.evaluation.codebook import code_histogram, codebook_stats
from luna.evaluation.latency import measure_rtf
from luna.evaluation.metrics import MetricResult, compute_all, mae, mel_l1, mse, peak, pesq_wb, si_sdr, stft_distance, stoi

__all__ = [
    "MetricResult",
    "code_histogram",
    "codebook_stats",
    "compute_all",
    "mae",
    "measure_rtf",
    "mel_l1",
    "mse",
    "peak",
    "pesq_wb",
    "si_sdr",
    "stft_distance",
    "stoi",
]
