"""SpeechTokenizer: exact lengths, token count rule, any-input conversion, safe checkpoints."""
from __future__ import annotations

import math

import pytest
import torch

from luna import SpeechTokenizer
from luna.config import CONF_DIR
from luna.losses import MelLoss
from luna.rate import model_rate
from luna.serialization import CheckpointError
from tests.conftest import compose_train
from tests.paths import ROOT


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    tok = SpeechTokenizer.from_config(compose_train(["model=tiny", "vocoder=griffinlim"]))
    tok.train()
    opt = torch.optim.AdamW(tok.parameters(), 1e-3)
    objective = MelLoss(hop_length=tok.config.mel.hop_length)
    for _ in range(3):  # a few steps so every buffer and weight is non-trivial
        loss, _ = objective(tok(torch.randn(4, 8000) * 0.1))
        loss.backward()
        opt.step()
        opt.zero_grad()
    return tok.eval()


@pytest.mark.parametrize("stride", [1, 2, 3, 8])
def test_output_mel_length_equals_input_length(stride):
    cfg = compose_train(["model=tiny", "vocoder=griffinlim", f"model.encoder_stride={stride}"])
    tok = SpeechTokenizer.from_config(cfg).eval()
    lengths = [1, 2, 3, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 50, 63, 64, 65, 99, 100, 257]
    assert len(lengths) == 20
    for t in lengths:
        mel = torch.randn(2, cfg.model.mel.n_mels, t) - 5
        out = tok.forward_mel(mel)
        assert out.mel_hat.shape == mel.shape, (stride, t)
        assert out.codes.shape[-1] == math.ceil(t / stride)


@pytest.mark.parametrize("seconds", [0.001, 0.01, 0.019, 0.02, 0.021, 0.5, 1.0, 1.234, 3.0])
def test_tokenize_gives_ceil_seconds_times_frame_rate(tiny, seconds):
    sr = tiny.sample_rate
    n = round(seconds * sr)
    codes = tiny.tokenize(torch.randn(n) * 0.1, sr)
    assert codes.dtype == torch.long
    assert codes.shape == (1, tiny.num_quantizers, math.ceil(n / sr * tiny.frame_rate - 1e-9))
    assert int(codes.min()) >= 0 and int(codes.max()) < tiny.codebook_size


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_tokenize_converts_sample_rate(tiny, rate):
    n = rate  # one second at any rate → one second at the model rate
    codes = tiny.tokenize(torch.randn(n) * 0.1, rate)
    assert codes.shape[-1] == math.ceil(tiny.frame_rate)


def test_tokenize_accepts_any_layout(tiny):
    x = torch.randn(2, 2, 3200) * 0.1
    stereo = tiny.tokenize(x, tiny.sample_rate)
    mono = tiny.tokenize(x.mean(dim=1), tiny.sample_rate)
    assert torch.equal(stereo, mono) and stereo.shape[:2] == (2, tiny.num_quantizers)
    assert torch.equal(tiny.tokenize(x[0, 0], tiny.sample_rate), tiny.tokenize(x[0, :1], tiny.sample_rate))
    assert torch.equal(tiny.tokenize(x[0, 0].numpy(), tiny.sample_rate), tiny.tokenize(x[0, 0], tiny.sample_rate))
    with pytest.raises(ValueError):
        tiny.tokenize(torch.zeros(1, 1, 1, 100), tiny.sample_rate)


def test_fewer_quantizers_and_decode_shapes(tiny):
    x = torch.randn(1, 4000) * 0.1
    for n in range(1, tiny.num_quantizers + 1):
        codes = tiny.tokenize(x, tiny.sample_rate, num_quantizers=n)
        assert codes.shape[1] == n
        mel = tiny.decode_mel(codes)
        assert mel.shape == (1, tiny.config.mel.n_mels, codes.shape[-1] * tiny.config.encoder_stride)


