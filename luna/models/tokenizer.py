"""SpeechTokenizer: audio → log-mel → encoder → RVQ codes → decoder → log-mel → vocoder → audio.

The public API of luna (re-exported as ``luna.SpeechTokenizer``).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from luna.version import __version__
from luna.audio import resample, to_mono
from luna.config import ConfigError, MelConfig, ModelConfig, VocoderConfig, check_mel_compatible, plain, typed
from luna.validation import validate_mel, validate_model
from luna.rate import Rate, model_rate
from luna.features import MelSpectrogram, mel_mismatches
from luna.models.causal import CausalDecoder, CausalEncoder
from luna.models.codec import Decoder, Encoder
from luna.models.quantizer import ResidualVectorQuantizer
from luna.serialization import CheckpointError, atomic_save, safe_load

__all__ = ["SpeechTokenizer", "TokenizerOutput", "CheckpointError"]


@dataclass
class TokenizerOutput:
    """What the network computes for a batch; the objective on it lives in :mod:`luna.losses`."""

    mel: torch.Tensor  # [B, n_mels, T] target log-mel
    mel_hat: torch.Tensor  # [B, n_mels, T] reconstruction
    codes: torch.Tensor  # [B, N, T / stride]
    commitment: torch.Tensor  # [] mean squared distance of the latents to their quantized values
    num_quantizers: Optional[torch.Tensor] = None  # [B] stages used per sample (quantizer dropout)


def _model_node(cfg: Any) -> DictConfig:
    """A typed, resolved, validated model config from a model node in any form."""
    node = typed(ModelConfig, cfg)
    validate_model(node)
    return node


def _vocoder_node(cfg: Any, model: DictConfig) -> DictConfig:
    """The vocoder config; for a bare model (``cfg`` None) the pretrained universal HiFi-GAN when the model is on
    its mel convention (the default rvq8 presets), else Griffin-Lim on the model's mel."""
    if cfg is None:
        universal = not mel_mismatches(model.mel, MelConfig())  # MelConfig's defaults are the universal convention
        kind = "hifigan_universal" if universal else "griffinlim"
        cfg = {"name": kind, "kind": kind, "mel": plain(model.mel)}
    node = typed(VocoderConfig, cfg)
    validate_mel(node.mel, "vocoder.mel")
    return node


