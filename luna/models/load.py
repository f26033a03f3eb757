"""One tokenizer loader for every consumer (``luna.eval``, ``luna.tokenize``, a server): a checkpoint on a device,
eval mode, optionally with a vocoder attached. Failures are :class:`~luna.errors.LunaError` subclasses, one line naming
the file (:class:`CheckpointError`) or the vocoder (:class:`ConfigError`)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Union

import torch
from torch import nn

from luna.errors import CheckpointError, ConfigError, LunaError, one_line

__all__ = ["attach_vocoder", "load_tokenizer"]


def load_tokenizer(path: Union[str, Path], device: Union[str, torch.device], vocoder: Any = None):
    """The :class:`~luna.models.tokenizer.SpeechTokenizer` of checkpoint ``path`` on ``device`` in eval mode.

    ``vocoder``: a vocoder config node (built against the checkpoint's mel) or a vocoder module, attached for
    ``detokenize``; None keeps the checkpoint's own vocoder config (built lazily on first use).
    """
    from luna.models.tokenizer import SpeechTokenizer

    path = Path(path)
    try:
        tok = SpeechTokenizer.from_checkpoint(path, map_location="cpu")
    except CheckpointError as e:
        msg = one_line(e)
        raise CheckpointError(msg if msg.startswith(str(path)) else f"{path}: {msg}") from None
    tok = tok.to(device).eval()
    if vocoder is not None:
        attach_vocoder(tok, vocoder)
    return tok


def attach_vocoder(tok: Any, vocoder: Any) -> None:
    """Give ``tok`` the vocoder ``vocoder`` (a config node, built against ``tok``'s mel, or a vocoder module)."""
    if not isinstance(vocoder, nn.Module):
        from luna.models.vocoder import build_vocoder

        try:
            vocoder = build_vocoder(vocoder, model_mel=tok.config.mel)
        except LunaError:
            raise
        except (ValueError, RuntimeError, OSError) as e:  # e.g. an unreadable official config.json
            raise ConfigError(f"vocoder: {one_line(e)}") from None
    tok.set_vocoder(vocoder)  # on the tokenizer's device and dtype, and following it from then on