def test_detokenize_returns_audio_at_model_rate(tiny):
    codes = tiny.tokenize(torch.randn(1, 4000) * 0.1, tiny.sample_rate)
    audio = tiny.detokenize(codes)
    assert audio.shape == (1, codes.shape[-1] * tiny.samples_per_token)
    assert torch.isfinite(audio).all()


def test_save_load_gives_identical_codes_and_reconstruction(tiny, tmp_path):
    x = torch.randn(2, 6000) * 0.1
    codes = tiny.tokenize(x, tiny.sample_rate)
    mel = tiny.decode_mel(codes)
    path = tmp_path / "tok.pt"
    tiny.save_checkpoint(path)
    ck = torch.load(path, weights_only=True)  # nothing in it needs pickle
    assert set(ck) >= {"model", "config", "luna_version"}
    again = SpeechTokenizer.from_checkpoint(path)
    assert torch.equal(again.tokenize(x, tiny.sample_rate), codes)
    assert torch.equal(again.decode_mel(codes), mel)
    fresh = SpeechTokenizer.from_config(compose_train(["model=tiny", "vocoder=griffinlim"])).eval()
    assert not torch.equal(fresh.tokenize(x, tiny.sample_rate), codes)
    fresh.load_checkpoint(path)
    assert torch.equal(fresh.tokenize(x, tiny.sample_rate), codes)


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        from pathlib import Path

        return (Path.touch, (Path(self.marker),))


def test_a_pickle_payload_is_refused_without_running_it(tiny, tmp_path):
    marker = tmp_path / "payload-ran"
    path = tmp_path / "evil.pt"
    torch.save({"model": _Payload(str(marker)), "config": {}}, path)
    with pytest.raises(CheckpointError, match="refused"):
        SpeechTokenizer.from_checkpoint(path)
    with pytest.raises(CheckpointError, match="refused"):
        tiny.load_checkpoint(path)
    assert not marker.exists()


def test_missing_and_mismatched_checkpoints_are_one_clear_error(tiny, tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        SpeechTokenizer.from_checkpoint(tmp_path / "nope.pt")
    other = SpeechTokenizer.from_config(compose_train(["model=tiny", "vocoder=griffinlim", "model.hidden=64"]))
    path = tmp_path / "other.pt"
    other.save_checkpoint(path)
    with pytest.raises(CheckpointError, match="do not fit"):
        tiny.load_checkpoint(path)


@pytest.mark.parametrize(
    "preset,rate,tps,bps",
    [("rvq8", 22050, 22050 / 512, 22050 / 512 * 80), ("rvq8_256", 22050, 22050 / 512, 22050 / 512 * 80),
     ("rvq4", 22050, 22050 / 512, 22050 / 512 * 40), ("rvq8_12hz", 22050, 22050 / 2048, 22050 / 2048 * 80),
     ("rvq8_24k", 24000, 50.0, 4000.0), ("tiny", 16000, 50.0, 500.0),
     ("rvq8_causal", 22050, 22050 / 512, 22050 / 512 * 80), ("rvq8_12hz_causal", 22050, 22050 / 2048, 22050 / 2048 * 80),
     ("rvq8_12hz_2k", 22050, 22050 / 2048, 22050 / 2048 * 88), ("rvq8_12hz_2k_causal", 22050, 22050 / 2048, 22050 / 2048 * 88)],
)
def test_rate_table(preset, rate, tps, bps):
    universal = preset not in ("rvq8_24k", "tiny")  # the default vocoder's convention; the others pair with Griffin-Lim
    cfg = compose_train([f"model={preset}", *([] if universal else ["vocoder=griffinlim"])])
    tok = SpeechTokenizer.from_config(cfg)
    assert (tok.sample_rate, tok.frame_rate, tok.bitrate) == (rate, pytest.approx(tps), pytest.approx(bps))
    assert SpeechTokenizer.from_config(cfg.model).bitrate == pytest.approx(bps)  # the model node alone works too
    assert tok.latency_ms == (pytest.approx(1000 / tps) if preset.endswith("_causal") else math.inf)  # one token
    assert (model_rate(cfg.model).tokens_per_second, model_rate(cfg.model).bitrate) == (pytest.approx(tps), pytest.approx(bps))


def _readme_rate_rows():
    """README's rate table: preset -> (tokens/s, quantizers, codes, kbps) as written."""
    rows = {}
    for line in (ROOT / "README.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 9 and cells[0].startswith("`") and "×" in cells[5] and "kbps" in cells[6]:
            n, k = (int(x) for x in cells[5].split("×"))
            rows[cells[0].split("`")[1]] = (float(cells[4]), n, k, float(cells[6].split()[0]))
    return rows


def test_readme_rate_table_lists_every_preset_at_its_rate():
    rows = _readme_rate_rows()
    presets = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))
    assert sorted(rows) == presets  # every preset has a row, and every row is a preset
    for preset, (tps, n, k, kbps) in rows.items():
        rate = model_rate(compose_train([f"model={preset}", "vocoder=griffinlim"]).model)
        assert (rate.num_quantizers, rate.codebook_size) == (n, k), preset
        assert tps == pytest.approx(rate.tokens_per_second, abs=0.005), preset
        assert kbps == pytest.approx(rate.bitrate / 1000, abs=0.005), preset


