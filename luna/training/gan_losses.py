"""HiFi-GAN's adversarial losses (LSGAN + feature matching), as in the official ``models.py``.

Each discriminator output in the lists below is ``[B, N]`` (a flattened patch map); feature maps are
one list per sub-discriminator of the activations after every conv. The per-discriminator terms come
back as detached tensors (the official code calls ``.item()``, which forces a GPU sync every step);
call ``.item()`` only when logging.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch


def feature_loss(
    fmap_r: Sequence[Sequence[torch.Tensor]], fmap_g: Sequence[Sequence[torch.Tensor]], weight: float = 2.0
) -> torch.Tensor:
    """Feature matching: ``weight`` × Σ over discriminators and layers of mean |real − fake|.

    ``weight`` = 2 is the official factor, already applied here (the official trainer adds this loss
    unscaled), so ``feature_loss(...)`` is the "fm × 2" term of the HiFi-GAN objective.
    """
    loss = torch.zeros(())
    for dr, dg in zip(fmap_r, fmap_g):
        for rl, gl in zip(dr, dg):
            loss = loss.to(gl) + torch.mean(torch.abs(rl - gl))
    return loss * weight


def discriminator_loss(
    disc_real_outputs: Sequence[torch.Tensor], disc_generated_outputs: Sequence[torch.Tensor]
) -> Tuple[torch.Tensor, List[torch.Tensor], List[torch.Tensor]]:
    """LSGAN discriminator loss Σ mean((1 − D(real))²) + mean(D(fake)²); also per-discriminator terms."""
    loss = torch.zeros(())
    r_losses: List[torch.Tensor] = []
    g_losses: List[torch.Tensor] = []
    for dr, dg in zip(disc_real_outputs, disc_generated_outputs):
        r_loss = torch.mean((1 - dr) ** 2)
        g_loss = torch.mean(dg**2)
        loss = loss.to(r_loss) + r_loss + g_loss
        r_losses.append(r_loss.detach())
        g_losses.append(g_loss.detach())
    return loss, r_losses, g_losses


def generator_loss(disc_outputs: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, List[torch.Tensor]]:
    """LSGAN generator loss Σ mean((1 − D(fake))²); also the per-discriminator terms (detached)."""
    loss = torch.zeros(())
    gen_losses: List[torch.Tensor] = []
    for dg in disc_outputs:
        term = torch.mean((1 - dg) ** 2)
        gen_losses.append(term.detach())
        loss = loss.to(term) + term
    return loss, gen_losses