class SpeechTokenizer(nn.Module):
    """Mel-RVQ speech tokenizer. ``tokenize`` → ``LongTensor [B, N, T]``; ``detokenize`` → audio at model rate."""

    def __init__(self, model: Any = None, vocoder: Any = None):
        super().__init__()
        model_cfg = _model_node(model if model is not None else ModelConfig())
        vocoder_cfg = _vocoder_node(vocoder, model_cfg)
        check_mel_compatible(model_cfg.mel, vocoder_cfg.mel)
        self.config = model_cfg
        self._rate = model_rate(model_cfg)  # the config is fixed from here on
        self.vocoder_config = vocoder_cfg
        m = model_cfg
        dim = m.codebook_dim or m.hidden
        self.mel = MelSpectrogram(m.mel, causal=m.causal)
        shape = (m.mel.n_mels, m.hidden, dim, m.encoder_stride, m.res_blocks)
        self.encoder = CausalEncoder(*shape) if m.causal else Encoder(*shape, m.lstm_layers)
        vq = ("kmeans_iters", "kmeans_batches", "dead_code_threshold", "revival_grace_steps", "quantizer_dropout",
              "revival", "gradient")
        self.quantizer = ResidualVectorQuantizer(dim, m.codebook_size, m.num_quantizers, decay=m.ema_decay,
                                                 **{k: m[k] for k in vq})
        self.decoder = CausalDecoder(*shape) if m.causal else Decoder(*shape, m.lstm_layers)
        # log-mel lies in [log(floor), ~0]: a fixed affine maps it to about [-1, 1] for the convs
        self._offset = math.log(m.mel.log_floor) / 2
        self._scale = -math.log(m.mel.log_floor) / 2
        object.__setattr__(self, "_vocoder", None)  # not a submodule: never in the tokenizer's state dict

    def _apply(self, fn: Any, recurse: bool = True) -> "SpeechTokenizer":
        """Every ``.to/.cuda/.cpu/.double/.half/...`` moves the attached vocoder too (it is not a submodule)."""
        super()._apply(fn, recurse)
        if self._vocoder is not None:
            self._vocoder._apply(fn)
        return self

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_config(cls, cfg: Any) -> "SpeechTokenizer":
        """From a composed train/eval config (uses its ``model`` and ``vocoder``) or a model node."""
        if isinstance(cfg, (DictConfig, dict)) and "model" in cfg:
            return cls(cfg["model"], cfg.get("vocoder"))
        return cls(cfg)

    @classmethod
    def from_checkpoint(cls, path: Union[str, Path], map_location: Any = "cpu", vocoder: Any = None) -> "SpeechTokenizer":
        """Rebuild from the config stored in a tokenizer or trainer checkpoint, then load its weights."""
        ckpt = safe_load(path, map_location)
        if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
            raise CheckpointError(f"{path}: not a luna tokenizer checkpoint (needs 'model' and 'config')")
        config = ckpt["config"]
        model_cfg = config.get("model", config) if isinstance(config, dict) else config
        try:
            tok = cls(model_cfg, vocoder if vocoder is not None else config.get("vocoder"))
        except (ConfigError, TypeError, ValueError) as e:
            raise CheckpointError(f"{path}: incompatible config: {e}") from None
        tok._load_state(ckpt["model"], path)
        return tok.to(map_location) if isinstance(map_location, (str, torch.device)) else tok

    def _load_state(self, state: Dict[str, torch.Tensor], path: Any) -> None:
        try:
            self.load_state_dict(state)
        except RuntimeError as e:
            raise CheckpointError(f"{path}: weights do not fit this model: {' '.join(str(e).split())[:300]}") from None

    def save_checkpoint(self, path: Union[str, Path]) -> None:
        """Weights + resolved config + version, atomically; loadable with ``weights_only=True``."""
        atomic_save(
            {
                "model": self.state_dict(),
                "config": {
                    "model": plain(self.config),
                    "vocoder": plain(self.vocoder_config),
                },
                "luna_version": __version__,
            },
            path,
        )

    def save_pretrained(self, directory: Union[str, Path]) -> Path:
        """``model.safetensors`` + ``config.json`` (+ ``vocoder.safetensors`` for a HiFi-GAN vocoder in use).

        Portable and pickle-free: the weights are safetensors, the config is JSON.
        """
        from safetensors.torch import save_file

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        config = {
            "format": "luna-pretrained-1",
            "luna_version": __version__,
            "model": plain(self.config),
            "vocoder": plain(self.vocoder_config),
        }
        generator = getattr(self._vocoder, "generator", None)
        if generator is not None:  # a HiFi-GAN in use travels with the tokenizer
            config["vocoder"].update(kind=self._vocoder.kind, checkpoint=None, generator_config=generator.h)
            save_file({k: v.detach().contiguous().cpu() for k, v in generator.state_dict().items()},
                      str(out / "vocoder.safetensors"))
        save_file({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}, str(out / "model.safetensors"))
        (out / "config.json").write_text(json.dumps(config, indent=2))
        return out

    @classmethod
    def from_pretrained(cls, directory: Union[str, Path], map_location: Any = "cpu") -> "SpeechTokenizer":
        """Inverse of :meth:`save_pretrained`; identical codes, no pickle involved."""
        from safetensors.torch import load_file

        d = Path(directory)
        if not (d / "config.json").is_file() or not (d / "model.safetensors").is_file():
            raise CheckpointError(f"{d}: not a luna pretrained dir (needs config.json and model.safetensors)")
        config = json.loads((d / "config.json").read_text())
        vocoder = dict(config.get("vocoder") or {})
        generator_config = vocoder.pop("generator_config", None)
        tok = cls(config["model"], vocoder)
        tok._load_state(load_file(str(d / "model.safetensors")), d)
        if generator_config is not None and (d / "vocoder.safetensors").is_file():
            from luna.models.hifigan import HiFiGANGenerator
            from luna.models.vocoder import HiFiGANVocoder

            gen = HiFiGANGenerator(generator_config, num_mels=tok.config.mel.n_mels)
            gen.remove_weight_norm()
            gen.load_state_dict(load_file(str(d / "vocoder.safetensors")))
            tok.set_vocoder(HiFiGANVocoder(gen, tok.vocoder_config.mel, kind=vocoder.get("kind", "hifigan")))
        return tok.to(map_location)

    def load_checkpoint(self, path: Union[str, Path]) -> "SpeechTokenizer":
        ckpt = safe_load(path, map_location=self.device)
        if not isinstance(ckpt, dict) or "model" not in ckpt:
            raise CheckpointError(f"{path}: not a luna checkpoint (no 'model' entry)")
        self._load_state(ckpt["model"], path)
        return self

    # ---- properties -----------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def rate(self) -> Rate:
        """The token clock (samples per token, tokens/s, bits/s), derived once from the model config."""
        return self._rate

    @property
    def sample_rate(self) -> int:
        return self.rate.sample_rate

    @property
    def samples_per_token(self) -> int:
        return self.rate.samples_per_token

    @property
    def frame_rate(self) -> float:
        """Tokens per second (per quantizer)."""
        return self.rate.tokens_per_second

    @property
    def num_quantizers(self) -> int:
        return self.rate.num_quantizers

    @property
    def codebook_size(self) -> int:
        return self.rate.codebook_size

    @property
    def bitrate(self) -> float:
        """Bits per second at all quantizers: tokens/s × N × log2(K)."""
        return self.rate.bitrate

    # ---- model ----------------------------------------------------------------------------------
    def encode_mel(self, mel: torch.Tensor) -> torch.Tensor:
        return self.encoder((mel - self._offset) / self._scale)

    def decode_latent(self, z: torch.Tensor, frames: int) -> torch.Tensor:
        """Latent ``[B, D, T']`` → log-mel ``[B, n_mels, frames]`` (cropped or edge-padded to exactly ``frames``)."""
        mel = self.decoder(z) * self._scale + self._offset
        t = mel.shape[-1]
        if t > frames:
            mel = mel[..., :frames]
        elif t < frames:
            mel = F.pad(mel, (0, frames - t), mode="replicate")
        return mel

    def forward(
        self,
        audio: torch.Tensor,
        lengths: Optional[torch.Tensor] = None,
        num_quantizers: Optional[int] = None,
    ) -> TokenizerOutput:
        """Audio ``[B, S]`` at the model rate → mel, reconstruction, codes and commitment (training: quantizer
        dropout and codebook updates happen here). ``lengths`` is accepted for the trainer's call signature; the
        masked objective on the output is :class:`luna.losses.MelLoss`."""
        return self.forward_mel(self.mel(audio), num_quantizers=num_quantizers)

    def forward_mel(self, mel: torch.Tensor, lengths: Optional[torch.Tensor] = None,
                    num_quantizers: Optional[int] = None) -> TokenizerOutput:
        """log-mel ``[B, M, T]`` → :class:`TokenizerOutput` (``mel_hat`` has exactly ``T`` frames)."""
        q = self.quantizer(self.encode_mel(mel), num_quantizers)
        mel_hat = self.decode_latent(q.quantized, mel.shape[-1])
        return TokenizerOutput(mel, mel_hat, q.codes, q.commitment, q.num_quantizers)

    # ---- public API -----------------------------------------------------------------------------
    def prepare_audio(self, audio: Any, sample_rate: int) -> torch.Tensor:
        """Any shape/rate/dtype → mono ``[B, S]`` float at the model rate, zero-padded to whole tokens."""
        if isinstance(audio, np.ndarray):
            audio = torch.from_numpy(np.ascontiguousarray(audio))
        if not torch.is_tensor(audio):
            raise TypeError(f"audio must be a tensor or numpy array, got {type(audio).__name__}")
        x = to_mono(audio.float()).to(self.device)
        x = resample(x, int(sample_rate), self.sample_rate)
        pad = (-x.shape[-1]) % self.samples_per_token
        if pad or x.shape[-1] == 0:
            x = F.pad(x, (0, pad if x.shape[-1] else self.samples_per_token))
        return x

    @torch.no_grad()
    def tokenize(self, audio: Any, sample_rate: int, num_quantizers: Optional[int] = None) -> torch.Tensor:
        """Audio ``[S]``, ``[B, S]`` or ``[B, C, S]`` at any rate → codes ``LongTensor [B, N, T]``.

        T = ceil(S' / samples_per_token) where S' is the length at the model rate (= ceil(seconds × frame_rate)).
        """
        x = self.prepare_audio(audio, sample_rate)
        if self.config.causal:  # blockwise, exactly as a stream computes it (luna/streaming/encoder.py)
            from luna.streaming.encoder import tokenize_blockwise

            return tokenize_blockwise(self, x, num_quantizers)
        return self.quantizer.encode(self.encode_mel(self.mel(x)), num_quantizers)

    @torch.no_grad()
    def decode_mel(self, codes: torch.Tensor) -> torch.Tensor:
        """codes ``[B, n, T]`` → log-mel ``[B, n_mels, T × encoder_stride]``."""
        codes = codes.to(self.device).long()
        return self.decode_latent(self.quantizer.decode(codes), codes.shape[-1] * self.config.encoder_stride)

    @property
    def vocoder(self) -> nn.Module:
        if self._vocoder is None:
            from luna.models.vocoder import build_vocoder

            self.set_vocoder(build_vocoder(self.vocoder_config, model_mel=self.config.mel))
        return self._vocoder

    def set_vocoder(self, vocoder: nn.Module) -> None:
        """Use ``vocoder`` (``.mel`` must match the tokenizer's convention) for ``detokenize``."""
        if getattr(vocoder, "mel", None) is not None:
            check_mel_compatible(self.config.mel, vocoder.mel)
        object.__setattr__(self, "_vocoder", vocoder.to(self.device, self.dtype).eval())  # then follows every move

    @torch.no_grad()
    def vocode(self, mel: torch.Tensor) -> torch.Tensor:
        """log-mel ``[B, n_mels, T]`` → audio ``[B, T × hop]`` with the configured vocoder, aligned with the input
        (a causal model's frames sit :attr:`frame_offset` samples early: the audio is advanced by as much)."""
        audio = self.vocoder(mel.to(self.device))
        k = self.frame_offset
        return F.pad(audio[..., k:], (0, k)) if k else audio

    @property
    def frame_offset(self) -> int:
        """Samples by which a mel frame's window centre precedes the centred convention vocoders are trained on:
        ``(n_fft - hop) / 2`` for a causal model (left padding only), 0 otherwise."""
        mel = self.config.mel
        return (mel.n_fft - mel.hop_length) // 2 if self.config.causal else 0

    @torch.no_grad()
    def detokenize(self, codes: torch.Tensor) -> torch.Tensor:
        """codes ``[B, n, T]`` → audio ``[B, T × samples_per_token]`` at ``sample_rate``."""
        return self.vocode(self.decode_mel(codes))

    # ---- streaming (luna/streaming) -------------------------------------------------------------
    @property
    def latency_ms(self) -> float:
        """Algorithmic latency of tokenizing, in ms: one token of samples for a causal model (no lookahead);
        ``inf`` for a non-causal one (its GroupNorm reads the whole clip)."""
        from luna.streaming import algorithmic_latency_ms

        return algorithmic_latency_ms(self)

    def stream_encoder(self, sample_rate: Optional[int] = None) -> Any:
        """A :class:`luna.streaming.StreamingEncoder`: ``push(pcm) → codes [1, N, t]``, ``flush()``."""
        from luna.streaming import StreamingEncoder

        return StreamingEncoder(self, self.sample_rate if sample_rate is None else sample_rate)

    def stream_decoder(self, vocoder: Any = None, lookahead: Optional[int] = None) -> Any:
        """A :class:`luna.streaming.StreamingDecoder`: ``push(codes) → audio``, ``push_mel``, ``flush()``."""
        from luna.streaming import StreamingDecoder

        return StreamingDecoder(self, vocoder, lookahead)
