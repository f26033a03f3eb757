"""Streamed decoding: mel equals ``decode_mel`` to float tolerance; audio through a streaming HiFi-GAN."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from luna.errors import ConfigError
from luna.models.vocoder import HiFiGANGenerator, HiFiGANVocoder, hifigan_generator_config
from tests.streaming.conftest import speechlike

MEL_ATOL = 1e-5  # log-mel units (values span about [-11.5, 0]); measured max difference: 0 to ~2e-6


def chunks(codes, g):
    i = 0
    while i < codes.shape[-1]:
        n = int(torch.randint(0, 12, (1,), generator=g))  # 0-token pushes included
        yield codes[..., i : i + n]
        i += n


@pytest.mark.parametrize("which", ["tiny_causal", "causal_12hz"])
def test_streamed_mel_equals_decode_mel(which, request):
    tok = request.getfixturevalue(which)
    g = torch.Generator().manual_seed(5)
    codes = tok.tokenize(speechlike(2.5, tok.sample_rate, seed=2), tok.sample_rate)
    whole = tok.decode_mel(codes)
    for _ in range(3):
        dec = tok.stream_decoder(vocoder=False)
        mel = torch.cat([dec.push_mel(c) for c in chunks(codes, g)], dim=-1)
        assert mel.shape == whole.shape
        assert (mel - whole).abs().max() <= MEL_ATOL
    first = tok.stream_decoder(vocoder=False).push_mel(codes[..., :3])
    assert torch.allclose(first, whole[..., : 3 * tok.config.encoder_stride], atol=MEL_ATOL)  # a prefix is final


def test_streamed_audio_equals_detokenize_with_a_hifigan(tiny_causal):
    tok = tiny_causal
    torch.manual_seed(0)
    h = hifigan_generator_config("v3", hop_length=tok.config.mel.hop_length)
    vocoder = HiFiGANVocoder(HiFiGANGenerator(h, tok.config.mel.n_mels), tok.config.mel)
    codes = tok.tokenize(speechlike(1.5, 16000, seed=3), 16000)
    k = tok.frame_offset  # causal frames sit (n_fft - hop) / 2 samples early: detokenize advances the audio by k
    assert k > 0
    whole = torch.nn.functional.pad(vocoder(tok.decode_mel(codes))[..., k:], (0, k))  # = detokenize, [1, T·s·hop]
    dec = tok.stream_decoder(vocoder=vocoder)
    g = torch.Generator().manual_seed(6)
    audio = torch.cat([*(dec.push(c) for c in chunks(codes, g)), dec.flush()], dim=-1)
    assert audio.shape == whole.shape
    assert (audio - whole).abs().max() <= 1e-5
    assert 0 < dec.vocoder.delay <= 12 * 160  # within V3's receptive field (12 mel frames = 120 ms at hop 160)


def test_the_stream_decoder_computes_each_frame_once(causal_12hz, monkeypatch):
    """No recomputed context: the stream's Conv1d calls (its start-of-stream zero padding included) produce exactly
    as many output frames as ``decode_mel`` on the whole clip does (the upsampler is an overlap-add matmul)."""
    tok = causal_12hz
    codes = tok.tokenize(speechlike(1.5, tok.sample_rate, seed=4), tok.sample_rate)
    frames = []
    conv1d = F.conv1d

    def counting(*args, **kwargs):
        y = conv1d(*args, **kwargs)
        frames.append(y.shape[-1])
        return y

    monkeypatch.setattr(F, "conv1d", counting)
    tok.decode_mel(codes)
    whole, frames[:] = sum(frames), []
    dec = tok.stream_decoder(vocoder=False)
    g = torch.Generator().manual_seed(8)
    mel = torch.cat([dec.push_mel(c) for c in chunks(codes, g)], dim=-1)
    assert sum(frames) == whole
    assert mel.shape[-1] == codes.shape[-1] * tok.config.encoder_stride


def test_griffinlim_cannot_stream(tiny_causal):
    with pytest.raises(ConfigError, match="Griffin-Lim"):
        tiny_causal.stream_decoder()  # the tiny model's configured vocoder is Griffin-Lim
