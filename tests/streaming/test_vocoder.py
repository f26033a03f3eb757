"""A non-causal HiFi-GAN vocoded in chunks (context + lookahead = its receptive field) equals the whole clip."""
from __future__ import annotations

import pytest
import torch

from luna.config import MelConfig
from luna.models.vocoder import HiFiGANGenerator, HiFiGANVocoder, build_vocoder, hifigan_generator_config
from luna.streaming import StreamingVocoder, receptive_frames

ATOL = 1e-5  # audio in [-1, 1]; chunked vs whole differ by float rounding only (measured: below 1e-6)


def vocode_in_chunks(sv, mel, sizes):
    out, i = [], 0
    for n in sizes:
        out.append(sv.push(mel[..., i : i + n]))
        i += n
    out.append(sv.flush())
    return torch.cat(out, dim=-1)


def test_receptive_fields_of_the_presets():
    assert receptive_frames(hifigan_generator_config("v1", hop_length=256)) == 14  # 162.5 ms at 22.05 kHz
    assert receptive_frames(hifigan_generator_config("v3", hop_length=256)) == 12


@pytest.mark.parametrize("sizes", [[1] * 60, [7, 1, 13, 2, 30, 7], [60]])
def test_chunked_v1_shape_equals_whole(sizes):
    torch.manual_seed(0)
    h = hifigan_generator_config("v1", hop_length=256)
    h.update(upsample_initial_channel=32)  # the V1 shape, narrow: fast on CPU
    vocoder = HiFiGANVocoder(HiFiGANGenerator(h, 80), MelConfig())
    mel = torch.randn(1, 80, 60) - 5
    whole = vocoder(mel)
    sv = StreamingVocoder(vocoder)
    audio = vocode_in_chunks(sv, mel, sizes)
    assert audio.shape == whole.shape and (audio - whole).abs().max() <= ATOL
    assert sv.latency_ms == pytest.approx(1000 * 14 * 256 / 22050)


def test_universal_hifigan_streams_on_a_short_clip():
    vocoder = build_vocoder({"kind": "hifigan_universal", "mel": MelConfig()})
    g = torch.Generator().manual_seed(0)
    mel = torch.randn(1, 80, 40, generator=g) * 1.5 - 6  # ~0.46 s
    whole = vocoder(mel)
    audio = vocode_in_chunks(StreamingVocoder(vocoder), mel, [4, 4, 9, 2, 21])  # 4 frames ≈ 46 ms per push
    assert audio.shape == whole.shape
    assert (audio - whole).abs().max() <= ATOL


def test_a_causal_models_audio_is_aligned_with_its_input():
    """Causal frames (left padding only) sit (n_fft - hop) / 2 = 384 samples early for a vocoder trained on centred
    frames; ``vocode`` advances the audio by as much. Measured on a dev-clean clip through the universal
    HiFi-GAN: aligned, the causal front end scores like the centred one; 384 samples late, clearly lower."""
    from luna import audio
    from luna.data import BUNDLED
    from luna.evaluation.metrics import stoi
    from luna.models.tokenizer import SpeechTokenizer
    from tests.conftest import compose_train

    clip = next(iter(sorted((BUNDLED / "dev-clean").rglob("*.flac"))))
    wav, sr = audio.load(clip)
    tok = SpeechTokenizer.from_config(compose_train(["model=rvq8_causal"]))
    x = tok.prepare_audio(wav[..., : 3 * sr], sr)  # [1, S] at 22.05 kHz
    y = tok.vocode(tok.mel(x))  # ground-truth causal mel -> the universal HiFi-GAN, aligned
    k = tok.frame_offset
    assert k == 384
    late = torch.nn.functional.pad(y, (k, 0))[..., : y.shape[-1]]  # what vocoding without the alignment gives
    aligned, unaligned = (stoi(x[0], s[0, : x.shape[-1]], tok.sample_rate).value for s in (y, late))
    print(f"STOI aligned {aligned:.3f}, 384 samples late {unaligned:.3f}")
    assert aligned > 0.9 and aligned > unaligned + 0.1, (aligned, unaligned)
