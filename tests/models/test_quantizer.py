"""The RVQ rules of DESIGN.md §3, each one a way the well-known codecs go wrong."""
from __future__ import annotations

import math

import pytest
import torch

from luna.models.codebook import EMACodebook, kmeans, usage_stats
from luna.models.quantizer import ResidualVectorQuantizer


def blobs(centers: torch.Tensor, per: int, std: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = centers.repeat_interleave(per, 0)
    return x + std * torch.randn(x.shape, generator=g)


def as_btd(x: torch.Tensor, t: int = 16) -> torch.Tensor:
    """[M, D] → [M/t, D, t] (the quantizer's input layout)."""
    m, d = x.shape
    return x.view(m // t, t, d).permute(0, 2, 1).contiguous()


def test_kmeans_init_puts_codes_on_the_data():
    g = torch.Generator().manual_seed(1)
    centers = torch.randn(8, 4, generator=g) * 5
    x = blobs(centers, 64, 0.01)
    x = x[torch.randperm(x.shape[0], generator=g)]
    rvq = ResidualVectorQuantizer(4, 8, 1, kmeans_iters=20).train()
    rvq(as_btd(x))
    cb = rvq.layers[0].codebook
    # every blob has a code on it, every code sits on a blob
    assert torch.cdist(centers, cb).min(dim=1).values.max() < 0.1
    assert torch.cdist(cb, centers).min(dim=1).values.max() < 0.1


def test_kmeans_over_several_batches_sees_every_batch_and_passes_the_warm_up_through():
    """kmeans_batches=3: batches 1-2 pass unquantized (no codes, no commitment, no statistics); batch 3 initializes
    every stage from all three, so blobs that only batch 1 holds still get codes."""
    g = torch.Generator().manual_seed(2)
    centers = torch.randn(12, 4, generator=g) * 5
    batches = [blobs(centers[4 * i : 4 * i + 4], 32, 0.01, seed=i) for i in range(3)]  # 4 blobs each
    rvq = ResidualVectorQuantizer(4, 12, 2, kmeans_iters=20, kmeans_batches=3).train()
    for x in batches[:2]:
        z = as_btd(x)
        out = rvq(z)
        assert torch.equal(out.quantized, z) and not out.codes.any() and float(out.commitment) == 0
        assert not any(layer.is_initialized for layer in rvq.layers)
        assert not rvq.layers[0].usage_ema.any()
    out = rvq(as_btd(batches[2]))
    assert all(layer.is_initialized for layer in rvq.layers) and not rvq._pending
    cb = rvq.layers[0].codebook
    assert torch.cdist(centers, cb).min(dim=1).values.max() < 0.1  # batch 1's blobs too
    assert float(out.commitment) < 1e-3  # quantized now: each vector sits on its blob's code


def test_one_kmeans_batch_initializes_every_stage_on_the_residuals_of_the_ones_before():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(256, 4, generator=g)
    rvq = ResidualVectorQuantizer(4, 16, 3, kmeans_iters=5).train()
    rvq.init_codebooks(x, 3)  # what the first training forward runs before quantizing
    residual = x
    for layer in rvq.layers:  # stage i's codebook is k-means of stage i's input, with the same seeded generator
        proj = torch.randn(4, generator=torch.Generator().manual_seed(0))
        expected = kmeans(residual[torch.argsort(residual @ proj)], 16, 5, rvq._generator())
        assert torch.allclose(layer.codebook, expected, atol=1e-5)
        residual = residual - layer.codebook[torch.cdist(residual, layer.codebook).argmin(1)]


def test_a_dead_code_is_replaced_and_survives_the_same_steps_ema_update():
    torch.manual_seed(0)
    layer = EMACodebook(4, 16, decay=0.9, dead_code_threshold=0.1, revival_grace_steps=5)
    x = torch.randn(256, 4)
    layer.init_kmeans(x, torch.Generator().manual_seed(0))
    far = torch.full((4,), 100.0)  # a code no vector will ever pick
    layer.embed_sum[3] = far * 1e-3
    layer.cluster_size[3] = 1e-3
    old = layer.codebook[3].clone()
    assert torch.allclose(old, far)
    batch = torch.randn(256, 4) * 3
    codes = layer.encode(batch)
    layer.update(batch, codes)
    new = layer.codebook[3]
    assert int(layer.replaced) >= 1
    assert not torch.allclose(new, old)
    # the revived code is a vector of this batch, not undone by the same step's EMA update
    assert torch.cdist(new[None], batch).min() < 1e-4
    # and it stays: the next update moves it by EMA only, never back to where it was
    layer.update(batch, layer.encode(batch))
    assert torch.cdist(layer.codebook[3][None], old[None]).item() > 50


def test_revival_uses_the_worst_quantized_vectors():
    layer = EMACodebook(2, 4, decay=0.99, dead_code_threshold=0.5, revival_grace_steps=10, revival="worst")
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    layer.init_kmeans(x.repeat(8, 1), torch.Generator().manual_seed(0))
    layer.cluster_size[0] = 1e-6  # dead
    layer.embed_sum[0] = torch.tensor([0.0, 0.0]) * 1e-6
    batch = torch.cat([x.repeat(4, 1), torch.tensor([[9.0, 9.0]])])  # one outlier, far from every code
    layer.update(batch, layer.encode(batch))
    assert torch.allclose(layer.codebook[0], torch.tensor([9.0, 9.0]), atol=1e-4)
    assert int(layer.grace[0]) == 10  # not judged dead again during its grace period


def test_random_revival_draws_batch_vectors_reproducibly():
    """revival="random": dead codes become distinct vectors of the batch, the same ones for the same seed."""
    def revive(seed: int) -> torch.Tensor:
        layer = EMACodebook(2, 8, decay=0.99, dead_code_threshold=0.5, revival_grace_steps=10, revival="random")
        layer.init_kmeans(torch.randn(64, 2, generator=torch.Generator().manual_seed(0)), torch.Generator().manual_seed(0))
        layer.cluster_size[:3] = 1e-6  # three dead codes
        layer.embed_sum[:3] = 0.0
        batch = torch.randn(40, 2, generator=torch.Generator().manual_seed(1)) + 5
        torch.manual_seed(seed)
        layer.update(batch, layer.encode(batch))
        assert int(layer.replaced) == 3 and layer.grace[:3].tolist() == [10] * 3
        return layer.codebook[:3].clone()

    new = revive(0)
    batch = torch.randn(40, 2, generator=torch.Generator().manual_seed(1)) + 5
    dist = torch.cdist(new, batch, compute_mode="donot_use_mm_for_euclid_dist")  # exact distances
    assert dist.min(1).values.max() < 1e-5 and len(set(dist.argmin(1).tolist())) == 3
    assert torch.equal(revive(0), new) and not torch.equal(revive(1), new)


def test_dead_threshold_does_not_depend_on_batch_size():
    layer = EMACodebook(2, 8, dead_code_threshold=0.2)
    sizes = torch.tensor([100.0, 100, 100, 100, 100, 100, 1, 100])
    layer.cluster_size.copy_(sizes)
    small = layer.dead_mask().clone()
    layer.cluster_size.copy_(sizes * 1000)  # the same usage shares at a 1000x larger batch
    assert torch.equal(small, layer.dead_mask())
    assert small.tolist() == [False] * 6 + [True, False]


def test_commitment_gradient_reaches_the_encoder_through_every_stage():
    torch.manual_seed(0)
    rvq = ResidualVectorQuantizer(8, 16, 4, kmeans_iters=2).train()
    z = torch.randn(4, 8, 32, requires_grad=True)
    out = rvq(z)
    assert out.stage_commitment.shape == (4,)
    for i in range(4):
        (g,) = torch.autograd.grad(out.stage_commitment[i], z, retain_graph=True)
        assert g.abs().sum() > 0, f"stage {i + 1}'s commitment does not reach the encoder"
    # straight-through once on the sum: d quantized / d z is the identity
    (g,) = torch.autograd.grad(out.quantized.sum(), z)
    assert torch.allclose(g, torch.ones_like(z))


def test_codebooks_are_not_optimizer_parameters():
    rvq = ResidualVectorQuantizer(8, 16, 3)
    assert list(rvq.parameters()) == []
    assert all(not b.requires_grad for b in rvq.buffers())
    z = torch.randn(2, 8, 10, requires_grad=True)
    rvq.train()(z).commitment.backward()
    assert all(b.grad is None for b in rvq.buffers())


def test_quantizer_dropout_gives_valid_codes_for_every_count():
    torch.manual_seed(0)
    n = 4
    rvq = ResidualVectorQuantizer(8, 16, n, quantizer_dropout=1.0, kmeans_iters=2).train()
    z = torch.randn(64, 8, 12)
    rvq(z)  # k-means init
    before = ResidualVectorQuantizer(8, 16, n)
    before.load_state_dict(rvq.state_dict())  # the codebooks this step quantizes with (before its EMA update)
    out = rvq(z)
    used = set(out.num_quantizers.tolist())
    assert used == set(range(1, n + 1))  # every count, 1 included
    assert out.codes.shape == (64, n, 12) and out.codes.min() >= 0 and out.codes.max() < 16
    rvq.eval()
    for b in range(8):  # each sample's output is the sum of exactly its first n_b stages
        k = int(out.num_quantizers[b])
        ref = before.decode(out.codes[b : b + 1, :k])
        assert torch.allclose(out.quantized[b : b + 1], ref, atol=1e-5)
    for k in range(1, n + 1):
        codes = rvq.encode(z, num_quantizers=k)
        assert codes.shape == (64, k, 12)
        assert rvq.decode(codes).shape == z.shape
    # more stages never quantize worse (on average)
    errs = [(rvq.decode(rvq.encode(z, k)) - z).pow(2).mean().item() for k in range(1, n + 1)]
    assert all(a >= b - 1e-6 for a, b in zip(errs, errs[1:]))


def test_usage_statistics_on_a_constructed_example():
    counts = torch.tensor([[10.0, 10.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0], [7.0, 0.0, 0.0, 0.0]])
    s = usage_stats(counts)
    assert [x["usage"] for x in s] == [0.5, 1.0, 0.25]
    assert [x["dead_codes"] for x in s] == [2, 0, 3]
    assert s[0]["perplexity"] == pytest.approx(2.0)
    assert s[1]["perplexity"] == pytest.approx(4.0)
    assert s[2]["perplexity"] == pytest.approx(1.0)
    assert s[0]["entropy_normalized"] == pytest.approx(0.5)
    assert s[1]["entropy_normalized"] == pytest.approx(1.0)
    assert s[2]["entropy_normalized"] == pytest.approx(0.0)


def test_eval_mode_and_encode_leave_statistics_alone():
    rvq = ResidualVectorQuantizer(4, 8, 2, kmeans_iters=1).train()
    rvq(torch.randn(4, 4, 16))
    before = {k: v.clone() for k, v in rvq.state_dict().items()}
    rvq.eval()
    rvq(torch.randn(4, 4, 16))
    rvq.encode(torch.randn(4, 4, 16))
    assert all(torch.equal(before[k], v) for k, v in rvq.state_dict().items())


def test_a_non_finite_batch_leaves_the_codebook_unchanged():
    rvq = ResidualVectorQuantizer(4, 8, 2, kmeans_iters=1).train()
    rvq(torch.randn(4, 4, 16))
    before = {k: v.clone() for k, v in rvq.state_dict().items() if k.endswith(("embed_sum", "cluster_size"))}
    z = torch.randn(4, 4, 16)
    z[0, 0, 0] = float("nan")
    rvq(z)
    for k, v in before.items():
        assert torch.equal(rvq.state_dict()[k], v), k


@pytest.mark.parametrize("revival", ["worst", "random"])
def test_revival_settles_instead_of_cycling(revival):
    """Replacements per step fall towards zero after warm-up on a stationary distribution."""
    torch.manual_seed(0)
    k, d = 64, 8
    centers = torch.randn(48, d) * 4
    layer = EMACodebook(d, k, decay=0.95, dead_code_threshold=0.1, revival_grace_steps=30, revival=revival)
    g = torch.Generator().manual_seed(0)
    replaced = []
    for step in range(800):
        idx = torch.randint(0, 48, (512,), generator=g)
        x = centers[idx] + 0.3 * torch.randn(512, d, generator=g)
        if step == 0:
            layer.init_kmeans(x, torch.Generator().manual_seed(0))
        layer.update(x, layer.encode(x))
        replaced.append(int(layer.replaced))
    early, late = sum(replaced[:300]), sum(replaced[-300:])
    # both arms revive (worst: outliers revived this way die again, which exercises the growing grace period;
    # random: measured 1 early revival); with revival switched off neither would
    assert early >= (2 if revival == "worst" else 1), "the setting should exercise revival"
    assert int(layer.revivals.sum()) == sum(replaced)  # every reported replacement is a revival of a code
    assert late <= 1, (early, late)  # without the growing grace period this cycles every ~50 steps forever
    used = usage_stats(layer.cluster_size[None])[0]["usage"]
    assert used > 0.6
    assert math.isfinite(layer.codebook.sum().item())


def test_reported_usage_counts_real_assignments_not_revival_priors():
    torch.manual_seed(0)
    rvq = ResidualVectorQuantizer(2, 8, 1, decay=0.5, kmeans_iters=5, dead_code_threshold=0.5).train()
    x = torch.tensor([[0.0, 0.0], [5.0, 5.0]]).repeat(64, 1)  # two points: at most 2 codes can be chosen
    z = as_btd(x)
    replaced = []
    for _ in range(20):
        rvq(z)
        replaced.append(rvq.stats()[0]["replacements"])
    s = rvq.stats()[0]
    assert s["usage"] == pytest.approx(2 / 8)  # revived codes sit in their grace period, unchosen
    assert s["perplexity"] == pytest.approx(2.0, rel=1e-3)
    # the 8 - 2 codes no point picks die once their EMA share falls below threshold/K (step 2 at decay 0.5),
    # are revived together, and stay in grace afterwards: stats() reports the last step's count
    assert sum(replaced) == 6 and replaced.count(6) == 1 and s["replacements"] == replaced[-1] == 0
    assert rvq.layers[0].revivals.tolist().count(1) == 6


# --- contracts the mutation run (benchmarks/mutation.sh vq) showed untested ---------------------------------


def test_usage_stats_threshold_fractional_totals_and_empty_rows():
    # shares .6 .3 .099 .001 (a total of 1.0: EMA counts are fractional); dead_fraction 0.5 → share > 0.125 is used
    stats = usage_stats(torch.tensor([[0.6, 0.3, 0.099, 0.001], [0.0, 0.0, 0.0, 0.0]]), dead_fraction=0.5)
    assert stats[0]["usage"] == 0.5 and stats[0]["dead_codes"] == 2
    assert stats[1] == {"usage": 0.0, "perplexity": 1.0, "entropy_normalized": 0.0, "dead_codes": 4}


def test_dead_mask_boundaries():
    layer = EMACodebook(2, 8, dead_code_threshold=1.0)  # dead: share < 1.0 / 8 = 0.125, and no grace left
    layer.cluster_size.copy_(torch.tensor([4.0, 2, 1, 1, 0, 0, 0, 0]))  # shares .5 .25 .125 .125 0 0 0 0
    layer.grace.copy_(torch.tensor([0, 0, 0, 0, 0, 1, 2, 0]))
    assert layer.dead_mask().tolist() == [False, False, False, False, True, False, False, True]


def test_documented_defaults_and_revival_reach_every_stage():
    rvq = ResidualVectorQuantizer(4, 8, 2)
    assert (rvq.quantizer_dropout, rvq.seed, rvq.kmeans_batches) == (0.0, 0, 1)
    for layer in rvq.layers:
        assert (layer.decay, layer.kmeans_iters, layer.dead_code_threshold, layer.revival_grace_steps, layer.revival) \
            == (0.99, 10, 0.1, 200, "random")
    assert [layer.revival for layer in ResidualVectorQuantizer(4, 8, 2, revival="worst").layers] == ["worst"] * 2


def _initialized(n: int = 3, k: int = 64, d: int = 16, **kw) -> ResidualVectorQuantizer:
    torch.manual_seed(0)
    rvq = ResidualVectorQuantizer(d, k, n, kmeans_iters=3, **kw).train()
    rvq(torch.randn(8, d, 32))  # k-means init + one EMA step
    return rvq


def test_quantizer_math_is_fp32_under_an_outer_autocast():
    rvq = _initialized(k=256, d=64).eval()
    z = torch.randn(8, 64, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = rvq(z)
    assert out.quantized.dtype == torch.float32
    assert torch.equal(out.codes, rvq.encode(z))  # encode runs outside any autocast: plain fp32


def test_training_forward_honours_num_quantizers_and_rejects_a_bad_count():
    rvq = _initialized(n=4)
    assert rvq(torch.randn(2, 16, 8), num_quantizers=2).codes.shape == (2, 2, 8)
    for bad in (0, 5):
        with pytest.raises(ValueError, match=r"num_quantizers must be in 1\.\.4, got " + str(bad)):
            rvq(torch.randn(2, 16, 8), num_quantizers=bad)


def test_decode_rejects_bad_shapes_and_out_of_range_codes_naming_them():
    rvq = _initialized(n=4, k=64)
    with pytest.raises(ValueError, match=r"codes must be \[B, 1\.\.4, T\], got \(2, 3\)"):
        rvq.decode(torch.zeros(2, 3, dtype=torch.long))  # 2-D: its dim 1 would pass the count check
    with pytest.raises(ValueError, match=r"got \(2, 5, 3\)"):
        rvq.decode(torch.zeros(2, 5, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"codes must be in \[0, 64\), got range \[0, 64\]"):
        rvq.decode(torch.tensor([[[0, 64]]]))
    with pytest.raises(ValueError, match=r"got range \[-1, 3\]"):
        rvq.decode(torch.tensor([[[-1, 3]]]))


def test_eval_forward_uses_every_stage_whatever_the_dropout():
    rvq = _initialized(n=4, quantizer_dropout=1.0).eval()
    z = torch.randn(16, 16, 8)
    out = rvq(z)
    assert out.num_quantizers.tolist() == [4] * 16
    assert torch.allclose(out.quantized, rvq.decode(out.codes), atol=1e-6)


def test_training_output_and_commitment_are_the_chosen_codes_and_their_distances():
    """quantized = Σ of each stage's chosen code (straight-through); stage i's commitment = the mean squared
    distance of stage i's input to its code, over the samples that use stage i."""
    for dropout in (0.0, 1.0):
        rvq = _initialized(n=4, k=32, quantizer_dropout=dropout)
        before = ResidualVectorQuantizer(16, 32, 4)
        before.load_state_dict(rvq.state_dict())  # the codebooks this step quantizes with
        torch.manual_seed(4)  # with dropout 1.0: stage 4 is used by exactly one of the 6 samples (asserted below)
        z = torch.randn(6, 16, 8)
        out = rvq(z)
        residual = z.permute(0, 2, 1)  # [B, T, D]
        for i in range(4):
            q = before.layers[i].decode(out.codes[:, i])  # [B, T, D]
            users = out.num_quantizers > i
            per_sample = (residual - q).pow(2).mean(dim=(1, 2))
            assert torch.allclose(out.stage_commitment[i], per_sample[users].mean(), rtol=1e-5)
            residual = residual - q
        if dropout:
            assert int((out.num_quantizers > 3).sum()) == 1
        for b in range(6):
            k = int(out.num_quantizers[b])
            assert torch.allclose(out.quantized[b : b + 1], before.decode(out.codes[b : b + 1, :k]), atol=1e-5)
        assert torch.allclose(out.commitment, out.stage_commitment.sum())


def test_kmeans_init_is_reproducible_whatever_the_global_seed():
    x = torch.randn(128, 4, generator=torch.Generator().manual_seed(5))
    books = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        rvq = ResidualVectorQuantizer(4, 16, 2, kmeans_iters=3)
        rvq.init_codebooks(x, 2)
        books.append(torch.stack([layer.codebook for layer in rvq.layers]))
    assert torch.equal(books[0], books[1])


def test_stats_count_a_code_as_used_above_one_percent_of_the_uniform_share():
    rvq = ResidualVectorQuantizer(4, 4, 1)
    rvq.layers[0].usage_ema.copy_(torch.tensor([0.5, 0.4965, 0.003, 0.0005]))  # 1 % of uniform: 0.0025
    assert rvq.stats()[0]["usage"] == 0.75


def test_kmeans_with_no_more_vectors_than_codes_keeps_them_and_draws_the_rest_reproducibly():
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    for seed in range(4):  # m == k: the vectors themselves, in order (k-means++ would pick them in a random order)
        assert torch.equal(kmeans(x, 4, 5, torch.Generator().manual_seed(seed)), x)
    runs = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)  # only the given generator draws
        runs.append(kmeans(x, 64, 5, torch.Generator().manual_seed(3)))
    out = runs[0]
    assert torch.equal(runs[0], runs[1]) and out.shape == (64, 3) and torch.equal(out[:4], x)
    drawn = torch.cdist(out[4:], x).argmin(1)
    assert torch.cdist(out[4:], x).min(1).values.max() == 0  # every extra code is one of the vectors
    assert set(drawn.tolist()) == {0, 1, 2, 3}  # each of them, the first one included


def test_kmeans_plus_plus_can_start_anywhere_and_reach_the_last_vector():
    x = torch.tensor([[0.0], [1.0], [100.0]])
    firsts = {float(kmeans(x, 1, 0, torch.Generator().manual_seed(s))) for s in range(32)}
    assert firsts == {0.0, 1.0, 100.0}
    for s in range(16):  # D² sampling: the far vector is (almost surely) a centroid, also when it is not first
        assert 100.0 in kmeans(x, 2, 0, torch.Generator().manual_seed(s)).flatten().tolist()
    torch.manual_seed(1)
    a = kmeans(torch.randn(50, 2, generator=torch.Generator().manual_seed(4)), 8, 3, torch.Generator().manual_seed(9))
    torch.manual_seed(2)
    b = kmeans(torch.randn(50, 2, generator=torch.Generator().manual_seed(4)), 8, 3, torch.Generator().manual_seed(9))
    assert torch.equal(a, b)  # the generator alone decides


def test_converged_kmeans_puts_every_used_centroid_at_the_mean_of_its_vectors():
    # data seed 30: a cluster ends with one vector after its centroid had moved off it (found by search)
    x = torch.randn(40, 2, generator=torch.Generator().manual_seed(30))
    c = kmeans(x, 16, 50, torch.Generator().manual_seed(0))
    assign = torch.cdist(x, c).argmin(1)
    singletons = 0
    for j in assign.unique():
        members = x[assign == j]
        singletons += len(members) == 1
        assert torch.allclose(c[j], members.mean(0), atol=1e-5)
    assert singletons >= 1  # the example exercises one-vector clusters


def test_codebook_tables_are_cached_until_either_statistic_changes():
    layer = EMACodebook(2, 4)
    first = layer.tables()
    assert layer.tables() is first  # reused while nothing changed
    layer.embed_sum.mul_(2)  # in place, like an EMA step
    assert torch.allclose(layer.tables()[0], 2 * first[0])
    layer.cluster_size.mul_(4)
    second = layer.tables()
    assert torch.allclose(second[0], first[0] / 2) and torch.allclose(second[1], second[0].pow(2).sum(1))


def test_codebook_defaults_and_buffer_types_that_checkpoints_hold():
    layer = EMACodebook(4, 8)
    assert (layer.decay, layer.kmeans_iters, layer.dead_code_threshold, layer.revival_grace_steps, layer.revival) \
        == (0.99, 10, 0.1, 200, "random")
    dtypes = {k: v.dtype for k, v in layer.state_dict().items()}
    assert dtypes == {"embed_sum": torch.float32, "cluster_size": torch.float32, "grace": torch.int64,
                      "revivals": torch.int64, "initialized": torch.bool, "replaced": torch.int64,
                      "usage_ema": torch.float32}


def test_the_warm_up_output_has_the_shapes_of_a_quantized_one():
    rvq = ResidualVectorQuantizer(4, 8, 3, kmeans_batches=2).train()
    out = rvq(torch.randn(2, 4, 5))
    assert out.codes.shape == (2, 3, 5) and out.codes.dtype == torch.long
    assert torch.equal(out.stage_commitment, torch.zeros(3)) and out.num_quantizers.tolist() == [3, 3]


def test_eval_never_initializes_and_a_partial_forward_initializes_only_its_stages():
    rvq = ResidualVectorQuantizer(4, 8, 4, kmeans_iters=2, kmeans_batches=2)
    rvq.eval()(torch.randn(2, 4, 16))
    assert not any(layer.is_initialized for layer in rvq.layers) and not rvq._pending
    rvq.train()
    for _ in range(2):  # the warm-up batch, then the init: stages 1-2 only
        out = rvq(torch.randn(2, 4, 16), num_quantizers=2)
    assert [layer.is_initialized for layer in rvq.layers] == [True, True, False, False]
    for n in (2, 1):  # initialized stages quantize: no second warm-up
        out = rvq(torch.randn(2, 4, 16), num_quantizers=n)
        assert float(out.commitment) > 0 and not rvq._pending
    for _ in range(2):  # all four: a warm-up batch, then stages 3-4 start from the residuals of 1-2
        out = rvq(torch.randn(2, 4, 16))
    assert all(layer.is_initialized for layer in rvq.layers) and float(out.stage_commitment[3]) > 0


def test_rotation_trick_gives_the_code_and_a_scaled_rotation_of_the_gradient():
    """rotate_to: the value is q exactly; the gradient is s·Rᵀg with R the rotation taking x's direction to q's
    (R u = v, RᵀR = I) and s = |q|/|x|; undefined rows (x = 0, x = -q) still give q."""
    from luna.models.quantizer import rotate_to

    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 6, generator=g).requires_grad_()
    q = torch.randn(40, 6, generator=g) * 3
    y = rotate_to(x, q)
    assert torch.equal(y.detach(), q)
    up = torch.randn(40, 6, generator=g)
    (y * up).sum().backward()
    nx, nq = x.detach().norm(dim=1, keepdim=True), q.norm(dim=1, keepdim=True)
    u, v = x.detach() / nx, q / nq
    w = torch.nn.functional.normalize(u + v, dim=1)
    rot = torch.eye(6) - 2 * w[:, :, None] * w[:, None, :] + 2 * v[:, :, None] * u[:, None, :]
    assert torch.allclose(rot @ u[:, :, None], v[:, :, None], atol=1e-5)
    assert torch.allclose(rot.transpose(1, 2) @ rot, torch.eye(6).expand(40, 6, 6), atol=1e-5)
    expected = (nq / nx) * (rot.transpose(1, 2) @ up[:, :, None]).squeeze(-1)
    assert torch.allclose(x.grad, expected, atol=1e-5)
    # the gradient is not the straight-through one (identity) unless x already points at q
    assert not torch.allclose(x.grad, up, atol=1e-2)
    odd = torch.stack([torch.zeros(6), -q[1]]).requires_grad_()
    out = rotate_to(odd, torch.stack([q[0], q[1]]))
    assert torch.equal(out.detach(), torch.stack([q[0], q[1]]))


def test_rotation_gradient_changes_only_the_gradient_of_the_quantizer():
    """gradient="rotation": the same codes, output and commitment as "ste"; a different encoder gradient; a bad
    name is refused."""
    x = torch.randn(4, 8, 16, generator=torch.Generator().manual_seed(3))
    outs = {}
    for mode in ("ste", "rotation"):
        rvq = ResidualVectorQuantizer(8, 16, 3, gradient=mode).train()
        z = x.clone().requires_grad_()
        out = rvq(z)
        out.quantized.pow(2).sum().backward()
        outs[mode] = (out, z.grad)
    (a, ga), (b, gb) = outs["ste"], outs["rotation"]
    assert torch.equal(a.codes, b.codes) and torch.equal(a.commitment, b.commitment)
    assert torch.allclose(a.quantized, b.quantized, atol=1e-6)
    assert torch.allclose(ga, 2 * a.quantized.detach())  # STE: d/dz of |q|² is 2q
    assert not torch.allclose(ga, gb, atol=1e-3)
    with pytest.raises(ValueError, match="gradient must be 'ste' or 'rotation', got 'rot'"):
        ResidualVectorQuantizer(8, 16, 3, gradient="rot")
