"""What the loop trains: a task builds its nets and optimizer and says what a batch costs.

A task (composition, not a subclass of the loop) has:

- ``model``: the network the loop checkpoints as ``model``; ``net``: the same, DDP-wrapped when distributed
  (the loop's ``no_sync`` goes through it); ``optimizer``: the one optimizer the loop steps, clips and
  schedules (anything else a task trains, such as a GAN's discriminators, owns its own update);
- ``sample_rate``: the rate the data is read at;
- ``losses(audio [B, S], lengths [B]) -> (loss, {name: term})``: one training micro-batch, forward only;
- ``validation(audio, lengths) -> (loss, mel L1, media)`` under ``no_grad``; ``media(trackers, media, step)``;
- ``health(scalars, step, trackers)``: task-specific scalars and alarms at logging steps;
- ``state_dict()`` / ``load_state_dict(state)``: what a checkpoint adds beyond model, optimizer and position;
- ``describe()``: one log line; ``metrics()``: what ``metrics.json`` adds.
"""
from __future__ import annotations

from typing import Any

from luna.distributed import DistEnv


def build_task(cfg: Any, env: DistEnv) -> Any:
    """The task named by ``cfg.task`` (``tokenizer`` or ``vocoder``), its nets on ``env.device``."""
    if cfg.task == "vocoder":
        from luna.training.tasks.vocoder import VocoderTask

        return VocoderTask(cfg, env)
    from luna.training.tasks.tokenizer import TokenizerTask

    return TokenizerTask(cfg, env)
