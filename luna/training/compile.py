"""``trainer.compile``: the networks a task trains, compiled in place."""
from __future__ import annotations

from typing import Any


def compile_nets(cfg: Any, *modules: Any) -> None:
    """``trainer.compile``: ``torch.compile`` each network in place (``Module.compile``: its state dict keeps its
    keys, checkpoints stay interchangeable with eager runs). The quantizer is left eager: its k-means init and
    cached codebook tables are Python-side state, and its step is already a fixed set of fused ops."""
    if cfg.trainer.compile:
        for m in modules:
            m.compile(mode=cfg.trainer.compile_mode)
