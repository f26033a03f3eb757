"""HiFi-GAN's adversary: the multi-period and multi-scale discriminators, their optimizer and the GAN losses.

The adversary owns its update (audiocraft's pattern), so the training loop knows one optimizer only:

- per micro-batch, :meth:`generator_terms` scores the generated audio with the discriminators frozen (the
  generator's gradients flow through them, none land on them), and :meth:`accumulate` adds the gradient of the
  discriminator loss on (real, detached fake), scaled by ``1 / accumulate``;
- when the generator's optimizer steps, a post-step hook on it clips and steps the discriminators' optimizer at
  the generator's learning rate. The loop calls that step every time (a skipped step is skipped on the device,
  :mod:`luna.training.guard`), so the hook always runs: the discriminators skip with the generator (and when
  their own loss or gradients are non-finite), and a skipped step's gradients are never carried over.

Both players therefore update from the same point, from the same ``accumulate`` micro-batches, so
``trainer.accumulate = k`` is the batch ``k`` times larger (up to float rounding). HiFi-GAN's reference code steps
the discriminators first and scores the generator against the updated ones; here the generator is scored
against the discriminators of the step start, the simultaneous update that makes accumulation well defined.
"""
from __future__ import annotations

import contextlib
from typing import Any, Dict, Iterator, Tuple

import torch

from luna.training.discriminators import MultiPeriodDiscriminator, MultiScaleDiscriminator
from luna.training.gan_losses import discriminator_loss, feature_loss, generator_loss
from luna.distributed import DistEnv, wrap
from luna.training.guard import all_ranks_finite, step_skipping
from luna.training.schedule import adamw

MPD_CHANNELS = (32, 128, 512, 1024, 1024)
MSD_CHANNELS = (128, 128, 256, 512, 1024, 1024, 1024)


def _scaled(channels, width: float):
    return tuple(max(4, int(round(c * width / 4)) * 4) for c in channels)


class Adversary:
    def __init__(self, cfg: Any, env: DistEnv, generator_optimizer: torch.optim.Optimizer):
        width = float(cfg.vocoder.discriminator_width)
        self.mpd = MultiPeriodDiscriminator(channels=_scaled(MPD_CHANNELS, width)).to(env.device)
        self.msd = MultiScaleDiscriminator(channels=_scaled(MSD_CHANNELS, width)).to(env.device)
        self.mpd_net, self.msd_net = wrap(self.mpd, env), wrap(self.msd, env)
        self.params = [*self.mpd.parameters(), *self.msd.parameters()]
        self.optimizer = adamw(self.params, cfg.optimizer, cfg.optimizer.lr * cfg.hardware.lr_scale)
        self.accumulate_steps = int(cfg.trainer.accumulate)
        self.grad_clip = float(cfg.trainer.grad_clip)
        self.micro = 0  # micro-batches accumulated since the last step
        self.last_loss = torch.zeros((), device=env.device)
        generator_optimizer.register_step_post_hook(self._step)

    @contextlib.contextmanager
    def _frozen(self) -> Iterator[None]:
        for p in self.params:
            p.requires_grad_(False)
        try:
            yield
        finally:
            for p in self.params:
                p.requires_grad_(True)

    def generator_terms(self, y: torch.Tensor, y_hat: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(adversarial, feature matching ×2) of the generated ``y_hat [B, 1, S]`` against real ``y``."""
        with self._frozen():
            p_r, p_g, pf_r, pf_g = self.mpd(y, y_hat)
            s_r, s_g, sf_r, sf_g = self.msd(y, y_hat)
        adv = generator_loss(p_g)[0] + generator_loss(s_g)[0]
        fm = feature_loss(pf_r, pf_g) + feature_loss(sf_r, sf_g)  # includes the ×2
        return adv.float(), fm.float()

    def accumulate(self, y: torch.Tensor, y_hat: torch.Tensor) -> torch.Tensor:
        """Add this micro-batch's discriminator gradient (real ``y`` vs detached ``y_hat``); returns its loss."""
        p_r, p_g, _, _ = self.mpd_net(y, y_hat.detach())
        s_r, s_g, _, _ = self.msd_net(y, y_hat.detach())
        loss = discriminator_loss(p_r, p_g)[0] + discriminator_loss(s_r, s_g)[0]
        with torch.autocast(device_type=y.device.type, enabled=False):
            (loss.float() / self.accumulate_steps).backward()
        self.micro += 1
        self.last_loss = loss.detach().float()
        return self.last_loss

    def _step(self, generator_optimizer: torch.optim.Optimizer, *_: Any) -> None:
        """After each generator step: the discriminators' step from the same micro-batches, at the same lr."""
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip if self.grad_clip > 0 else float("inf"))
        for g in self.optimizer.param_groups:
            g["lr"] = generator_optimizer.param_groups[0]["lr"]
        skip = ~all_ranks_finite(self.last_loss, norm)
        generator_skipped = getattr(generator_optimizer, "found_inf", None)  # set by the loop or GradScaler
        if generator_skipped is not None:
            skip = skip | (generator_skipped > 0)
        if self.micro:
            step_skipping(self.optimizer, skip)
        self.optimizer.zero_grad(set_to_none=True)
        self.micro = 0

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.params)

    def state_dict(self) -> Dict[str, Any]:
        return {"discriminators": {"mpd": self.mpd.state_dict(), "msd": self.msd.state_dict()},
                "optimizer_d": self.optimizer.state_dict()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.mpd.load_state_dict(state["discriminators"]["mpd"])
        self.msd.load_state_dict(state["discriminators"]["msd"])
        self.optimizer.load_state_dict(state["optimizer_d"])
