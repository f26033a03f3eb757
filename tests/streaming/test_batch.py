"""Batched streams: B streams with different histories stepped as one batch equal B separate steps."""
from __future__ import annotations

import torch

from luna.models.vocoder import HiFiGANGenerator, HiFiGANVocoder, hifigan_generator_config
from luna.streaming import batch as batch_module
from luna.streaming.batch import groups, push_many, step_many
from luna.streaming.vocoder import stream_generator
from tests.streaming.conftest import causal_tokenizer

ATOL = 1e-5  # audio in [-1, 1]; batched vs alone differ by float rounding only


def v3_vocoder(tok) -> HiFiGANVocoder:
    torch.manual_seed(0)
    return HiFiGANVocoder(HiFiGANGenerator(hifigan_generator_config("v3", hop_length=160), 40), tok.config.mel).eval()


@torch.no_grad()
def test_step_many_equals_separate_steps(tiny_causal):
    """Three HiFi-GAN streams with different histories (lengths, chunkings, content): batched steps of equal size
    give each stream the output and the state it gets alone (then a separate flush agrees too)."""
    g = v3_vocoder(tiny_causal).generator
    torch.manual_seed(1)
    histories = [[40, 3, 9], [17, 30, 1, 2], [60]]  # frames pushed before, per stream (past the start transient)
    alone, batched = [stream_generator(g) for _ in histories], [stream_generator(g) for _ in histories]
    for a, b, sizes in zip(alone, batched, histories):
        for n in sizes:
            mel = torch.randn(1, 40, n)
            a.step(mel)
            b.step(mel)
    assert len({b.key() for b in batched}) == 1  # the states differ in content and counters, not in shape
    for n in (4, 1, 7):
        x = torch.randn(len(histories), 40, n)
        want = [a.step(x[i : i + 1]) for i, a in enumerate(alone)]
        got = step_many(batched, x)
        assert got.shape[0] == 3 and all(torch.allclose(got[i : i + 1], w, atol=ATOL) for i, w in enumerate(want))
        assert not torch.equal(got[0], got[1])  # different rows, not one stream broadcast
    for a, b in zip(alone, batched):  # the scattered states carry on exactly as the separate ones
        assert torch.allclose(b.step(torch.zeros(1, 40, 0), last=True), a.step(torch.zeros(1, 40, 0), last=True), atol=ATOL)


def test_groups_keep_order():
    assert groups(["a", "b", "a", "c", "b"]) == [[0, 2], [1, 4], [3]]


@torch.no_grad()
def test_push_many_decoders_equal_single_streams(monkeypatch):
    """Four full decoders (causal decoder + HiFi-GAN) on different codes, some starting later: ``push_many`` each
    round equals each decoder pushed alone, and most rounds ran batched (groups of equal state and size)."""
    tok = causal_tokenizer(["model=tiny"], 16000)  # its own: the package fixture keeps Griffin-Lim
    tok.set_vocoder(v3_vocoder(tok))
    torch.manual_seed(2)
    codes = [torch.randint(0, tok.codebook_size, (1, tok.num_quantizers, 24)) for _ in range(4)]
    start = [0, 0, 3, 3]  # the last two streams join later: different histories
    alone = [tok.stream_decoder() for _ in codes]
    together = [tok.stream_decoder() for _ in codes]
    sizes = []
    real = batch_module._push_group
    monkeypatch.setattr(batch_module, "_push_group", lambda ds, c: sizes.append(len(ds)) or real(ds, c))
    outs_alone, outs_together = [[] for _ in codes], [[] for _ in codes]
    for r in range(8):
        live = [i for i in range(4) if start[i] <= r]
        chunk = lambda i: codes[i][..., (r - start[i]) * 3 : (r - start[i] + 1) * 3]  # noqa: E731
        for i in live:
            outs_alone[i].append(alone[i].push(chunk(i)))
        for i, audio in zip(live, push_many([together[i] for i in live], [chunk(i) for i in live])):
            outs_together[i].append(audio)
    for i in range(4):
        a, t = torch.cat(outs_alone[i], -1), torch.cat(outs_together[i], -1)
        assert a.shape == t.shape and a.numel() > 0 and torch.allclose(a, t, atol=ATOL)
        assert torch.allclose(together[i].flush(), alone[i].flush(), atol=ATOL)
    assert max(sizes) == 4 and len(sizes) >= 5  # batches of all four once the late streams caught up in shape
