"""One EMA codebook: nearest-code search, k-means init, EMA statistics and dead-code revival (fp32 throughout).

The codebook is never stored: it is ``embed_sum / cluster_size``, so replacing a code (both statistics at
once) can never be undone by the same step's EMA update. Used in stages by
:class:`luna.models.quantizer.ResidualVectorQuantizer`, whose docstring lists the rules and their tests.

Shapes: vectors ``[M, D]`` (the quantizer flattens ``[B, D, T]``), codes ``[M]``, codebook ``[K, D]``.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def usage_stats(counts: torch.Tensor, dead_fraction: float = 0.0) -> List[Dict[str, float]]:
    """Per-quantizer code statistics from counts ``[N, K]`` (histograms or EMA cluster sizes).

    usage: fraction of codes whose share exceeds ``dead_fraction`` × uniform share (0: used at all);
    perplexity: exp(entropy); entropy_normalized: entropy / log K; dead_codes: K - used.
    """
    counts = counts.double().clamp(min=0)
    k = counts.shape[-1]
    out = []
    for c in counts:
        total = c.sum()
        p = c / total if total > 0 else torch.zeros_like(c)
        used = (p > dead_fraction / k).sum().item() if total > 0 else 0
        nz = p[p > 0]
        entropy = float(-(nz * nz.log()).sum()) if nz.numel() else 0.0
        out.append(
            {
                "usage": used / k,
                "perplexity": math.exp(entropy),
                "entropy_normalized": entropy / math.log(k),
                "dead_codes": int(k - used),
            }
        )
    return out


def kmeans(x: torch.Tensor, k: int, iters: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeding then Lloyd iterations on ``x [M, D]`` → centroids ``[k, D]``.

    With fewer vectors than codes the extra codes repeat data points (revival spreads them out later);
    empty clusters keep their previous centroid. The seeding loop is sequential (k draws), so each
    iteration is kept to a few tensor ops and never reads a value back to the host.
    """
    m = x.shape[0]
    if m <= k:
        extra = torch.randint(0, m, (k - m,), generator=generator).to(x.device)
        return torch.cat([x, x[extra]])
    first = int(torch.randint(0, m, (1,), generator=generator))
    centroids = [x[first : first + 1]]
    d2 = (x - x[first]).pow(2).sum(1)  # [M] squared distance to the nearest chosen centroid
    u = torch.rand(k, generator=generator).to(x.device, torch.float64)
    for i in range(1, k):  # D² sampling by inverse CDF (no host sync per draw)
        cdf = torch.cumsum(d2, 0, dtype=torch.float64)
        j = torch.searchsorted(cdf, cdf[-1:] * u[i]).clamp_(max=m - 1)  # [1]
        c = x.index_select(0, j)  # [1, D]
        centroids.append(c)
        d2 = torch.minimum(d2, torch.sub(x, c).square_().sum(1))
    centroids = torch.cat(centroids)
    for _ in range(iters):
        assign = _nearest(x, centroids)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).to(x.dtype)
        centroids = torch.where((counts == 0)[:, None], centroids, sums / counts.clamp(min=1)[:, None])
    return centroids


