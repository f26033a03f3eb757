"""Every cross-field rule of luna's configs, behind :func:`validate`, which every entry point calls first.

A type cannot say "hop ≤ win ≤ n_fft" or "the global batch divides by ranks × accumulate"; these rules can,
and each failure is one :class:`~luna.errors.ConfigError` whose message starts with the dotted key.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

from omegaconf import DictConfig, OmegaConf

from luna.config import MelConfig, mel_mismatches
from luna.errors import ConfigError
from luna.rate import model_rate


def _fail(key: str, msg: str) -> None:
    raise ConfigError(f"{key}: {msg}")


def validate_mel(mel: Any, prefix: str) -> None:
    if mel.sample_rate <= 0:
        _fail(f"{prefix}.sample_rate", f"must be > 0, got {mel.sample_rate}")
    if not 0 < mel.hop_length <= mel.win_length <= mel.n_fft:
        _fail(
            f"{prefix}.hop_length",
            f"need 0 < hop_length <= win_length <= n_fft, got hop={mel.hop_length} "
            f"win={mel.win_length} n_fft={mel.n_fft}",
        )
    if (mel.n_fft - mel.hop_length) % 2:
        _fail(f"{prefix}.n_fft", f"n_fft - hop_length must be even for symmetric padding, got {mel.n_fft - mel.hop_length}")
    if mel.n_mels < 1:
        _fail(f"{prefix}.n_mels", f"must be >= 1, got {mel.n_mels}")
    nyquist = mel.sample_rate / 2
    f_max = nyquist if mel.f_max is None else mel.f_max
    if not 0 <= mel.f_min < f_max <= nyquist:
        _fail(f"{prefix}.f_max", f"need 0 <= f_min < f_max <= sample_rate/2 ({nyquist}), got f_min={mel.f_min} f_max={f_max}")
    if mel.mel_scale not in ("slaney", "htk"):
        _fail(f"{prefix}.mel_scale", f"must be slaney or htk, got {mel.mel_scale!r}")
    if mel.power not in (1.0, 2.0):
        _fail(f"{prefix}.power", f"must be 1.0 (magnitude) or 2.0 (power), got {mel.power}")
    if mel.log not in ("ln", "log10"):
        _fail(f"{prefix}.log", f"must be ln or log10, got {mel.log!r}")
    if mel.log_floor <= 0:
        _fail(f"{prefix}.log_floor", f"must be > 0, got {mel.log_floor}")
    if mel.padding not in ("reflect", "constant"):
        _fail(f"{prefix}.padding", f"must be reflect or constant, got {mel.padding!r}")


def _check(node: Any, prefix: str, rules: Dict[str, tuple]) -> None:
    """Apply ``{key: rule}`` to ``node``: ``(">=", lo)``, ``("in", choices)``, ``("range", lo, hi, lo_open, hi_open)``
    or ``("file", choices)`` (one of ``choices`` or an existing file).

    Missing keys and null values are skipped (optional groups and optional values)."""
    for key, rule in rules.items():
        value = OmegaConf.select(node, key) if isinstance(node, DictConfig) else getattr(node, key, None)
        if value is None:
            continue
        name = f"{prefix}.{key}" if prefix else key
        kind = rule[0]
        if kind == ">=" and value < rule[1]:
            _fail(name, f"must be >= {rule[1]}, got {value}")
        elif kind == "in" and value not in rule[1]:
            _fail(name, f"must be one of {', '.join(map(str, rule[1]))}, got {value!r}")
        elif kind == "file" and value not in rule[1] and not Path(str(value)).expanduser().is_file():
            _fail(name, f"must be {' or '.join([*rule[1], 'an existing file'])}, got {value!r}")
        elif kind == "range":
            lo, hi, lo_open, hi_open = rule[1:]
            if (value <= lo if lo_open else value < lo) or (value >= hi if hi_open else value > hi):
                _fail(name, f"must be in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}, got {value}")


MODEL_RULES = {
    "codebook_size": ("range", 2, 32768, False, False),  # <= 32768: codes are exported as int16
    "num_quantizers": (">=", 1),
    "codebook_dim": (">=", 0),
    "encoder_stride": (">=", 1),
    "res_blocks": (">=", 0),
    "lstm_layers": (">=", 0),
    "ema_decay": ("range", 0, 1, True, True),
    "kmeans_iters": (">=", 0),
    "kmeans_batches": (">=", 1),
    "dead_code_threshold": ("range", 0, 1, False, True),
    "revival_grace_steps": (">=", 0),
    "revival": ("in", ("worst", "random")),
    "gradient": ("in", ("ste", "rotation")),
    "quantizer_dropout": ("range", 0, 1, False, False),
}

#: ``{dotted key: rule}`` for every entry config (a key an entry config does not have is skipped)
RULES = {
    "data.kind": ("in", ("librispeech", "folder")),
    "data.segment_seconds": ("range", 0, float("inf"), True, True),
    "data.crops_per_file": (">=", 1),
    "data.val_fraction": ("range", 0, 1, False, True),
    "data.batch_size": (">=", 1),
    "data.num_workers": (">=", 0),
    "optimizer.lr": ("range", 0, float("inf"), True, True),
    "optimizer.weight_decay": (">=", 0),
    "optimizer.warmup_steps": (">=", 0),
    "optimizer.scheduler": ("in", ("cosine", "constant", "exponential")),
    "hardware.device": ("in", ("auto", "cpu", "cuda")),
    "hardware.precision": ("in", ("auto", "fp32", "bf16", "fp16")),
    "hardware.batch_size": (">=", 1),
    "hardware.gpus": (">=", 1),
    "hardware.nodes": (">=", 1),
    "hardware.num_workers": (">=", 0),
    "logger.wandb.mode": ("in", ("online", "offline", "disabled")),
    "trainer.max_epochs": (">=", 1),
    "trainer.grad_clip": (">=", 0),
    "trainer.accumulate": (">=", 1),
    "trainer.max_bad_steps": (">=", 1),
    "trainer.compile_mode": ("in", (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")),
    "vocoder.kind": ("in", ("griffinlim", "hifigan", "hifigan_universal")),
    "vocoder.discriminator_width": ("range", 0, 1, True, False),
    "vocoder.init": ("file", ("universal",)),
    "vocoder.tokenizer_checkpoint": ("file", ()),
    "task": ("in", ("tokenizer", "vocoder")),
    "resume": ("file", ("auto", "none")),
    **{f"loss.{k}": (">=", 0) for k in ("mel_l1", "mel_mse", "commitment", "multiscale_mel")},
    **{f"checkpointing.{k}": (">=", lo) for k, lo in (("every_epochs", 0), ("every_steps", 0), ("keep_last", 1))},
    "shard_size": (">=", 1),
    "num_quantizers": (">=", 1),
    # serve
    "port": ("range", 0, 65535, False, False),
    "workers": (">=", 1),
    "max_batch": (">=", 1),
    "batch_wait_ms": (">=", 0),
    "queue_chunks": (">=", 1),
    "max_chunk_bytes": (">=", 1),
    "threads": (">=", 1),
    "max_turn_seconds": ("range", 0, float("inf"), True, True),
}

#: vocoder keys that only task=vocoder reads, and what each is for (a value elsewhere would be ignored silently)
VOCODER_TRAINING_KEYS = {
    "init": "where the trained generator starts",
    "tokenizer_checkpoint": "the tokenizer whose decoded mels the generator learns from",
}

def validate_model(model: Any, prefix: str = "model") -> None:
    validate_mel(model.mel, f"{prefix}.mel")
    _check(model, prefix, MODEL_RULES)
    if model.hidden < 8 or model.hidden % 8:
        _fail(f"{prefix}.hidden", f"must be a positive multiple of 8 (GroupNorm groups), got {model.hidden}")
    if model.causal and model.lstm_layers:
        _fail(f"{prefix}.lstm_layers", f"must be 0 for a causal model (the streaming path has no LSTM state), got {model.lstm_layers}")


def validate(cfg: DictConfig) -> None:
    """Cross-field checks on any composed entry config (train, eval, tokenize, serve); raises :class:`ConfigError`
    naming the key. Every entry point calls it before building anything."""
    has_model = cfg.get("model") is not None  # eval, serve: the model comes from the checkpoint, later
    if has_model:
        validate_model(cfg.model)
    if cfg.get("vocoder") is not None and has_model:  # else its mel is ${model.mel}, known once the checkpoint is
        validate_mel(cfg.vocoder.mel, "vocoder.mel")
    _check(cfg, "", RULES)
    if isinstance(cfg.get("checkpoint"), str):  # eval, tokenize, serve: the checkpoint file
        if not Path(cfg.checkpoint).expanduser().is_file():
            raise ConfigError(f"{cfg.checkpoint}: no such checkpoint file")  # the file is the culprit, as in safe_load
    if cfg.get("device") is not None:  # eval, tokenize, serve run here (hardware.device is checked where the rank
        from luna.devices import resolve_device  # starts: a GPU sweep may be composed on a CPU login node)

        resolve_device(cfg.device, "device")
    if "data" in cfg and has_model:
        m = cfg.model
        rate = model_rate(m)
        token_seconds = rate.samples_per_token / rate.sample_rate
        if cfg.data.segment_seconds <= token_seconds:
            _fail("data.segment_seconds", f"must be longer than one token ({token_seconds:.4f} s), got {cfg.data.segment_seconds}")
    if "optimizer" in cfg and (len(cfg.optimizer.betas) != 2 or not all(0 <= b < 1 for b in cfg.optimizer.betas)):
        _fail("optimizer.betas", f"must be two values in [0, 1), got {list(cfg.optimizer.betas)}")
    if "logger" in cfg:
        for b in cfg.logger.backends:
            if b not in ("tensorboard", "wandb"):
                _fail("logger.backends", f"unknown backend {b!r} (tensorboard, wandb)")
    if "sample_rates" in cfg and (not cfg.sample_rates or any(int(r) <= 0 for r in cfg.sample_rates)):
        _fail("sample_rates", f"must be a non-empty list of positive rates, got {list(cfg.sample_rates)}")
    if "trainer" in cfg and (cfg.trainer.max_steps == 0 or cfg.trainer.max_steps < -1):
        _fail("trainer.max_steps", f"must be -1 (no limit) or >= 1, got {cfg.trainer.max_steps}")
    if cfg.get("vocoder") is not None:
        validate_vocoder_training(cfg.vocoder, cfg.get("task"))


def validate_vocoder_training(v: Any, task: Optional[str]) -> None:
    """The keys of ``task=vocoder`` (experiment=vocoder, experiment=vocoder_finetune) and their combinations."""
    if v.get("finetune_from") is not None:
        _fail("vocoder.finetune_from", "was renamed: the tokenizer checkpoint whose decoded mels the generator learns "
              "from is vocoder.tokenizer_checkpoint, and where the generator starts is vocoder.init (null | universal | PATH)")
    if v.get("name") == "hifigan_finetune" and v.get("tokenizer_checkpoint") is None:  # the preset's vocoder node
        _fail("vocoder.tokenizer_checkpoint", "experiment=vocoder_finetune trains on a tokenizer's decoded mels: set "
              "vocoder.tokenizer_checkpoint=<tokenizer run>/checkpoints/best.pt")
    if task != "vocoder":
        for key, what in VOCODER_TRAINING_KEYS.items():
            if v.get(key) is not None:
                _fail(f"vocoder.{key}", f"{what}: only task=vocoder reads it (experiment=vocoder or vocoder_finetune), "
                      f"got {v.get(key)!r} with task={task}")
        return
    if v.kind != "hifigan":
        _fail("vocoder.kind", f"task=vocoder trains a HiFi-GAN: use vocoder=hifigan, got {v.kind!r}")
    if v.get("checkpoint") is not None:
        _fail("vocoder.checkpoint", f"is the trained generator that eval and detokenize load; task=vocoder trains one: "
              f"start it from weights with vocoder.init=PATH (or universal), got {v.checkpoint!r}")
    if v.get("init") == "universal":
        if v.architecture != "v1":
            _fail("vocoder.architecture", f"vocoder.init=universal is the official V1 generator: use v1, got {v.architecture!r}")
        if v.get("generator"):
            _fail("vocoder.generator", f"vocoder.init=universal loads the V1 preset as it is: remove the overrides "
                  f"{dict(v.generator)}")
        diffs = [f"{f} {a!r} (universal: {b!r})" for f, a, b in mel_mismatches(v.mel, MelConfig())]  # defaults = universal
        if diffs:
            _fail("vocoder.mel", "vocoder.init=universal needs the universal HiFi-GAN mel convention (vocoder.mel "
                  "follows model.mel: use model=rvq8 or a preset on its convention); differs in " + "; ".join(diffs))
