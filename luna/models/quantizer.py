"""Residual vector quantizer with EMA codebooks, the part the well-known codecs get subtly wrong.

Rules (DESIGN.md §3), each covered by a test:
- The codebook is never stored: it is ``embed_sum / cluster_size``, so replacing a code (both statistics
  at once) can never be undone by the same step's EMA update (audiocraft overwrites its revival).
- k-means init on the first ``kmeans_batches`` training batches (data gathered from every rank, broadcast from
  rank 0), every stage in turn on the residuals of the stages before; the batches before the last pass the
  latent through unquantized (an autoencoder warm-up: no codes, no commitment, no EMA), so the codebooks start
  from more vectors than one batch has (one CPU batch of 16 s gives 688 vectors for 1,024 codes).
- Dead codes (EMA usage below ``dead_code_threshold`` × uniform usage, a batch-size-free fraction) are
  revived from random vectors of the batch (or the worst-quantized ones, ``revival="worst"``) and get a
  grace period that doubles each time the same code dies again, so revival settles instead of cycling.
- Stage i+1 quantizes ``residual_i - sg(q_i)``: the commitment loss of every stage reaches the encoder
  (encodec #25); the straight-through estimator is applied once, on the sum.
- EMA statistics are all-reduced across ranks every step; all quantizer math runs in fp32.
- Quantizer dropout: a fraction of the samples use a random 1..N quantizers, so one model serves every N.
- ``gradient="rotation"``: the encoder's gradient passes the quantizer by the rotation trick (Fifty et al. 2024,
  arXiv 2410.06424) instead of the identity: the latent is rotated and rescaled onto the quantized sum by a
  fixed (detached) map, so the gradient keeps the angle between latent and code. Same forward values.

A training step reads nothing back to the host (no device sync on a GPU) and has no data-dependent shape
(tests/training/test_no_host_reads.py): the initialized flag is cached in Python, revival is masked tensor
arithmetic, counts use ``index_add_`` / ``scatter_add_`` rather than ``bincount``, and the EMA updates of all
stages are fused into one batched update after the stage loop (:func:`luna.models.codebook.update_stages`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from luna.models.codebook import EMACodebook, _nearest, update_stages, usage_stats


@dataclass
class QuantizerOutput:
    quantized: torch.Tensor  # [B, D, T] straight-through sum of the active stages
    codes: torch.Tensor  # [B, N, T] long
    commitment: torch.Tensor  # scalar: Σ over stages of the mean squared residual-to-code distance
    stage_commitment: torch.Tensor  # [n] the same per stage (each reaches the encoder output)
    num_quantizers: torch.Tensor  # [B] stages used per sample (quantizer dropout)


def rotate_to(x: torch.Tensor, q: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """The rotation trick, row-wise on ``x, q [M, D]``: ``s·R x`` with ``R`` the rotation taking x's direction
    to q's and ``s = |q| / |x|``, both detached. The value is exactly ``q`` (rounding is put back by a detached
    correction, and rows where the rotation is undefined, x = 0 or x = -q, still give q); d out / d x = s·R."""
    q = q.detach()
    nx, nq = x.detach().norm(dim=1, keepdim=True), q.norm(dim=1, keepdim=True)
    u, v = x.detach() / nx.clamp(min=eps), q / nq.clamp(min=eps)
    w = F.normalize(u + v, dim=1, eps=eps)
    rotated = x - 2 * (x * w).sum(1, keepdim=True) * w + 2 * (x * u).sum(1, keepdim=True) * v
    rotated = rotated * (nq / nx.clamp(min=eps))
    return rotated + (q - rotated).detach()


class ResidualVectorQuantizer(nn.Module):
    """N EMA codebook stages applied to successive residuals; input and output ``[B, D, T]``."""

    def __init__(
        self,
        dim: int,
        codebook_size: int,
        num_quantizers: int,
        decay: float = 0.99,
        kmeans_iters: int = 10,
        kmeans_batches: int = 1,
        dead_code_threshold: float = 0.1,
        revival_grace_steps: int = 200,
        quantizer_dropout: float = 0.0,
        seed: int = 0,
        revival: str = "random",
        gradient: str = "ste",
    ):
        super().__init__()
        if gradient not in ("ste", "rotation"):
            raise ValueError(f"gradient must be 'ste' or 'rotation', got {gradient!r}")
        self.gradient = gradient
        self.num_quantizers, self.codebook_size, self.dim = num_quantizers, codebook_size, dim
        self.quantizer_dropout = quantizer_dropout
        self.seed = seed
        self.kmeans_batches = int(kmeans_batches)
        self._pending: List[torch.Tensor] = []  # latents [B*T, D] of the warm-up batches (not state: a resume
        # before the init starts collecting again)
        self.layers = nn.ModuleList(
            EMACodebook(dim, codebook_size, decay, kmeans_iters, dead_code_threshold, revival_grace_steps, revival)
            for _ in range(num_quantizers)
        )

    def _generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed)

    def forward(self, z: torch.Tensor, num_quantizers: Optional[int] = None) -> QuantizerOutput:
        """Quantize ``z [B, D, T]``. In training mode codebooks learn (EMA) and dropout applies."""
        with torch.autocast(device_type=z.device.type, enabled=False):
            return self._forward(z.float(), num_quantizers)

    def _forward(self, z: torch.Tensor, num_quantizers: Optional[int]) -> QuantizerOutput:
        b, d, t = z.shape
        n = self.num_quantizers if num_quantizers is None else num_quantizers
        if not 1 <= n <= self.num_quantizers:
            raise ValueError(f"num_quantizers must be in 1..{self.num_quantizers}, got {n}")
        active_n = torch.full((b,), n, device=z.device, dtype=torch.long)
        dropout = self.training and self.quantizer_dropout > 0 and num_quantizers is None
        if dropout:
            drop = torch.rand(b, device=z.device) < self.quantizer_dropout
            random_n = torch.randint(1, n + 1, (b,), device=z.device)
            active_n = torch.where(drop, random_n, active_n)
        x = z.permute(0, 2, 1).reshape(b * t, d)  # [B*T, D]: one copy here instead of one per stage
        residual = x
        total = torch.zeros_like(x)
        if self.training and not self.layers[n - 1].is_initialized:
            self._pending.append(x.detach())
            if len(self._pending) < self.kmeans_batches:  # warm-up: the latent passes unquantized
                zero = z.new_zeros(())
                return QuantizerOutput(z, torch.zeros(b, n, t, dtype=torch.long, device=z.device), zero,
                                       z.new_zeros(n), active_n)
            self.init_codebooks(torch.cat(self._pending), n)
            self._pending = []
        stage_terms, codes, inputs, finite = [], [], [], []
        for i, layer in enumerate(self.layers[:n]):
            codebook, sq_norms = layer.tables()
            idx = _nearest(residual.detach(), codebook, sq_norms)  # [B*T]
            q = F.embedding(idx, codebook)  # [B*T, D], no gradient (EMA codebook)
            diff = residual - q  # the next stage's residual, built on the detached q (see module docstring)
            err = diff.pow(2).sum(1)  # [B*T] squared distance to the chosen code
            if self.training:  # the EMA statistics learn after the loop, all stages at once
                inputs.append(residual.detach())
                # a non-finite residual (or code) makes err non-finite: a check on [B*T], not [B*T, D]
                finite.append(torch.isfinite(err.detach()).all())
            per_sample = err.view(b, t).sum(1) / (t * d)  # [B] mean squared residual-to-code distance
            if dropout:
                mask = (active_n > i).to(x.dtype)  # [B] stage used by this sample
                stage_terms.append((per_sample * mask).sum() / mask.sum().clamp(min=1))
                total = total + (q.view(b, t, d) * mask[:, None, None]).view(b * t, d)
            else:  # every sample uses every stage: the same numbers without the mask arithmetic
                stage_terms.append(per_sample.mean())
                total = total + q
            residual = diff
            codes.append(idx.view(b, t))
        if self.training:  # stage i's update never changes the codebook stage i+1 searched: deferring is exact
            update_stages(self.layers[:n], torch.stack(inputs), torch.stack(codes).view(n, -1), torch.stack(finite))
        # straight-through once, on the sum (or the rotation trick: the same values, a different gradient)
        quantized = rotate_to(x, total) if self.gradient == "rotation" else x + (total - x).detach()
        stage_commitment = torch.stack(stage_terms)
        return QuantizerOutput(
            quantized=quantized.view(b, t, d).permute(0, 2, 1),
            codes=torch.stack(codes, dim=1),
            commitment=stage_commitment.sum(),
            stage_commitment=stage_commitment,
            num_quantizers=active_n,
        )

    @torch.no_grad()
    def init_codebooks(self, x: torch.Tensor, n: int) -> None:
        """k-means of stages 1..n in turn, each on ``x [M, D]`` minus the codes of the stages before."""
        for layer in self.layers[:n]:
            if not layer.is_initialized:
                layer.init_kmeans(x, self._generator())
            codebook, sq_norms = layer.tables()
            x = x - F.embedding(_nearest(x, codebook, sq_norms), codebook)

    @torch.no_grad()
    def encode(self, z: torch.Tensor, num_quantizers: Optional[int] = None) -> torch.Tensor:
        """``z [B, D, T]`` → codes ``[B, N, T]`` without touching any statistics."""
        n = self.num_quantizers if num_quantizers is None else num_quantizers
        x = z.float().permute(0, 2, 1)
        b, t, d = x.shape
        residual = x.reshape(-1, d)
        codes = []
        for i, layer in enumerate(self.layers[:n]):
            codebook, sq_norms = layer.tables()
            idx = _nearest(residual, codebook, sq_norms)
            if i + 1 < n:  # the last residual is not needed
                residual = residual - F.embedding(idx, codebook)
            codes.append(idx.view(b, t))
        return torch.stack(codes, dim=1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes ``[B, n, T]`` (n ≤ N: the first n stages) → quantized latent ``[B, D, T]``."""
        if codes.dim() != 3 or not 1 <= codes.shape[1] <= self.num_quantizers:
            raise ValueError(f"codes must be [B, 1..{self.num_quantizers}, T], got {tuple(codes.shape)}")
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise ValueError(f"codes must be in [0, {self.codebook_size}), got range [{int(codes.min())}, {int(codes.max())}]")
        out = 0
        for i in range(codes.shape[1]):
            out = out + self.layers[i].decode(codes[:, i])  # [B, T, D]
        return out.permute(0, 2, 1)

    def usage_counts(self) -> torch.Tensor:
        """EMA of the assignments actually made ``[N, K]`` (revival priors excluded)."""
        return torch.stack([layer.usage_ema for layer in self.layers])

    def replacements(self) -> torch.Tensor:
        """Codes revived in the last training step, per stage ``[N]``."""
        return torch.stack([layer.replaced for layer in self.layers])

    def stats(self) -> List[Dict[str, float]]:
        """Per-stage usage/perplexity/entropy/dead count of recent assignments, plus replacements.

        A code counts as used when its share of recent assignments exceeds 1% of the uniform share.
        """
        out = usage_stats(self.usage_counts(), 0.01)
        for s, r in zip(out, self.replacements().tolist()):
            s["replacements"] = int(r)
        return out