def test_forward_returns_what_the_net_computed_and_the_objective_weights_it(tiny):
    with torch.no_grad():
        out = tiny(torch.randn(2, 8000) * 0.1)
    assert out.mel_hat.shape == out.mel.shape and out.codes.shape[:2] == (2, tiny.num_quantizers)
    assert out.commitment.dim() == 0 and not hasattr(out, "loss")  # models are nets: no objective inside
    w = compose_train(["model=tiny", "vocoder=griffinlim", "loss.mel_mse=2.0", "loss.multiscale_mel=0.5"]).loss
    loss, terms = MelLoss(w, tiny.config.mel.hop_length)(out)
    assert set(terms) == {"mel_l1", "mel_mse", "commitment", "multiscale_mel"}
    assert float(terms["mel_l1"]) == pytest.approx(float((out.mel_hat - out.mel).abs().mean()), rel=1e-5)
    expect = (terms["mel_l1"] + 2.0 * terms["mel_mse"] + w.commitment * terms["commitment"]
              + 0.5 * terms["multiscale_mel"])
    assert torch.allclose(loss, expect)


def test_the_objective_masks_padded_frames():
    mel = torch.zeros(2, 4, 10)
    hat = mel.clone()
    hat[1, :, 5:] = 7.0  # wrong only where item 1 is padding (5 frames of hop 100 are valid)
    out = type("Out", (), {"mel": mel, "mel_hat": hat, "commitment": torch.tensor(0.0)})()
    loss, terms = MelLoss(hop_length=100)(out, lengths=torch.tensor([1000, 500]))
    assert float(terms["mel_l1"]) == 0.0 and float(loss) == 0.0
    assert float(MelLoss(hop_length=100)(out)[1]["mel_l1"]) > 0  # unmasked, the padding counts


def test_save_pretrained_round_trip_gives_identical_codes(tiny, tmp_path):
    x = torch.randn(2, 6000) * 0.1
    codes = tiny.tokenize(x, tiny.sample_rate)
    d = tiny.save_pretrained(tmp_path / "pretrained")
    assert sorted(p.name for p in d.iterdir()) == ["config.json", "model.safetensors"]
    again = SpeechTokenizer.from_pretrained(d)
    assert torch.equal(again.tokenize(x, tiny.sample_rate), codes)
    assert torch.equal(again.decode_mel(codes), tiny.decode_mel(codes))


