"""One device resolver: ``auto | cpu | cuda | cuda:N`` → :class:`torch.device`, or a ConfigError naming the key; and
the precision one: ``hardware.precision=auto`` → what the device computes natively."""
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


#: the autocast dtype of each mixed precision (fp32 has none)
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 in hardware: a CUDA GPU that supports it, or a CPU with AVX512-BF16 or AMX
    (elsewhere a CPU emulates bf16, slower than fp32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` → ``bf16`` where :func:`native_bf16`, else ``fp32``; any other value as it is."""
    if precision != "auto":
        return precision
    return "bf16" if native_bf16(device) else "fp32"
