"""measure_rtf: warm-up excluded, median of the timed repeats, divided by the audio duration."""
from __future__ import annotations

import pytest
import torch

from luna.evaluation import latency


def test_median_after_warmup(monkeypatch):
    clock = {"now": 0.0}
    durations = iter([5.0, 0.2, 0.9, 0.4])  # the 5 s warm-up must not count; median of the rest is 0.4
    monkeypatch.setattr(latency.time, "perf_counter", lambda: clock["now"])
    calls = []

    def fn():
        calls.append(1)
        clock["now"] += next(durations)

    out = latency.measure_rtf(fn, audio_seconds=2.0, warmup=1, repeats=3)
    assert len(calls) == 4
    assert out["seconds_median"] == pytest.approx(0.4)
    assert out["rtf"] == pytest.approx(0.2)
    assert out["repeats"] == 3 and out["device"] == "cpu"
    assert out["threads"] == torch.get_num_threads()


def test_real_clock_and_validation():
    out = latency.measure_rtf(lambda: torch.randn(64, 64) @ torch.randn(64, 64), audio_seconds=1.0, repeats=2)
    assert 0 < out["rtf"] < 1
    with pytest.raises(ValueError):
        latency.measure_rtf(lambda: None, audio_seconds=0.0)
    with pytest.raises(ValueError):
        latency.measure_rtf(lambda: None, audio_seconds=1.0, repeats=0)
