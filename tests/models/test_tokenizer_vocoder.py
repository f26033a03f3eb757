"""The attached vocoder follows every device/dtype move of its tokenizer, yet is never part of its state."""
from __future__ import annotations

import copy
import pytest
import torch

from luna import SpeechTokenizer
from luna.models.hifigan import HiFiGANGenerator, hifigan_generator_config
from luna.models.vocoder import GriffinLimVocoder, HiFiGANVocoder
from tests.conftest import compose_train
from tests.models.vocoder_helpers import _one_thread  # noqa: F401 - autouse fixture
from tests.streaming.conftest import causal_tokenizer, speechlike

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def random_hifigan(tok: SpeechTokenizer, seed: int = 0) -> HiFiGANVocoder:
    """A randomly initialised V3 HiFi-GAN on the tokenizer's mel (fp32, CPU)."""
    torch.manual_seed(seed)
    h = hifigan_generator_config("v3", hop_length=tok.config.mel.hop_length)
    return HiFiGANVocoder(HiFiGANGenerator(h, tok.config.mel.n_mels), tok.config.mel)


@pytest.fixture(scope="module")
def initialised() -> SpeechTokenizer:
    torch.manual_seed(0)
    t = SpeechTokenizer.from_config(compose_train(["model=tiny", "vocoder=griffinlim"])).train()
    with torch.no_grad():  # the first training forward k-means-initialises the codebooks
        t(torch.randn(4, 8000) * 0.1)
    return t.eval()


@pytest.fixture
def tok(initialised) -> SpeechTokenizer:
    """A fresh copy per test (the tests attach vocoders and move it), fp32 on CPU, no vocoder attached yet."""
    return copy.deepcopy(initialised)


def _vocoder_tensors(vocoder):
    return [t for t in [*vocoder.parameters(), *vocoder.buffers()] if t.is_floating_point()]


def test_detokenize_after_to_float64_and_back(tok):
    """Issue 24: detokenize, then ``tok.to(torch.float64)``, then detokenize again failed (double input, float bias)."""
    tok.set_vocoder(random_hifigan(tok))
    codes = tok.tokenize(torch.randn(1, 4000) * 0.1, tok.sample_rate)
    audio32 = tok.detokenize(codes)
    tok.to(torch.float64)
    audio64 = tok.detokenize(codes)
    assert all(t.dtype == torch.float64 for t in _vocoder_tensors(tok.vocoder))
    assert audio64.dtype == torch.float64 and audio64.shape == audio32.shape
    assert (audio64 - audio32.double()).abs().max() < 1e-4
    tok.float()
    assert all(t.dtype == torch.float32 for t in _vocoder_tensors(tok.vocoder))
    assert torch.allclose(tok.detokenize(codes), audio32, atol=1e-5)


MOVES = {
    "to(float64)": (lambda t: t.to(torch.float64), torch.float64, "cpu"),
    "to(dtype=bfloat16)": (lambda t: t.to(dtype=torch.bfloat16), torch.bfloat16, "cpu"),
    "double()": (lambda t: t.double(), torch.float64, "cpu"),
    "half()": (lambda t: t.half(), torch.float16, "cpu"),
    "bfloat16()": (lambda t: t.bfloat16(), torch.bfloat16, "cpu"),
    "type(float64)": (lambda t: t.type(torch.float64), torch.float64, "cpu"),
    "to('meta')": (lambda t: t.to("meta"), torch.float32, "meta"),  # a device move without a GPU
    "to('meta', float64)": (lambda t: t.to("meta", torch.float64), torch.float64, "meta"),
}


@pytest.mark.parametrize("kind", ["hifigan", "griffinlim"])
@pytest.mark.parametrize("move", list(MOVES))
def test_every_move_of_the_tokenizer_moves_its_vocoder(tok, kind, move):
    fn, dtype, device = MOVES[move]
    vocoder = random_hifigan(tok) if kind == "hifigan" else GriffinLimVocoder(tok.config.mel, n_iter=2)
    tok.set_vocoder(vocoder)
    assert fn(tok) is tok
    assert tok.vocoder is vocoder  # the same module, moved in place
    assert {(t.dtype, t.device.type) for t in tok.parameters()} == {(dtype, device)}
    assert {(t.dtype, t.device.type) for t in _vocoder_tensors(vocoder)} == {(dtype, device)}