def test_save_pretrained_carries_a_hifigan_vocoder(tiny, tmp_path):
    from luna.models.hifigan import HiFiGANGenerator, hifigan_generator_config
    from luna.models.vocoder import HiFiGANVocoder

    h = hifigan_generator_config("v3", hop_length=tiny.config.mel.hop_length)
    tok = SpeechTokenizer.from_config(tiny.config)
    tok.load_state_dict(tiny.state_dict())
    tok.set_vocoder(HiFiGANVocoder(HiFiGANGenerator(h, tiny.config.mel.n_mels), tiny.config.mel))
    codes = tok.tokenize(torch.randn(1, 4000) * 0.1, tok.sample_rate)
    audio = tok.detokenize(codes)
    d = tok.save_pretrained(tmp_path / "with_vocoder")
    assert (d / "vocoder.safetensors").is_file()
    again = SpeechTokenizer.from_pretrained(d)
    assert again.vocoder.kind == "hifigan"
    assert torch.allclose(again.detokenize(codes), audio, atol=1e-6)
    with pytest.raises(CheckpointError):
        SpeechTokenizer.from_pretrained(tmp_path / "missing")


def test_a_checkpoint_from_before_the_loss_node_moved_still_loads(tiny, tmp_path):
    """Checkpoints written before issue 14 keep the loss weights in their model config (``model.loss``)."""
    path = tmp_path / "old.pt"
    tiny.save_checkpoint(path)
    state = torch.load(path, weights_only=True)
    state["config"]["model"]["loss"] = {"mel_l1": 1.0, "mel_mse": 0.5, "commitment": 0.25, "multiscale_mel": 0.0}
    torch.save(state, path)
    x = torch.randn(1, 4000) * 0.1
    assert torch.equal(SpeechTokenizer.from_checkpoint(path).tokenize(x, tiny.sample_rate), tiny.tokenize(x, tiny.sample_rate))
    state["config"]["model"]["not_a_key"] = 1  # anything else unknown is still refused
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="not_a_key"):
        SpeechTokenizer.from_checkpoint(path)


def test_lstm_layers_add_a_residual_lstm_at_the_token_rate_that_saves_loads_and_sees_the_past(tmp_path):
    """model.lstm_layers=2: an LSTM in encoder and decoder, at the token rate. Shapes are unchanged; a checkpoint
    round-trips; a change late in the clip moves no earlier code's latent (unidirectional), a change early moves later
    ones (context); a causal model refuses it, naming the key."""
    from luna.config import ConfigError

    cfg = compose_train(["model=tiny", "vocoder=griffinlim", "model.lstm_layers=2"])
    tok = SpeechTokenizer.from_config(cfg).eval()
    assert tok.encoder.lstm.rnn.num_layers == 2 and tok.decoder.lstm.rnn.hidden_size == cfg.model.hidden
    mel = torch.randn(1, cfg.model.mel.n_mels, 64) - 5
    assert tok.forward_mel(mel).mel_hat.shape == mel.shape
    h = torch.randn(1, cfg.model.hidden, 20)
    late, early = h.clone(), h.clone()
    late[..., 15:] += 1
    early[..., :2] += 1
    ctx = tok.encoder.lstm
    assert torch.equal(ctx(late)[..., :15], ctx(h)[..., :15])
    assert not torch.allclose(ctx(early)[..., 10:], ctx(h)[..., 10:])
    path = tmp_path / "lstm.pt"
    tok.save_checkpoint(path)
    again = SpeechTokenizer.from_checkpoint(path)
    audio = torch.randn(1, 8000) * 0.1
    assert torch.equal(again.tokenize(audio, tok.sample_rate), tok.tokenize(audio, tok.sample_rate))
    with pytest.raises(ConfigError, match="model.lstm_layers: must be 0 for a causal model"):
        SpeechTokenizer.from_config(compose_train(["model=tiny", "vocoder=griffinlim", "model.lstm_layers=1",
                                                   "model.causal=true"]))
    plain = SpeechTokenizer.from_config(compose_train(["model=tiny", "vocoder=griffinlim"]))
    assert not any("lstm" in k for k in plain.state_dict())  # older checkpoints keep their keys
