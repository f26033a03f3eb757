"""Typed schemas for every config group, registered in Hydra's ConfigStore.

Each YAML in ``conf/<group>/`` starts from ``base`` (the dataclass below), so an unknown key or a wrong
type fails when Hydra composes the config. Cross-field rules that a type cannot express live in
:func:`validate`, which every entry point calls before building anything.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

#: repository root (holds conf/ and experiments/); luna is installed editable from it
ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = ROOT / "conf"


class ConfigError(ValueError):
    """An invalid configuration value; the message starts with the dotted key."""


@dataclass
class MelConfig:
    """The whole log-mel convention. Tokenizer and vocoder each carry one; they must agree."""

    sample_rate: int = 24000
    n_fft: int = 1024
    win_length: int = 1024
    hop_length: int = 240
    n_mels: int = 80
    f_min: float = 0.0
    f_max: Optional[float] = 12000.0
    mel_scale: str = "slaney"  # slaney | htk (filterbank and its normalization)
    power: float = 1.0  # 1.0 magnitude, 2.0 power
    log: str = "ln"  # ln | log10
    log_floor: float = 1e-5  # log(clamp(x, floor))
    padding: str = "reflect"  # reflect | constant: (n_fft - hop) / 2 each side, center=False


@dataclass
class LossConfig:
    mel_l1: float = 1.0
    mel_mse: float = 0.5
    commitment: float = 0.25
    multiscale_mel: float = 0.0  # weight of an extra L1 on 2x and 4x time-pooled mels (0 = off)


@dataclass
class ModelConfig:
    name: str = "rvq8"
    mel: MelConfig = field(default_factory=MelConfig)
    hidden: int = 512  # channels of the conv encoder/decoder
    res_blocks: int = 2  # residual blocks before and after the resampling layer
    encoder_stride: int = 2  # mel frames per token
    codebook_dim: int = 0  # latent size quantized by the RVQ (0: same as hidden)
    codebook_size: int = 1024
    num_quantizers: int = 8
    ema_decay: float = 0.99
    kmeans_iters: int = 10
    dead_code_threshold: float = 0.1  # a code is dead below this fraction of uniform usage (EMA)
    revival_grace_steps: int = 200  # a revived code is not judged dead again before this many steps
    quantizer_dropout: float = 0.5  # fraction of samples trained with a random 1..N quantizers
    loss: LossConfig = field(default_factory=LossConfig)


@dataclass
class DataConfig:
    name: str = "minispeech"
    kind: str = "librispeech"  # librispeech (LibriSpeech layout, also the bundled corpus) | folder
    root: str = MISSING
    subsets: List[str] = field(default_factory=lambda: ["train-mini"])
    val_subsets: List[str] = field(default_factory=list)  # empty: 95/5 hash split of `subsets`
    download: bool = False
    base_url: str = "https://www.openslr.org/resources/12"
    md5: Dict[str, str] = field(default_factory=dict)  # archive name -> md5 sum
    cache_dir: Optional[str] = None  # where manifests go (default: <root>/.luna_manifests)
    segment_seconds: float = 1.0
    crops_per_file: int = 1  # training items per file per epoch (each its own random crop)
    val_fraction: float = 0.05
    num_workers: Optional[int] = None  # null: from hardware
    batch_size: Optional[int] = None  # global batch; null: hardware.batch_size x world size
    max_val_items: int = 64


@dataclass
class OptimizerConfig:
    name: str = "adamw"
    lr: float = 1e-4
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.01
    eps: float = 1e-8
    warmup_steps: int = 500
    min_lr_ratio: float = 0.0  # cosine decays to lr * min_lr_ratio
    scheduler: str = "cosine"  # cosine | constant | exponential
    gamma: float = 0.999  # per-epoch decay for scheduler=exponential


@dataclass
class WandbConfig:
    project: str = "luna"
    entity: Optional[str] = None
    group: Optional[str] = None
    mode: Optional[str] = None  # online | offline | disabled; null: WANDB_MODE, else offline without a key
    tags: List[str] = field(default_factory=list)


@dataclass
class LoggerConfig:
    name: str = "tensorboard"
    backends: List[str] = field(default_factory=lambda: ["tensorboard"])  # tensorboard, wandb
    wandb: WandbConfig = field(default_factory=WandbConfig)
    log_every_steps: int = 10
    audio_samples: int = 2


@dataclass
class HardwareConfig:
    name: str = "auto"
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "fp32"  # fp32 | bf16 | fp16
    batch_size: int = 16  # per device
    num_workers: int = 2
    gpus: int = 1  # processes (ranks) per node; on CPU each is a gloo rank
    nodes: int = 1
    cpus_per_task: int = 2
    mem_gb: int = 16
    threads: Optional[int] = None  # torch intra-op threads per rank (null: torch default)
    lr_scale: float = 1.0  # presets with a large batch scale lr and say so


@dataclass
class VocoderConfig:
    name: str = "griffinlim"
    kind: str = "griffinlim"  # griffinlim | hifigan | hifigan_universal
    mel: MelConfig = field(default_factory=MelConfig)
    checkpoint: Optional[str] = None
    config_path: Optional[str] = None
    architecture: str = "v1"  # HiFi-GAN preset: v1 | v2 | v3 (keys in `generator` override it)
    n_iter: int = 32  # Griffin-Lim iterations
    finetune_from: Optional[str] = None  # task=vocoder: train on this tokenizer checkpoint's reconstructed mels
    discriminator_width: float = 1.0  # task=vocoder: fraction of the official discriminator channel widths
    generator: Dict[str, Any] = field(default_factory=dict)  # HiFi-GAN architecture (V1/V2/V3 presets)


@dataclass
class TrainerConfig:
    max_epochs: int = 100
    max_steps: int = -1  # -1: no limit; the schedule length follows min(epochs, steps)
    max_minutes: float = 0.0  # 0: no wall-clock limit
    grad_clip: float = 1.0
    accumulate: int = 1
    val_every_steps: int = 0  # 0: validate at the end of each epoch only
    max_bad_steps: int = 10  # consecutive non-finite losses before stopping
    alarm_usage: float = 0.05  # warn when a quantizer uses fewer than this fraction of its codes
    alarm_perplexity: float = 2.0  # warn when a quantizer's perplexity falls below this
    deterministic: bool = False
    progress: bool = True


@dataclass
class CheckpointConfig:
    every_epochs: int = 1
    every_steps: int = 0  # 0: only at epoch ends
    keep_last: int = 3


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    hardware: HardwareConfig = field(default_factory=HardwareConfig)
    vocoder: VocoderConfig = field(default_factory=VocoderConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    task: str = "tokenizer"  # tokenizer | vocoder
    seed: int = 1234
    resume: str = "auto"  # auto | none | PATH
    output_dir: Optional[str] = None  # null: Hydra's run dir
    eval_after: bool = False


GROUPS = {
    "model": ModelConfig,
    "data": DataConfig,
    "optimizer": OptimizerConfig,
    "logger": LoggerConfig,
    "hardware": HardwareConfig,
    "vocoder": VocoderConfig,
}


def register_configs() -> None:
    """Store the schemas: ``<group>/base`` for group YAMLs, ``train_schema`` for the root config."""
    cs = ConfigStore.instance()
    for group, node in GROUPS.items():
        cs.store(group=group, name="base", node=node)
    cs.store(name="train_schema", node=TrainConfig)


register_configs()

#: ``${luna_pkg:}`` is the installed package dir (holds the bundled corpus)
if not OmegaConf.has_resolver("luna_pkg"):
    OmegaConf.register_new_resolver("luna_pkg", lambda: str(Path(__file__).resolve().parent))


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


def validate_model(model: Any, prefix: str = "model") -> None:
    validate_mel(model.mel, f"{prefix}.mel")
    if model.codebook_size < 2:
        _fail(f"{prefix}.codebook_size", f"must be >= 2, got {model.codebook_size}")
    if model.codebook_size > 32768:
        _fail(f"{prefix}.codebook_size", f"must be <= 32768 (codes are exported as int16), got {model.codebook_size}")
    if model.num_quantizers < 1:
        _fail(f"{prefix}.num_quantizers", f"must be >= 1, got {model.num_quantizers}")
    if model.hidden < 8 or model.hidden % 8:
        _fail(f"{prefix}.hidden", f"must be a positive multiple of 8 (GroupNorm groups), got {model.hidden}")
    if model.codebook_dim < 0:
        _fail(f"{prefix}.codebook_dim", f"must be >= 0 (0 = hidden), got {model.codebook_dim}")
    if model.encoder_stride < 1:
        _fail(f"{prefix}.encoder_stride", f"must be >= 1, got {model.encoder_stride}")
    if model.res_blocks < 0:
        _fail(f"{prefix}.res_blocks", f"must be >= 0, got {model.res_blocks}")
    if not 0 < model.ema_decay < 1:
        _fail(f"{prefix}.ema_decay", f"must be in (0, 1), got {model.ema_decay}")
    if model.kmeans_iters < 0:
        _fail(f"{prefix}.kmeans_iters", f"must be >= 0, got {model.kmeans_iters}")
    if not 0 <= model.dead_code_threshold < 1:
        _fail(f"{prefix}.dead_code_threshold", f"must be in [0, 1), got {model.dead_code_threshold}")
    if not 0 <= model.quantizer_dropout <= 1:
        _fail(f"{prefix}.quantizer_dropout", f"must be in [0, 1], got {model.quantizer_dropout}")
    for name in ("mel_l1", "mel_mse", "commitment", "multiscale_mel"):
        if getattr(model.loss, name) < 0:
            _fail(f"{prefix}.loss.{name}", f"must be >= 0, got {getattr(model.loss, name)}")


def validate(cfg: DictConfig) -> None:
    """Cross-field checks on a composed train/eval config; raises :class:`ConfigError` naming the key."""
    if "model" in cfg:
        validate_model(cfg.model)
    if "vocoder" in cfg and cfg.vocoder is not None:
        validate_mel(cfg.vocoder.mel, "vocoder.mel")
        if cfg.vocoder.kind not in ("griffinlim", "hifigan", "hifigan_universal"):
            _fail("vocoder.kind", f"must be griffinlim, hifigan or hifigan_universal, got {cfg.vocoder.kind!r}")
        if not 0 < cfg.vocoder.get("discriminator_width", 1.0) <= 1:
            _fail("vocoder.discriminator_width", f"must be in (0, 1], got {cfg.vocoder.discriminator_width}")
        if cfg.get("task") == "vocoder" and cfg.vocoder.kind != "hifigan":
            _fail("vocoder.kind", f"task=vocoder trains a HiFi-GAN: use vocoder=hifigan, got {cfg.vocoder.kind!r}")
    if "data" in cfg:
        d = cfg.data
        if d.kind not in ("librispeech", "folder"):
            _fail("data.kind", f"must be librispeech or folder, got {d.kind!r}")
        if d.segment_seconds <= 0:
            _fail("data.segment_seconds", f"must be > 0, got {d.segment_seconds}")
        if "model" in cfg:
            m = cfg.model
            token_seconds = m.mel.hop_length * m.encoder_stride / m.mel.sample_rate
            if d.segment_seconds <= token_seconds:
                _fail("data.segment_seconds", f"must be longer than one token ({token_seconds:.4f} s), got {d.segment_seconds}")
        if d.crops_per_file < 1:
            _fail("data.crops_per_file", f"must be >= 1, got {d.crops_per_file}")
        if not 0 <= d.val_fraction < 1:
            _fail("data.val_fraction", f"must be in [0, 1), got {d.val_fraction}")
        if d.batch_size is not None and d.batch_size < 1:
            _fail("data.batch_size", f"must be >= 1, got {d.batch_size}")
        if d.num_workers is not None and d.num_workers < 0:
            _fail("data.num_workers", f"must be >= 0, got {d.num_workers}")
    if "optimizer" in cfg:
        o = cfg.optimizer
        if o.lr <= 0:
            _fail("optimizer.lr", f"must be > 0, got {o.lr}")
        if o.weight_decay < 0:
            _fail("optimizer.weight_decay", f"must be >= 0, got {o.weight_decay}")
        if len(o.betas) != 2 or not all(0 <= b < 1 for b in o.betas):
            _fail("optimizer.betas", f"must be two values in [0, 1), got {list(o.betas)}")
        if o.warmup_steps < 0:
            _fail("optimizer.warmup_steps", f"must be >= 0, got {o.warmup_steps}")
        if o.scheduler not in ("cosine", "constant", "exponential"):
            _fail("optimizer.scheduler", f"must be cosine, constant or exponential, got {o.scheduler!r}")
    if "hardware" in cfg:
        h = cfg.hardware
        if h.device not in ("auto", "cpu", "cuda"):
            _fail("hardware.device", f"must be auto, cpu or cuda, got {h.device!r}")
        if h.precision not in ("fp32", "bf16", "fp16"):
            _fail("hardware.precision", f"must be fp32, bf16 or fp16, got {h.precision!r}")
        if h.batch_size < 1:
            _fail("hardware.batch_size", f"must be >= 1, got {h.batch_size}")
        if h.gpus < 1:
            _fail("hardware.gpus", f"must be >= 1, got {h.gpus}")
        if h.nodes < 1:
            _fail("hardware.nodes", f"must be >= 1, got {h.nodes}")
        if h.num_workers < 0:
            _fail("hardware.num_workers", f"must be >= 0, got {h.num_workers}")
    if "logger" in cfg:
        for b in cfg.logger.backends:
            if b not in ("tensorboard", "wandb"):
                _fail("logger.backends", f"unknown backend {b!r} (tensorboard, wandb)")
        mode = cfg.logger.wandb.mode
        if mode is not None and mode not in ("online", "offline", "disabled"):
            _fail("logger.wandb.mode", f"must be online, offline or disabled, got {mode!r}")
    if "trainer" in cfg:
        t = cfg.trainer
        if t.max_epochs < 1:
            _fail("trainer.max_epochs", f"must be >= 1, got {t.max_epochs}")
        if t.max_steps == 0 or t.max_steps < -1:
            _fail("trainer.max_steps", f"must be -1 (no limit) or >= 1, got {t.max_steps}")
        if t.grad_clip < 0:
            _fail("trainer.grad_clip", f"must be >= 0 (0 = off), got {t.grad_clip}")
        if t.accumulate < 1:
            _fail("trainer.accumulate", f"must be >= 1, got {t.accumulate}")
        if t.max_bad_steps < 1:
            _fail("trainer.max_bad_steps", f"must be >= 1, got {t.max_bad_steps}")
    if isinstance(cfg.get("checkpoint"), DictConfig):  # the trainer's group (eval's `checkpoint` is a path)
        c = cfg.checkpoint
        if c.every_epochs < 0:
            _fail("checkpoint.every_epochs", f"must be >= 0, got {c.every_epochs}")
        if c.every_steps < 0:
            _fail("checkpoint.every_steps", f"must be >= 0, got {c.every_steps}")
        if c.keep_last < 1:
            _fail("checkpoint.keep_last", f"must be >= 1, got {c.keep_last}")
    if "task" in cfg and cfg.task not in ("tokenizer", "vocoder"):
        _fail("task", f"must be tokenizer or vocoder, got {cfg.task!r}")
    if "resume" in cfg and cfg.resume not in ("auto", "none") and not Path(str(cfg.resume)).is_file():
        _fail("resume", f"must be auto, none or an existing checkpoint file, got {cfg.resume!r}")


def to_container(cfg: Any) -> Dict[str, Any]:
    """Resolved plain-dict copy of a config (what checkpoints and trackers store)."""
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)  # type: ignore[return-value]
    return dict(cfg)
