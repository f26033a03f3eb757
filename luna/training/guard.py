"""The optimizer step that never reads the device: a non-finite step is skipped on the device, counted there,
and judged by the host only at the loop's sync points (every ``logger.log_every_steps`` steps).

- A step whose loss or gradient norm is non-finite on any rank is skipped by the fused AdamW kernel itself
  (``optimizer.found_inf``, the hook GradScaler uses): no weight, moment or step count changes, and no
  ``.item()`` stalls the queue of kernels.
- Under fp16 the GradScaler skips gradient overflows (its business: it then lowers the scale); a step whose
  *loss* is non-finite is a bad step, under every precision.
- Bad steps are counted on the device: in a row (the current run and the longest run since the last check) and
  in all. :meth:`StepGuard.check` reads them; after ``trainer.max_bad_steps`` in a row it stops the run, naming
  the last good checkpoint.
- Hooks registered on the optimizer (the GAN's discriminator step) always run and see ``optimizer.found_inf``,
  so they skip with the generator and never carry a skipped step's gradients over.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist

from luna.errors import TrainingError

log = logging.getLogger("luna.trainer")


def all_ranks_finite(*tensors: torch.Tensor) -> torch.Tensor:
    """A bool tensor on the tensors' device: every tensor finite on every rank (an all-reduce, no host read)."""
    ok = torch.stack([torch.isfinite(t).all() for t in tensors]).all().to(torch.float32)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return ok > 0


def step_skipping(optimizer: torch.optim.Optimizer, skip: torch.Tensor) -> None:
    """``optimizer.step()`` that leaves everything untouched where ``skip`` (a device bool) is true."""
    if not optimizer.defaults.get("fused"):
        raise TypeError("step_skipping needs a fused optimizer (luna.training.schedule.adamw builds one)")
    optimizer.found_inf = skip.to(torch.float32)  # read by the fused kernel, and by post-step hooks
    try:
        optimizer.step()
    finally:
        del optimizer.found_inf


class StepGuard:
    """Clip, step or skip, count: see the module docstring."""

    def __init__(self, device: torch.device, max_bad_steps: int, grad_clip: float):
        self.max_bad_steps, self.grad_clip = int(max_bad_steps), float(grad_clip)
        zero = torch.zeros((), device=device)
        self.run, self.longest, self.skipped = zero.clone(), zero.clone(), zero.clone()  # device counters
        self.checked_skips = 0  # skipped steps already reported

    def step(self, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, loss: torch.Tensor,
             lr: float) -> torch.Tensor:
        """One optimizer step at ``lr`` (gradients already accumulated); returns the gradient norm (a device
        tensor, read only when logged)."""
        scaler.unscale_(optimizer)
        params = [p for g in optimizer.param_groups for p in g["params"]]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, self.grad_clip if self.grad_clip > 0 else float("inf"))
        for g in optimizer.param_groups:
            g["lr"] = lr
        if scaler.is_enabled():
            bad = ~all_ranks_finite(loss)
            scaler.step(optimizer)  # skips gradient overflows itself, through the same found_inf
            scaler.update()
        else:
            bad = ~all_ranks_finite(loss, grad_norm)
            step_skipping(optimizer, bad)
        optimizer.zero_grad(set_to_none=True)
        b = bad.to(self.run.dtype)
        self.run.add_(b).mul_(b)  # consecutive bad steps (0 after a good one)
        torch.maximum(self.longest, self.run, out=self.longest)
        self.skipped.add_(b)
        return grad_norm

    def check(self, step: int, last_checkpoint: Optional[Path]) -> int:
        """Host read (at a sync point): log the bad steps since the last check, stop after too many in a row.
        Returns how many were skipped since the last check."""
        skipped, longest = int(self.skipped), int(self.longest)
        self.longest.copy_(self.run)
        new, self.checked_skips = skipped - self.checked_skips, skipped
        if new:
            log.warning("step %d: %d step(s) skipped since the last check (non-finite loss or gradient; %d in a row "
                        "at most)", step, new, longest)
        if longest >= self.max_bad_steps:
            last = last_checkpoint if last_checkpoint is not None and Path(last_checkpoint).is_file() else "none yet"
            raise TrainingError(
                f"{longest} non-finite steps in a row (trainer.max_bad_steps={self.max_bad_steps}); stopping at step "
                f"{step}. Last good checkpoint: {last}. Lower optimizer.lr, use hardware.precision=fp32, or check the "
                f"data.")
        return new
