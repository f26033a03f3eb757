"""Streaming speed: real-time factor and per-chunk latency of the causal presets (random-init weights).

Setting: real speech from the bundled corpus at 22.05 kHz, pushed in chunks of 20 / 40 / 80 ms, batch 1,
CPU, 2 threads (:data:`benchmarks.run.CPU_THREADS`). Two pipelines per causal preset:

- ``tokenizer``: ``enc.push(chunk)`` (resampler pass-through, mel, encoder, RVQ) → codes;
- ``+decoder+hifigan``: the same, then ``dec.push(codes)`` (the causal decoder and the pretrained universal
  HiFi-GAN V1, both stateful: each push computes only new frames; the vocoder's fixed exact lookahead).

Reported per row: RTF = total push() wall time / audio seconds; whole-clip RTF = the same work on the whole
clip at once (``tokenize`` + ``detokenize``), timed right after, the yardstick on a shared machine; p50 / p95
of the wall time of one push(); the algorithmic latency (``tok.latency_ms``, + the vocoder's ``latency_ms``
for the second pipeline); the 1-minute load average when the row finished (the machine may be shared: read
the figures next to it). What a
listener waits for a sample is about chunk length + algorithmic latency + the push's compute time.
Tokenizer weights are random (k-means-initialised codebooks): speed does not depend on training.

    python -m benchmarks.streaming [--quick] [--preset P ...] [--chunk-ms MS ...] [--threads N] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Any, Dict, List, Sequence

import torch

from benchmarks.run import CPU_THREADS, compose, speech, threads
from benchmarks.tokenize import trained_like

PRESETS = ("rvq8_causal", "rvq8_12hz_causal")
CHUNKS_MS = (20, 40, 80)


def _percentile(xs: Sequence[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def measure(tok: Any, audio: torch.Tensor, chunk: int, vocoder: bool) -> Dict[str, float]:
    """Push ``audio`` in ``chunk``-sample pieces through one stream; times of each push (flush included)."""
    enc = tok.stream_encoder(tok.sample_rate)
    dec = tok.stream_decoder() if vocoder else None
    times, tokens, samples = [], 0, 0

    def step(fn):
        nonlocal tokens, samples
        t0 = time.perf_counter()
        codes = fn()
        if dec is not None:
            samples += dec.push(codes).shape[-1]
        times.append(time.perf_counter() - t0)
        tokens += codes.shape[-1]

    for i in range(0, audio.numel(), chunk):
        step(lambda: enc.push(audio[i : i + chunk]))
    step(enc.flush)
    if dec is not None:
        samples += dec.flush().shape[-1]
        assert samples == tokens * tok.samples_per_token
    seconds = audio.numel() / tok.sample_rate
    return {"rtf": sum(times) / seconds, "p50_ms": 1e3 * statistics.median(times[:-1]),
            "p95_ms": 1e3 * _percentile(times[:-1], 0.95), "pushes": len(times) - 1, "tokens": tokens}


def whole_clip_rtf(tok: Any, audio: torch.Tensor, vocoder: bool) -> float:
    """The same work on the whole clip at once (``tokenize``, + ``detokenize``): the yardstick on this machine now."""
    t0 = time.perf_counter()
    codes = tok.tokenize(audio, tok.sample_rate)
    if vocoder:
        tok.detokenize(codes)
    return (time.perf_counter() - t0) * tok.sample_rate / audio.numel()


def run(quick: bool = False, smoke: bool = False, presets: Sequence[str] = (),
        chunks_ms: Sequence[int] = (), num_threads: int = CPU_THREADS) -> List[Dict[str, Any]]:
    seconds = 0.5 if smoke else 3.0 if quick else 10.0
    presets = presets or (PRESETS[:1] if smoke else PRESETS)
    chunks_ms = chunks_ms or (CHUNKS_MS[-1:] if smoke else CHUNKS_MS)
    rows = []
    with threads(num_threads), torch.no_grad():
        for preset in presets:
            torch.manual_seed(0)
            overrides = ["model.hidden=32", "model.codebook_dim=0", "vocoder=griffinlim"] if smoke else []
            from luna.models.tokenizer import SpeechTokenizer

            tok = SpeechTokenizer.from_config(compose(preset, "cpu", overrides))
            trained_like(tok, 0.5 if smoke else 1.0, 2 if smoke else 16, steps=1)
            audio = speech(seconds, tok.sample_rate)
            pipelines = [False] if smoke else [False, True]
            for vocoder in pipelines:
                lookahead = tok.stream_decoder().vocoder.latency_ms if vocoder else 0.0
                for ms in chunks_ms:
                    m = measure(tok, audio, round(ms * tok.sample_rate / 1000), vocoder)
                    m["whole_rtf"] = whole_clip_rtf(tok, audio, vocoder)
                    rows.append({"preset": preset, "pipeline": "+decoder+hifigan_universal" if vocoder else "tokenizer",
                                 "chunk_ms": ms, "threads": num_threads, "audio_s": seconds,
                                 "algorithmic_latency_ms": tok.latency_ms + lookahead, **m,
                                 "load_avg": os.getloadavg()[0]})
                    print(table(rows[-1:]).splitlines()[-1], flush=True)  # progress: one line per row
    return rows


def table(rows: List[Dict[str, Any]]) -> str:
    lines = ["| preset | pipeline | chunk | RTF | whole-clip RTF | push p50 | push p95 | algorithmic latency "
             "| load avg |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| `{r['preset']}` | {r['pipeline']} | {r['chunk_ms']} ms | {r['rtf']:.3f} "
                     f"| {r['whole_rtf']:.3f} "
                     f"| {r['p50_ms']:.2f} ms | {r['p95_ms']:.2f} ms | {r['algorithmic_latency_ms']:.1f} ms "
                     f"| {r['load_avg']:.1f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] = None) -> List[Dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 s of audio instead of 10")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, for the unit test (numbers mean nothing)")
    parser.add_argument("--preset", action="append", choices=PRESETS, help="only this preset (repeatable)")
    parser.add_argument("--chunk-ms", action="append", type=int, help="only this chunk length (repeatable)")
    parser.add_argument("--threads", type=int, default=CPU_THREADS, help=f"torch threads (default {CPU_THREADS})")
    parser.add_argument("--json", default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    rows = run(quick=args.quick, smoke=args.smoke, presets=args.preset or (), chunks_ms=args.chunk_ms or (),
               num_threads=args.threads)
    print(table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"mode": "smoke" if args.smoke else "quick" if args.quick else "full", "rows": rows}, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