def test_set_vocoder_puts_it_on_the_tokenizer_dtype(tok):
    codes = tok.tokenize(torch.randn(1, 2000) * 0.1, tok.sample_rate)  # the quantizer searches in fp32
    tok.double()
    vocoder = random_hifigan(tok)  # fp32
    tok.set_vocoder(vocoder)
    assert {t.dtype for t in _vocoder_tensors(vocoder)} == {torch.float64}
    assert tok.detokenize(codes).dtype == torch.float64


def test_the_vocoder_stays_out_of_the_state_and_the_checkpoint(tok, tmp_path):
    own = set(tok.state_dict())
    n_params = sum(p.numel() for p in tok.parameters())
    tok.set_vocoder(random_hifigan(tok))
    tok.vocoder  # attached and built
    assert set(tok.state_dict()) == own
    assert sum(p.numel() for p in tok.parameters()) == n_params
    assert not any("generator" in k or "vocoder" in k for k in tok.state_dict())
    tok.save_checkpoint(tmp_path / "tok.pt")
    ckpt = torch.load(tmp_path / "tok.pt", weights_only=True)
    assert set(ckpt["model"]) == own
    tok.to(torch.float64)  # moving it does not make it state either
    assert set(tok.state_dict()) == own


def test_stream_decoder_uses_the_vocoder_on_the_tokenizer_dtype():
    tok = causal_tokenizer(["model=tiny"], 16000)
    codes = tok.tokenize(speechlike(0.5, 16000, seed=1), 16000)  # the quantizer searches in fp32
    tok.double()
    for given in (None, random_hifigan(tok, seed=1)):  # the attached vocoder, then a module passed in (fp32)
        if given is None:
            tok.set_vocoder(random_hifigan(tok, seed=2))
        dec = tok.stream_decoder(vocoder=given)
        audio = torch.cat([dec.push(codes[..., :7]), dec.push(codes[..., 7:]), dec.flush()], dim=-1)
        vocoder = tok.vocoder if given is None else given
        assert {t.dtype for t in _vocoder_tensors(vocoder)} == {torch.float64}
        assert audio.dtype == torch.float64
        assert torch.allclose(audio, tok.detokenize(codes) if given is None else
                              torch.nn.functional.pad(given(tok.decode_mel(codes))[..., tok.frame_offset:],
                                                      (0, tok.frame_offset)), atol=1e-8)


# ------------------------------------------------------------------------------------------ on a GPU


@pytest.mark.gpu
@needs_cuda
def test_cuda_moves_the_vocoder(tok):
    tok.set_vocoder(random_hifigan(tok))
    codes = tok.tokenize(torch.randn(1, 4000) * 0.1, tok.sample_rate)
    on_cpu = tok.detokenize(codes)
    tok.cuda()
    assert {t.device.type for t in _vocoder_tensors(tok.vocoder)} == {"cuda"}
    audio = tok.detokenize(codes)
    assert audio.device.type == "cuda"
    assert torch.allclose(audio.cpu(), on_cpu, atol=1e-4)
    tok.cpu()
    assert {t.device.type for t in _vocoder_tensors(tok.vocoder)} == {"cpu"}


@pytest.mark.gpu
@needs_cuda
def test_from_pretrained_on_cuda_puts_the_vocoder_there(tok, tmp_path):
    tok.set_vocoder(random_hifigan(tok))
    codes = tok.tokenize(torch.randn(1, 4000) * 0.1, tok.sample_rate)
    on_cpu = tok.detokenize(codes)
    again = SpeechTokenizer.from_pretrained(tok.save_pretrained(tmp_path / "p"), map_location="cuda")
    assert again.device.type == "cuda"
    assert {t.device.type for t in _vocoder_tensors(again.vocoder)} == {"cuda"}
    assert torch.allclose(again.detokenize(codes).cpu(), on_cpu, atol=1e-4)
