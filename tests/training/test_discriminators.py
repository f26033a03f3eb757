"""HiFi-GAN discriminators (luna.training.discriminators) and GAN losses (luna.training.gan_losses): official
names and widths, output shapes, loss values, and a few GAN steps on a tiny generator."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from luna.features import MelSpectrogram
from luna.models.hifigan import HiFiGANGenerator
from luna.models.hifigan_official import convert_official_state_dict
from luna.training.discriminators import DiscriminatorP, DiscriminatorS, MultiPeriodDiscriminator, MultiScaleDiscriminator
from luna.training.gan_losses import discriminator_loss, feature_loss, generator_loss
from tests.models.vocoder_helpers import _one_thread  # noqa: F401 - autouse fixture
from tests.models.vocoder_helpers import TINY_H, TINY_MEL, TINY_MPD, TINY_MSD, harmonic, to_official_names


def test_official_discriminator_names_convert(tmp_path):
    """Official do_ files: weight norm (weight_g/v) and the MSD's spectral norm (weight_orig/u/v)."""
    torch.manual_seed(0)
    for cls, channels in ((MultiPeriodDiscriminator, TINY_MPD), (MultiScaleDiscriminator, TINY_MSD)):
        module, fresh = cls(channels=channels), cls(channels=channels)
        official = to_official_names(module.state_dict())
        assert not any("parametrizations" in k for k in official)
        fresh.load_state_dict(convert_official_state_dict(official), strict=True)
        for (ka, a), (kb, b) in zip(fresh.state_dict().items(), module.state_dict().items()):
            assert ka == kb and torch.equal(a, b)
    official = to_official_names(MultiScaleDiscriminator(channels=TINY_MSD).state_dict())
    spectral = {f"discriminators.0.convs.0.weight_{leaf}" for leaf in ("orig", "u", "v")}
    assert spectral <= set(official)
    assert {"discriminators.1.convs.0.weight_g", "discriminators.1.convs.0.weight_v"} <= set(official)


def test_discriminator_outputs_and_feature_maps():
    torch.manual_seed(0)
    y, y_hat = torch.randn(2, 1, 1000), torch.randn(2, 1, 1000)
    r, g, fr, fg = MultiPeriodDiscriminator(channels=TINY_MPD)(y, y_hat)
    assert len(r) == len(g) == len(fr) == len(fg) == 5
    for p, (dr, dg, mr, mg) in zip((2, 3, 5, 7, 11), zip(r, g, fr, fg)):
        assert dr.shape == dg.shape and dr.dim() == 2 and dr.shape[0] == 2
        assert len(mr) == len(mg) == 6  # 5 convs + conv_post
        assert mr[0].shape[-1] == p  # folded by period
    r, g, fr, fg = MultiScaleDiscriminator(channels=TINY_MSD)(y, y_hat)
    assert len(r) == 3 and all(len(m) == 8 for m in fr)
    # conv strides 1·2·2·4·4 = 64 on 1000 samples, then on the pooled 501 and 251 (AvgPool1d(4, 2, padding=2))
    assert [d.shape[1] for d in r] == [16, 8, 4]
    assert [d.shape for d in r] == [d.shape for d in g]


def test_discriminator_official_widths():
    """Official channel widths (default) and norms: MSD scale 0 spectral, the rest weight norm."""
    mpd, msd = MultiPeriodDiscriminator(), MultiScaleDiscriminator()
    assert sum(p.numel() for p in mpd.parameters()) == 41_105_770
    assert sum(p.numel() for p in msd.parameters()) == 29_618_821
    keys = msd.state_dict().keys()
    assert "discriminators.0.convs.6.parametrizations.weight.0._u" in keys
    assert "discriminators.2.conv_post.parametrizations.weight.original0" in keys
    assert [d.period for d in mpd.discriminators] == [2, 3, 5, 7, 11]
    assert isinstance(msd.discriminators[0], DiscriminatorS) and isinstance(mpd.discriminators[0], DiscriminatorP)


def test_lsgan_losses_on_trivial_cases():
    ones, zeros = [torch.ones(2, 5), torch.ones(2, 3)], [torch.zeros(2, 5), torch.zeros(2, 3)]
    loss, r, g = discriminator_loss(ones, zeros)
    assert loss.item() == 0 and len(r) == len(g) == 2
    loss, r, g = discriminator_loss(zeros, ones)  # real called fake and fake called real
    assert loss.item() == pytest.approx(4.0) and [x.item() for x in r] == [1.0, 1.0]
    assert generator_loss(ones)[0].item() == 0
    assert generator_loss(zeros)[0].item() == pytest.approx(2.0)
    assert generator_loss([torch.full((2, 4), 0.5)])[0].item() == pytest.approx(0.25)
    fmaps = [[torch.randn(2, 3, 4), torch.randn(2, 1, 4)], [torch.randn(2, 5)]]
    assert feature_loss(fmaps, fmaps).item() == 0
    shifted = [[t + 1 for t in d] for d in fmaps]
    assert feature_loss(fmaps, shifted).item() == pytest.approx(2 * 3)  # official ×2 over 3 layers


def test_a_few_gan_steps_lower_mel_l1():
    """The HiFi-GAN step (official order and weights) on a tiny model and a fixed batch."""
    torch.manual_seed(0)
    mel_fn = MelSpectrogram(TINY_MEL)
    y = harmonic(TINY_MEL.sample_rate, 0.25, batch=2).unsqueeze(1)  # [2, 1, 2000]
    y = y[..., : (y.shape[-1] // 64) * 64]  # [2, 1, 1984]
    x = mel_fn(y.squeeze(1))  # [2, 20, 31]
    g = HiFiGANGenerator(TINY_H, num_mels=20)
    mpd, msd = MultiPeriodDiscriminator(channels=TINY_MPD), MultiScaleDiscriminator(channels=TINY_MSD)
    optim_g = torch.optim.AdamW(g.parameters(), 2e-4, betas=(0.8, 0.99))
    optim_d = torch.optim.AdamW([*mpd.parameters(), *msd.parameters()], 2e-4, betas=(0.8, 0.99))
    with torch.no_grad():
        start = F.l1_loss(mel_fn(g(x).squeeze(1)), x).item()
    for _ in range(15):
        y_g_hat = g(x)  # [2, 1, 1984]
        optim_d.zero_grad()
        loss_d = discriminator_loss(*mpd(y, y_g_hat.detach())[:2])[0] + discriminator_loss(*msd(y, y_g_hat.detach())[:2])[0]
        loss_d.backward()
        optim_d.step()
        optim_g.zero_grad()
        loss_mel = F.l1_loss(mel_fn(y_g_hat.squeeze(1)), x) * 45
        _, f_g, fm_r, fm_g = mpd(y, y_g_hat)
        _, s_g, sm_r, sm_g = msd(y, y_g_hat)
        loss_g = generator_loss(f_g)[0] + generator_loss(s_g)[0] + feature_loss(fm_r, fm_g) + feature_loss(sm_r, sm_g) + loss_mel
        loss_g.backward()
        optim_g.step()
    assert torch.isfinite(loss_d) and torch.isfinite(loss_g)
    with torch.no_grad():
        end = F.l1_loss(mel_fn(g(x).squeeze(1)), x).item()
    assert end < 0.8 * start, (start, end)
