"""Real-time factor of one pipeline stage: wall time per second of audio (below 1 is faster than real time)."""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable, Dict, Union

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # kernels run asynchronously; time the work, not the launch


def measure_rtf(
    fn: Callable[[], Any],
    audio_seconds: float,
    warmup: int = 1,
    repeats: int = 5,
    device: Union[str, torch.device, None] = None,
) -> Dict[str, Any]:
    """Call ``fn`` ``warmup`` times untimed, then ``repeats`` times timed; RTF = median seconds / audio_seconds.

    The median resists one-off stalls (allocator growth, a busy core); the thread count is part of the
    result because CPU timings mean little without it.
    """
    if audio_seconds <= 0:
        raise ValueError(f"audio_seconds must be > 0, got {audio_seconds}")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    dev = torch.device(device) if device is not None else torch.device("cpu")
    for _ in range(max(0, warmup)):
        fn()
    _sync(dev)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(dev)
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {
        "rtf": median / audio_seconds,
        "seconds_median": median,
        "audio_seconds": audio_seconds,
        "repeats": repeats,
        "warmup": max(0, warmup),
        "threads": torch.get_num_threads(),
        "device": str(dev),
    }
