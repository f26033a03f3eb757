"""Detokenize speed, vocoder included: luna ``SpeechTokenizer.detokenize`` vs EnCodec's decoder.

Setting: the codes of 10 s of speech, batch 1, CPU, the same threads, calls interleaved, medians; reported
as real-time factor (RTF = seconds of compute per second of audio; lower is faster). Two luna paths: the
default pipeline (``model=rvq8`` at 22.05 kHz with the default vocoder, the pretrained universal HiFi-GAN
V1, weight norm removed) and ``model=rvq8_24k`` with Griffin-Lim (32 iterations) at EnCodec's rate.
EnCodec: ``model.decode`` of its own 6 kbps codes of the same speech. Target: the default path at
RTF <= 0.1 on 2 CPU threads.

    python -m benchmarks.detokenize [--quick]
"""
from __future__ import annotations

import warnings
from typing import Dict, List

import torch

from benchmarks.run import CPU_THREADS, compose, interleaved, main_of, median, row, speech, threads
from benchmarks.tokenize import trained_like

TARGET_RTF = 0.1


def run(quick: bool = False, smoke: bool = False) -> List[Dict]:
    import encodec

    from luna.models.tokenizer import SpeechTokenizer

    seconds = 0.5 if smoke else 10.0
    hifigan_seconds = 0.5 if smoke else 5.0 if quick else 10.0
    repeats = 1 if smoke else 7 if quick else 15
    hifigan_repeats = 1 if smoke else 3 if quick else 7
    rows = []
    with threads(CPU_THREADS):
        torch.manual_seed(0)
        tok = SpeechTokenizer.from_config(compose("rvq8_24k", "cpu", ["vocoder=griffinlim"]))
        # the batch of the cpu preset (16 x 1 s); decoding is a table lookup, so the init does not matter
        trained_like(tok, 0.5 if smoke else 1.0, 2 if smoke else 16)
        sr = tok.sample_rate
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            model = encodec.EncodecModel.encodec_model_24khz(pretrained=False)
        model.set_target_bandwidth(6.0)
        model.eval()
        tok_hifigan = SpeechTokenizer.from_config(compose("rvq8", "cpu"))  # the default: universal HiFi-GAN
        trained_like(tok_hifigan, 0.5 if smoke else 1.0, 2 if smoke else 16)
        assert tok_hifigan.vocoder.generator.weight_norm_removed

        def contenders(secs: float, luna=tok):
            audio = speech(secs, sr)[None]
            codes = luna.tokenize(audio, sr)
            with torch.no_grad():
                frames = model.encode(audio[None])

            def encodec_decode():
                with torch.no_grad():
                    return model.decode(frames)

            return codes, encodec_decode

        codes, encodec_decode = contenders(seconds)
        assert tok.detokenize(codes).shape[-1] == codes.shape[-1] * tok.samples_per_token
        t = interleaved({"luna": lambda: tok.detokenize(codes), "encodec": encodec_decode}, repeats)
        parts = interleaved({"decode_mel": lambda: tok.decode_mel(codes),
                             "vocoder": (lambda mel: lambda: tok.vocode(mel))(tok.decode_mel(codes))}, repeats)
        luna_rtf, enc_rtf = median(t["luna"]) / seconds, median(t["encodec"]) / seconds
        rows.append(row(
            "detokenize", f"detokenize {seconds:g} s (codes of 24 kHz speech, rvq8_24k) -> audio with "
            f"Griffin-Lim ({tok.vocoder.n_iter} iterations) vs EnCodec 24 kHz decoder (6 kbps)",
            luna_rtf, enc_rtf, "RTF", CPU_THREADS, "cpu",
            note=(f"median of {repeats} interleaved calls; luna parts (ms): decode_mel "
                  f"{median(parts['decode_mel']) * 1e3:.1f}, vocoder {median(parts['vocoder']) * 1e3:.1f}"),
            repeats=repeats, seconds=seconds, times={"luna": t["luna"], "baseline": t["encodec"]},
        ))

        hg_codes, hg_encodec = contenders(hifigan_seconds, tok_hifigan)
        t = interleaved({"luna": lambda: tok_hifigan.detokenize(hg_codes), "encodec": hg_encodec}, hifigan_repeats)
        hg_rtf = median(t["luna"]) / hifigan_seconds
        rows.append(row(
            "detokenize", f"detokenize {hifigan_seconds:g} s, the default pipeline: rvq8 (22.05 kHz) -> pretrained "
            f"universal HiFi-GAN V1 (weight norm removed) vs EnCodec 24 kHz decoder",
            hg_rtf, median(t["encodec"]) / hifigan_seconds, "RTF", CPU_THREADS, "cpu",
            target=f"luna RTF <= {TARGET_RTF:g}", met=hg_rtf <= TARGET_RTF,
            note=(f"median of {hifigan_repeats} interleaved calls"
                  + ("; --quick: 5 s of audio instead of 10 (RTF of these convolutions does not depend on "
                     "the length)" if quick and not smoke else "")),
            repeats=hifigan_repeats, seconds=hifigan_seconds, times={"luna": t["luna"], "baseline": t["encodec"]},
        ))
    return rows


if __name__ == "__main__":
    main_of(run, __doc__)
