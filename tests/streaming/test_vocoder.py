"""A non-causal HiFi-GAN streamed with stateful layers equals the whole clip, with no recomputed context."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from luna.config import MelConfig
from luna.models.vocoder import HiFiGANGenerator, HiFiGANVocoder, build_vocoder, hifigan_generator_config
from luna.streaming import StreamingVocoder, receptive_frames

ATOL = 1e-5  # audio in [-1, 1]; streamed vs whole differ by float rounding only (measured: below 1e-7)


def vocode_in_chunks(sv, mel, sizes):
    out, i = [], 0
    for n in sizes:
        out.append(sv.push(mel[..., i : i + n]))
        i += n
    out.append(sv.flush())
    return torch.cat(out, dim=-1)


def random_sizes(total, g, most=9):
    """Chunk sizes in [0, most] frames (empty pushes included) covering ``total`` frames."""
    sizes = []
    while sum(sizes) < total:
        sizes.append(int(torch.randint(0, most + 1, (1,), generator=g)))
    return sizes


def small_vocoder(which):
    """V1's shape (narrow), or a V3-like one (ResBlock2, random kernels and dilations) at hop 240."""
    torch.manual_seed(0)
    if which == "v1":
        h, mel = hifigan_generator_config("v1", hop_length=256), MelConfig()
    else:
        g = torch.Generator().manual_seed(3)
        pick = lambda xs: xs[int(torch.randint(0, len(xs), (1,), generator=g))]  # noqa: E731
        kernels = [pick([3, 5, 7, 9]) for _ in range(2)]
        dilations = [[pick([1, 2, 3]), pick([2, 5, 7])] for _ in range(2)]
        h = hifigan_generator_config("v3", {"resblock_kernel_sizes": kernels, "resblock_dilation_sizes": dilations},
                                     hop_length=240)
        mel = MelConfig(sample_rate=24000, hop_length=240, win_length=960, n_fft=1024)
    h.update(upsample_initial_channel=32 if which == "v1" else 16)
    return HiFiGANVocoder(HiFiGANGenerator(h, 80), mel)


def test_receptive_fields_of_the_presets():
    assert receptive_frames(hifigan_generator_config("v1", hop_length=256)) == 14  # 162.5 ms at 22.05 kHz
    assert receptive_frames(hifigan_generator_config("v3", hop_length=256)) == 12


@pytest.mark.parametrize("which", ["v1", "v3like"])
def test_random_chunkings_equal_the_whole_clip(which):
    vocoder = small_vocoder(which)
    hop = vocoder.hop_length
    sv = StreamingVocoder(vocoder)
    assert 0 < sv.delay <= receptive_frames(vocoder.generator.h) * hop
    g = torch.Generator().manual_seed(7)
    for trial in range(4):  # one StreamingVocoder, several streams: flush resets it
        frames = int(torch.randint(1, 70, (1,), generator=g))
        mel = torch.randn(1, 80, frames, generator=g) - 5
        whole = vocoder(mel)
        out, i = [], 0
        for n in random_sizes(frames, g):
            out.append(sv.push(mel[..., i : i + n]))
            i = min(frames, i + n)
            assert sum(o.shape[-1] for o in out) == max(0, i * hop - sv.delay)  # final samples come out at once
        audio = torch.cat([*out, sv.flush()], dim=-1)
        assert audio.shape == whole.shape and (audio - whole).abs().max() <= ATOL, (which, trial)


def test_v1_latency_and_one_frame_pushes():
    vocoder = small_vocoder("v1")
    sv = StreamingVocoder(vocoder)
    assert sv.delay == 3258 and sv.lookahead == 13  # 147.8 ms: below the 14-frame (162.5 ms) receptive field
    assert sv.latency_ms == pytest.approx(1000 * 3258 / 22050)
    mel = torch.randn(1, 80, 30) - 5
    assert (vocode_in_chunks(sv, mel, [1] * 30) - vocoder(mel)).abs().max() <= ATOL
    with pytest.raises(ValueError, match="^lookahead: "):
        StreamingVocoder(vocoder, lookahead=8)


def test_every_convolution_output_is_computed_once(monkeypatch):
    """No recomputed context: the stream's Conv1d calls produce exactly as many output frames as the whole clip's."""
    vocoder = small_vocoder("v1")
    mel = torch.randn(1, 80, 40) - 5
    frames = []
    conv1d = F.conv1d

    def counting(x, *args, **kwargs):
        y = conv1d(x, *args, **kwargs)
        frames.append(y.shape[-1])
        return y

    monkeypatch.setattr(F, "conv1d", counting)
    vocoder(mel)
    whole, frames[:] = sum(frames), []
    vocode_in_chunks(StreamingVocoder(vocoder), mel, [3, 5, 1, 7, 4, 20])
    assert sum(frames) == whole


def test_flush_before_any_push_follows_the_vocoders_dtype():
    sv = StreamingVocoder(small_vocoder("v1").double())
    out = sv.flush()
    assert out.shape == (1, 0) and out.dtype == torch.float64
    assert sv.push(torch.zeros(1, 80, 0)).dtype == torch.float64


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_cuda_stream_stays_on_the_gpu():
    vocoder = small_vocoder("v1").cuda()
    sv = StreamingVocoder(vocoder)
    assert sv.flush().device.type == "cuda"
    mel = torch.randn(1, 80, 20, device="cuda") - 5
    audio = vocode_in_chunks(sv, mel, [4, 1, 9, 6])
    assert audio.device.type == "cuda" and (audio - vocoder(mel)).abs().max() <= ATOL


def test_universal_hifigan_streams_on_a_short_clip():
    vocoder = build_vocoder({"kind": "hifigan_universal", "mel": MelConfig()})
    g = torch.Generator().manual_seed(0)
    mel = torch.randn(1, 80, 40, generator=g) * 1.5 - 6  # ~0.46 s
    whole = vocoder(mel)
    audio = vocode_in_chunks(StreamingVocoder(vocoder), mel, [4, 4, 9, 2, 21])  # 4 frames ≈ 46 ms per push
    assert audio.shape == whole.shape
    assert (audio - whole).abs().max() <= ATOL


def test_universal_hifigan_streams_real_speech_within_the_bound():
    """1 s of a dev-clean reader's mel, in 1-frame and random pushes: the same audio as the whole clip."""
    from luna import audio
    from luna.data import BUNDLED
    from luna.features import MelSpectrogram

    vocoder = build_vocoder({"kind": "hifigan_universal", "mel": MelConfig()})
    wav, sr = audio.load(sorted((BUNDLED / "dev-clean").rglob("*.flac"))[1])
    x = audio.resample(wav[None, sr // 2 : 3 * sr // 2], sr, 22050)  # [1, S] mono
    mel = MelSpectrogram(MelConfig())(x)  # [1, 80, 83]
    whole = vocoder(mel)
    assert whole.abs().max() > 0.3  # speech at a real level, not a near-silent clip
    for sizes in ([1] * 24 + [mel.shape[-1] - 24], random_sizes(mel.shape[-1], torch.Generator().manual_seed(1))):
        streamed = vocode_in_chunks(StreamingVocoder(vocoder), mel, sizes)
        assert streamed.shape == whole.shape and (streamed - whole).abs().max() <= ATOL


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
