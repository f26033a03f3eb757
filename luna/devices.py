"""One device resolver: ``auto | cpu | cuda | cuda:N`` → :class:`torch.device`, or a ConfigError naming the key."""
from __future__ import annotations

import torch

from luna.errors import ConfigError


def resolve_device(name: str, key: str = "device") -> torch.device:
    """``auto`` is CUDA when available, else CPU; asking for CUDA without it is a user error, not a traceback."""
    name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"{key}: must be auto, cpu, cuda or cuda:N, got {name!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{key}={name} but no CUDA device is available (use {key}=cpu or {key}=auto)")
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"{key}: must be auto, cpu, cuda or cuda:N, got {name!r}")
    return dev
