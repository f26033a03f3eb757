"""Tokenize speed: luna ``SpeechTokenizer.tokenize`` (``model=rvq8_24k``: rvq8 at EnCodec's 24 kHz) vs the EnCodec 24 kHz encoder.

Setting: 10 s of 24 kHz speech (the bundled corpus, resampled), batch 1, CPU, the same threads for
both, calls interleaved, medians. EnCodec: ``EncodecModel.encodec_model_24khz(pretrained=False)`` at
6 kbps (8 codebooks, the same number of streams as rvq8) and ``model.encode``; its weights are random
(no download), which costs the same as trained ones. luna's tokenizer is made trained-like first: a few
training forwards k-means-initialise its RVQ and run EMA updates (an untrained RVQ holds random
codebooks; the timing would be the same, but the benchmark should time the real thing).
Target: luna >= 10x faster.

    python -m benchmarks.tokenize [--quick]     (as a module: a script named tokenize.py next to
                                                 the caller would shadow the standard library's)
"""
from __future__ import annotations

import warnings
from typing import Dict, List

import torch

from benchmarks.run import CPU_THREADS, compose, interleaved, main_of, median, row, speech, threads

TARGET = 10.0


def trained_like(tok, segment_seconds: float, batch: int, steps: int = 3) -> None:
    """``steps`` training forwards on real speech: k-means init of every RVQ stage, then EMA updates."""
    audio = speech(batch * segment_seconds, tok.sample_rate).view(batch, -1)
    tok.train()
    with torch.no_grad():  # the codebooks learn without gradients; the weights stay as initialised
        for _ in range(steps):
            tok(audio)
    tok.eval()
    assert all(layer.is_initialized for layer in tok.quantizer.layers)


def flops(fn) -> float:
    """GFLOP of one call (conv and matmul FLOPs as torch's FlopCounterMode counts them)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e9


def run(quick: bool = False, smoke: bool = False) -> List[Dict]:
    import encodec

    from luna.models.tokenizer import SpeechTokenizer

    seconds = 0.5 if smoke else 10.0
    repeats = 1 if smoke else 9 if quick else 21
    with threads(CPU_THREADS):
        torch.manual_seed(0)
        cfg = compose("rvq8_24k", "cpu", ["vocoder=griffinlim"])  # EnCodec's rate: the same samples for both
        tok = SpeechTokenizer(cfg.model)
        init_batch, init_seconds = (2, 0.5) if smoke else (16, 2.0)  # 16 x 2 s: 1600 latents > 1024 codes
        trained_like(tok, init_seconds, init_batch)
        sr = tok.sample_rate
        audio = speech(seconds, sr)[None]  # [1, S]
        with warnings.catch_warnings():  # encodec still uses the deprecated torch.nn.utils.weight_norm
            warnings.simplefilter("ignore", FutureWarning)
            model = encodec.EncodecModel.encodec_model_24khz(pretrained=False)
        model.set_target_bandwidth(6.0)
        model.eval()
        wav = audio[None]  # [1, 1, S]

        def luna_tokenize():
            return tok.tokenize(audio, sr)

        def encodec_encode():
            with torch.no_grad():
                return model.encode(wav)

        codes = luna_tokenize()
        frames = encodec_encode()
        assert codes.shape[1] == 8 and frames[0][0].shape[1] == 8
        t = interleaved({"luna": luna_tokenize, "encodec": encodec_encode}, repeats)
        luna_s, encodec_s = median(t["luna"]), median(t["encodec"])

        # where luna's time goes, and how much arithmetic each side does (explains the ratio)
        with torch.no_grad():
            x = tok.prepare_audio(audio, sr)
            mel = tok.mel(x)
            z = tok.encode_mel(mel)
            parts = interleaved({
                "mel": lambda: tok.mel(x),
                "encoder": lambda: tok.encode_mel(mel),
                "rvq": lambda: tok.quantizer.encode(z),
            }, repeats)
            luna_gflop = flops(luna_tokenize)
            encodec_gflop = flops(encodec_encode)
        ratio = encodec_s / luna_s
        parts_ms = ", ".join(f"{k} {median(v) * 1e3:.1f}" for k, v in parts.items())
        rows = [row(
            "tokenize",
            f"tokenize {seconds:g} s of 24 kHz speech, batch 1: luna rvq8_24k (8 x 1024 codes, 50 tokens/s, "
            f"4 kbps) vs EnCodec 24 kHz encoder at 6 kbps (8 codebooks, 75 frames/s)",
            luna_s * 1e3, encodec_s * 1e3, f"ms per {seconds:g} s", CPU_THREADS, "cpu",
            target=f"ratio >= {TARGET:g}", met=ratio >= TARGET,
            note=(f"median of {repeats} interleaved calls each; luna RVQ k-means-initialised by 3 training "
                  f"forwards on {init_batch} x {init_seconds:g} s of speech; luna parts (ms): {parts_ms}; "
                  f"arithmetic per call: luna {luna_gflop:.1f} GFLOP ({luna_gflop / luna_s:.0f} GFLOP/s), "
                  f"EnCodec {encodec_gflop:.1f} GFLOP + its LSTM ({encodec_gflop / encodec_s:.0f} GFLOP/s)"),
            repeats=repeats, times={"luna": t["luna"], "baseline": t["encodec"]},
            luna_gflop=round(luna_gflop, 2),
            baseline_gflop=round(encodec_gflop, 2),
            luna_parts_ms={k: round(median(v) * 1e3, 2) for k, v in parts.items()},
        )]

        # information: the CPU-friendly preset (hidden 256), same codes and bitrate, a quarter of the conv work
        small = SpeechTokenizer(compose("rvq8_24k", "cpu", ["vocoder=griffinlim", "model.hidden=256"]).model)
        trained_like(small, init_seconds, init_batch)
        t = interleaved({"luna": lambda: small.tokenize(audio, sr), "encodec": encodec_encode}, repeats)
        with torch.no_grad():
            small_gflop = flops(lambda: small.tokenize(audio, sr))
        rows.append(row(
            "tokenize", "tokenize as above with luna rvq8_24k at hidden 256 (same 8 x 1024 codes, 4 kbps) vs EnCodec",
            median(t["luna"]) * 1e3, median(t["encodec"]) * 1e3, f"ms per {seconds:g} s", CPU_THREADS, "cpu",
            note=f"information row (no target): a model choice, not an optimisation; {small_gflop:.1f} GFLOP per "
                 f"call; median of {repeats}",
            repeats=repeats, times={"luna": t["luna"], "baseline": t["encodec"]}, luna_gflop=round(small_gflop, 2),
        ))
        return rows


if __name__ == "__main__":
    main_of(run, __doc__)