def _nearest(x: torch.Tensor, codebook: torch.Tensor, sq_norms: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Index of the nearest code for each row of ``x [M, D]``: one matmul, argmin of ||e||² - 2 x·e.

    ``sq_norms [K]`` (= ||e||², see :meth:`EMACodebook.tables`) skips recomputing the norms per call.
    """
    if sq_norms is None:
        sq_norms = codebook.pow(2).sum(1)
    scores = torch.addmm(sq_norms[None, :], x, codebook.t(), alpha=-2.0)  # [M, K]
    return scores.argmin(dim=1)


class EMACodebook(nn.Module):
    """One RVQ stage: K codes of size D held as EMA statistics (buffers, never optimizer parameters).

    A training step never reads a tensor back to the host on an accelerator (no per-step sync): the
    ``initialized`` flag is cached in Python and revival is done with masked tensor ops.
    """

    def __init__(
        self,
        dim: int,
        codebook_size: int,
        decay: float = 0.99,
        kmeans_iters: int = 10,
        dead_code_threshold: float = 0.1,
        revival_grace_steps: int = 200,
        revival: str = "random",
        eps: float = 1e-5,
    ):
        super().__init__()
        self.revival = revival
        self.dim, self.codebook_size = dim, codebook_size
        self.decay, self.kmeans_iters, self.eps = decay, kmeans_iters, eps
        self.dead_code_threshold, self.revival_grace_steps = dead_code_threshold, revival_grace_steps
        self.register_buffer("embed_sum", torch.randn(codebook_size, dim))  # Σ of assigned vectors (EMA)
        self.register_buffer("cluster_size", torch.ones(codebook_size))  # assignment counts (EMA)
        self.register_buffer("grace", torch.zeros(codebook_size, dtype=torch.long))  # steps left unjudged
        self.register_buffer("revivals", torch.zeros(codebook_size, dtype=torch.long))  # times each code was revived
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        self.register_buffer("replaced", torch.zeros((), dtype=torch.long))  # codes revived in the last step
        # assignments actually made (EMA), never touched by revival: what usage statistics report
        self.register_buffer("usage_ema", torch.zeros(codebook_size))
        # host-side caches keyed by (storage, version) of the buffers they derive from: any in-place change
        # (EMA update, revival, load_state_dict's copy_, fill_) or a move to another device invalidates them
        self._init_key: Optional[tuple] = None
        self._init_value = False
        self._tables_key: Optional[tuple] = None
        self._tables: Optional[Tuple[torch.Tensor, torch.Tensor]] = None

    @staticmethod
    def _key(*buffers: torch.Tensor) -> Optional[tuple]:
        """Identity + version of the buffers; None for inference tensors, which have no version counter
        (a module built under ``torch.inference_mode``): those are never cached."""
        if any(b.is_inference() for b in buffers):
            return None
        return tuple(v for b in buffers for v in (b.data_ptr(), b._version))

    @property
    def is_initialized(self) -> bool:
        """``bool(initialized)``, read from the device only when the buffer changed (not once per step)."""
        key = self._key(self.initialized)
        if key is None or key != self._init_key:
            self._init_value, self._init_key = bool(self.initialized), key
        return self._init_value

    @property
    def codebook(self) -> torch.Tensor:
        """``[K, D]`` derived every time: a replacement of both statistics is final."""
        return self.embed_sum / self.cluster_size.clamp(min=self.eps)[:, None]

    def tables(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """(codebook ``[K, D]``, squared norms ``[K]``), recomputed only when the statistics changed.

        Inference reuses them across calls; a training step derives them once per stage instead of once
        per use (encode, decode).
        """
        key = self._key(self.embed_sum, self.cluster_size)
        if key is None or key != self._tables_key or self._tables is None:
            with torch.no_grad():
                cb = self.codebook
                tables = (cb, cb.pow(2).sum(1))
            if key is None:
                return tables
            self._tables, self._tables_key = tables, key
        return self._tables

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``x [M, D]`` → codes ``[M]`` (pure; no statistics touched)."""
        return _nearest(x.float(), *self.tables())

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return F.embedding(codes, self.tables()[0])

    def dead_mask(self) -> torch.Tensor:
        share = self.cluster_size / self.cluster_size.sum().clamp(min=self.eps)
        return (share < self.dead_code_threshold / self.codebook_size) & (self.grace <= 0)

    @torch.no_grad()
    def init_kmeans(self, x: torch.Tensor, generator: torch.Generator) -> None:
        """Codebook := k-means of ``x`` gathered from every rank; rank 0's result is broadcast."""
        if _distributed():
            gathered = [torch.empty_like(x) for _ in range(dist.get_world_size())]
            dist.all_gather(gathered, x.contiguous())
            x = torch.cat(gathered)
        # a canonical order (by a fixed random projection) makes the result independent of how the
        # vectors were split over ranks: 2 ranks × B/2 initialize exactly like 1 rank × B
        proj = torch.randn(x.shape[1], generator=torch.Generator().manual_seed(0)).to(x)
        x = x[torch.argsort(x @ proj)]
        centroids = kmeans(x, self.codebook_size, self.kmeans_iters, generator)
        # a uniform prior count so no code starts dead; the codebook is exactly the centroids
        size = torch.full_like(self.cluster_size, max(float(x.shape[0]) / self.codebook_size, 1.0))
        self.cluster_size.copy_(size)
        self.embed_sum.copy_(centroids * size[:, None])
        if _distributed():
            dist.broadcast(self.cluster_size, 0)
            dist.broadcast(self.embed_sum, 0)
        self.initialized.fill_(True)
        self._init_value, self._init_key = True, self._key(self.initialized)  # known: no read at the next step

    @torch.no_grad()
    def update(self, x: torch.Tensor, codes: torch.Tensor, finite: Optional[torch.Tensor] = None) -> None:
        """EMA update from this batch (all-reduced over ranks), then dead-code revival: :func:`update_stages`
        for this one stage. ``finite`` (a bool scalar) defaults to ``isfinite(x).all()``."""
        finite = torch.isfinite(x).all() if finite is None else finite
        update_stages([self], x[None], codes[None], finite.reshape(1))


@torch.no_grad()
def update_stages(layers: Sequence[EMACodebook], x: torch.Tensor, codes: torch.Tensor, finite: torch.Tensor) -> None:
    """EMA update and dead-code revival of N stages at once: ``x [N, M, D]`` the vectors each stage quantized,
    ``codes [N, M]`` their codes, ``finite [N]`` (bool) whether each stage's batch was finite.

    Fused: one scatter for the counts and one for the sums of all stages, one all-reduce of each, the decay and
    revival as batched tensor ops on the stacked statistics, one multi-tensor copy back per buffer, so the
    cost is a few dozen kernels whatever N. Fixed shapes and no host read: a step can be captured (CUDA graphs).

    Revival replaces dead codes by batch vectors, identical on all ranks: the ones the stage quantizes worst
    (``revival="worst"``) or a random draw of the batch (``"random"``: codes land where the data is dense, as in
    EnCodec and vector-quantize-pytorch); the k-th dead code (by index) takes the k-th chosen vector of rank 0's
    batch, which is broadcast. A code that dies again gets twice the grace each time: revival settles.
    """
    first = layers[0]
    n, m, d = x.shape
    k, dev = first.codebook_size, x.device
    flat = (codes + torch.arange(n, device=dev)[:, None] * k).reshape(-1)  # [N*M] index into the stacked codes
    # assignment counts: index_add, not bincount, which reads max(codes) back to the host on CUDA. Sums:
    # scatter_add_, not index_add_: on a 2-core CPU with the other core busy, index_add_'s parallel path stalls
    # (150 ms instead of 0.1 ms for 688 x 128 at 2 threads). NaN/inf is zeroed on the sums (scaled by 0 below).
    counts = torch.zeros(n * k, device=dev).index_add_(0, flat, torch.ones(n * m, device=dev)).view(n, k)
    sums = torch.zeros(n * k, d, device=dev).scatter_add_(0, flat[:, None].expand(-1, d), x.reshape(-1, d))
    sums = sums.nan_to_num_().view(n, k, d)
    finite = finite.float()
    if _distributed():
        dist.all_reduce(counts)
        dist.all_reduce(sums)
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    keep = 1 - (1 - first.decay) * finite[:, None]  # [N, 1]: 1.0 (no change) for a non-finite stage
    size = torch.stack([l.cluster_size for l in layers]).mul_(keep).add_(counts * (1 - keep))
    embed = torch.stack([l.embed_sum for l in layers]).mul_(keep[..., None]).add_(sums.mul_(1 - keep[..., None]))
    usage = torch.stack([l.usage_ema for l in layers]).mul_(keep).add_(counts.mul_(1 - keep))
    grace = torch.stack([l.grace for l in layers]).sub_(1).clamp_(min=0)
    revivals = torch.stack([l.revivals for l in layers])

    # revival: the dead mask comes from all-reduced statistics, so every rank replaces the same codes
    share_of = size / size.sum(1, keepdim=True).clamp(min=first.eps)
    dead = (share_of < first.dead_code_threshold / k) & (grace <= 0) & (finite[:, None] > 0) & (m > 0)  # [N, K]
    if m > 0:
        if not _distributed() or dist.get_rank() == 0:
            if first.revival == "random":
                order = torch.rand(n, m, device=dev).argsort(1)  # [N, M] a random draw per stage
            else:
                cb = embed / size.clamp(min=first.eps)[..., None]
                err = (x - cb.gather(1, codes[..., None].expand(-1, -1, d))).pow(2).sum(-1)  # [N, M]
                order = err.argsort(1, descending=True)
            slot = (dead.cumsum(1) - 1).clamp(min=0) % m  # [N, K] rank among the stage's dead codes
            candidates = x.gather(1, order.gather(1, slot)[..., None].expand(-1, -1, d))  # [N, K, D]
        else:
            candidates = torch.empty_like(embed)
        if _distributed():
            dist.broadcast(candidates, 0)
        share = size.sum(1, keepdim=True) / k  # [N, 1] a uniform share: alive at once
        embed = torch.where(dead[..., None], candidates * share[..., None], embed)
        size = torch.where(dead, share, size)
        backoff = torch.pow(2, revivals.clamp(max=10))
        grace = torch.where(dead, first.revival_grace_steps * backoff, grace)
        revivals = revivals + dead
    for name, value in (("cluster_size", size), ("embed_sum", embed), ("usage_ema", usage), ("grace", grace),
                        ("revivals", revivals), ("replaced", dead.sum(1))):
        torch._foreach_copy_([getattr(l, name) for l in layers], list(value.unbind(0)))
