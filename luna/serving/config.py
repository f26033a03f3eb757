"""Typed schema of ``luna/conf/serve.yaml`` (``python -m luna.serve``), registered as ``serve_schema``.

Lives here, not in :mod:`luna.config`: the server is an add-on and its keys concern no other entry point.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from luna.errors import ConfigError


@dataclass
class ServeConfig:
    checkpoint: str = MISSING  # a tokenizer or trainer checkpoint (.pt)
    host: str = "127.0.0.1"  # loopback unless told otherwise (0.0.0.0 exposes the server to the network)
    port: int = 8765  # 0: any free port (the chosen one is printed: "serving ws://HOST:PORT")
    device: str = "cpu"  # auto | cpu | cuda | cuda:N
    threads: Optional[int] = None  # torch intra-op threads (null: torch's default)
    workers: int = 1  # compute threads shared by all connections (each connection has one job in flight)
    queue_chunks: int = 8  # pending audio chunks per connection; when full the server stops reading that socket
    max_chunk_bytes: int = 1 << 20  # larger binary frames are refused (error chunk_too_large)
    max_turn_seconds: float = 300.0  # longest utterance a turn buffers (at the client's rate)
    sample_rates: List[int] = field(default_factory=lambda: [8000, 16000, 22050, 24000, 32000, 44100, 48000])
    ping_interval: Optional[float] = 20.0  # websocket keepalive (seconds; null: off)


def validate_serve(cfg) -> None:
    """Cross-field rules a type cannot express; each failure is one :class:`ConfigError` naming the key."""
    if not 0 <= int(cfg.port) <= 65535:
        raise ConfigError(f"port: must be 0..65535 (0 = any free port), got {cfg.port}")
    for key in ("workers", "queue_chunks", "max_chunk_bytes"):
        if int(getattr(cfg, key)) < 1:
            raise ConfigError(f"{key}: must be >= 1, got {getattr(cfg, key)}")
    if cfg.threads is not None and int(cfg.threads) < 1:
        raise ConfigError(f"threads: must be >= 1 or null, got {cfg.threads}")
    if float(cfg.max_turn_seconds) <= 0:
        raise ConfigError(f"max_turn_seconds: must be > 0, got {cfg.max_turn_seconds}")
    if not cfg.sample_rates or any(int(r) <= 0 for r in cfg.sample_rates):
        raise ConfigError(f"sample_rates: must be a non-empty list of positive rates, got {list(cfg.sample_rates)}")


ConfigStore.instance().store(name="serve_schema", node=ServeConfig)
