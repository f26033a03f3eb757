"""Typed schemas for every config group and entry config, registered in Hydra's ConfigStore.

Each YAML in ``conf/<group>/`` starts from ``base`` (the dataclass below), and each entry config from its
``*_schema``, so an unknown key or a wrong type fails when Hydra composes the config. Cross-field rules that
a type cannot express live in :func:`luna.validation.validate`, which every entry point calls before building
anything. Also here: the one config normaliser (:func:`plain`, :func:`typed`), the mel-convention helpers and
the token clock (:class:`Rate`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from luna.errors import ConfigError  # noqa: F401 - raised here, importable from here

#: the config tree, shipped inside the package (the repository's top-level conf/ and experiments/ link here)
CONF_DIR = Path(__file__).resolve().parent / "conf"



@dataclass
class MelConfig:
    """The whole log-mel convention. Tokenizer and vocoder each carry one; they must agree.

    The defaults are the official HiFi-GAN universal convention (conf/model/rvq8.yaml).
    """

    sample_rate: int = 22050
    n_fft: int = 1024
    win_length: int = 1024
    hop_length: int = 256
    n_mels: int = 80
    f_min: float = 0.0
    f_max: Optional[float] = 8000.0
    mel_scale: str = "slaney"  # slaney | htk (filterbank and its normalization)
    power: float = 1.0  # 1.0 magnitude, 2.0 power
    log: str = "ln"  # ln | log10
    log_floor: float = 1e-5  # log(clamp(x, floor))
    padding: str = "reflect"  # reflect | constant: (n_fft - hop) / 2 each side, center=False


def mel_config(node: Any) -> MelConfig:
    """A MelConfig from a dataclass, DictConfig or dict."""
    if isinstance(node, MelConfig):
        return node
    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=True)
    return MelConfig(**dict(node))


def mel_mismatches(a: Any, b: Any) -> List[Tuple[str, Any, Any]]:
    """Fields where two mel conventions differ, as (field, a value, b value)."""
    a, b = asdict(mel_config(a)), asdict(mel_config(b))
    return [(f.name, a[f.name], b[f.name]) for f in fields(MelConfig) if a[f.name] != b[f.name]]


def check_mel_compatible(tokenizer_mel: Any, vocoder_mel: Any) -> None:
    """Raise one :class:`ConfigError` naming every mel field where tokenizer and vocoder differ."""
    diffs = mel_mismatches(tokenizer_mel, vocoder_mel)
    if diffs:
        listed = "; ".join(f"{name}: tokenizer {a!r} vs vocoder {b!r}" for name, a, b in diffs)
        raise ConfigError(
            f"vocoder.mel: the vocoder's mel convention differs from the tokenizer's (model.mel) in "
            f"{len(diffs)} field(s): {listed}. Use a vocoder trained on the tokenizer's mel "
            f"(vocoder=griffinlim always matches), or a tokenizer preset with the vocoder's convention "
            f"(e.g. model=rvq8 for vocoder=hifigan_universal)."
        )


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
    lstm_layers: int = 0  # a residual LSTM of this many layers at the token rate in encoder and decoder (non-causal)
    encoder_stride: int = 2  # mel frames per token
    codebook_dim: int = 0  # latent size quantized by the RVQ (0: same as hidden)
    codebook_size: int = 1024
    num_quantizers: int = 8
    ema_decay: float = 0.99
    kmeans_iters: int = 10
    kmeans_batches: int = 1  # k-means init on this many training batches (the ones before pass unquantized)
    dead_code_threshold: float = 0.1  # a code is dead below this fraction of uniform usage (EMA)
    revival_grace_steps: int = 200  # a revived code is not judged dead again before this many steps
    revival: str = "random"  # what a dead code is revived from: random | worst (vectors of the batch)
    quantizer_dropout: float = 0.5  # fraction of samples trained with a random 1..N quantizers
    gradient: str = "ste"  # how the encoder's gradient passes the quantizer: ste (identity) | rotation (rotation trick)
    causal: bool = False  # left-padded convs, per-frame norms, left-padded mel framing: streamable (luna/streaming)


#: keys older checkpoints stored in their model config that now live elsewhere (``model.loss`` → ``loss``)
LEGACY_MODEL_KEYS = ("loss",)


@dataclass
class DataConfig:
    name: str = "librispeech_mini"
    kind: str = "librispeech"  # librispeech (LibriSpeech layout, also the bundled corpus) | folder
    root: str = MISSING
    subsets: List[str] = field(default_factory=lambda: ["train-clean-100"])
    val_subsets: List[str] = field(default_factory=list)  # empty: 95/5 hash split of `subsets`
    download: bool = False
    base_url: str = "https://www.openslr.org/resources/12"
    md5: Dict[str, str] = field(default_factory=dict)  # archive name -> md5 sum
    cache_dir: Optional[str] = None  # where manifests go (default: <root>/.luna_manifests); with cache: also <cache_dir>/audio
    cache: bool = False  # decode + resample every file once into a memory map (luna/data/cache.py); crops slice it
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
    # task=vocoder only: where the generator starts, and which mels it learns from
    init: Optional[str] = None  # null: random | universal: the UNIVERSAL_V1 weights installed with luna | PATH: a generator file
    tokenizer_checkpoint: Optional[str] = None  # train on this frozen tokenizer's decoded mels (null: ground-truth mels)
    finetune_from: Optional[str] = None  # removed (split into init and tokenizer_checkpoint); kept so old configs load
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
    alarm_usage: float = 0.05  # warn when a quantizer uses fewer than this fraction of its codes (and it is not rising;
    # never before max(optimizer.warmup_steps, model.revival_grace_steps, 1/(1-model.ema_decay)) steps)
    alarm_perplexity: float = 2.0  # warn when a quantizer's perplexity falls below this
    deterministic: bool = False
    compile: bool = False  # torch.compile the networks (mel, encoder, decoder; the vocoder's generator and
    # discriminators); the quantizer stays eager. Tested on CPU: losses equal eager within 1e-4
    compile_mode: Optional[str] = None  # torch.compile mode: null (default) | reduce-overhead (CUDA graphs) | max-autotune
    progress: bool = True


@dataclass
class CheckpointingConfig:
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
    checkpointing: CheckpointingConfig = field(default_factory=CheckpointingConfig)
    loss: LossConfig = field(default_factory=LossConfig)  # the tokenizer's objective (luna/losses.py)
    task: str = "tokenizer"  # tokenizer | vocoder
    seed: int = 1234
    resume: str = "auto"  # auto | none | PATH
    output_dir: Optional[str] = None  # null: Hydra's run dir
    eval_after: bool = False


@dataclass
class EvalSettings:
    max_files: Optional[int] = None  # null: every file under test_dir
    save_wavs: int = 4  # write original + reconstruction WAVs of the first N files
    quantizer_sweep: bool = False  # also decode with 1..N quantizers (meaningful with quantizer dropout only)
    rtf_repeats: int = 5  # timed repeats per stage after one warm-up; the median is reported
    rtf_max_seconds: float = 10.0  # RTF is measured on the longest clip, cropped to this


@dataclass
class EvalConfig:
    """``python -m luna.eval``: the model comes from ``checkpoint`` and is merged in as ``model`` at run time."""

    checkpoint: str = MISSING  # a tokenizer or trainer checkpoint file (.pt)
    input: Optional[str] = None  # one audio file
    test_dir: Optional[str] = None  # or a directory, searched recursively
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    seed: int = 0
    vocoder: VocoderConfig = field(default_factory=VocoderConfig)
    model: Optional[Dict[str, Any]] = None  # filled from the checkpoint
    eval: EvalSettings = field(default_factory=EvalSettings)


@dataclass
class TokenizeConfig:
    """``python -m luna.tokenize``: a corpus as token shards."""

    checkpoint: str = MISSING  # a tokenizer or trainer checkpoint file (.pt)
    output_dir: str = MISSING  # shards/, manifest.jsonl, failed.jsonl, codec.json
    subsets: Optional[List[str]] = None  # null: data.subsets + data.val_subsets
    shard_size: int = 256  # utterances per shard
    device: str = "auto"  # auto | cpu | cuda
    num_quantizers: Optional[int] = None  # null: all of the checkpoint's
    data: DataConfig = field(default_factory=DataConfig)


@dataclass
class ServeConfig:
    """``python -m luna.serve``: one checkpoint behind a WebSocket (luna/serving)."""

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
    max_connections: int = 64  # more are answered error busy, close 1013 (try again later)
    hello_timeout: float = 10.0  # seconds from connect to the hello (error hello_timeout)
    idle_timeout: Optional[float] = 60.0  # seconds without a frame while nothing is pending (null: off)
    max_buffered_bytes: int = 256 << 20  # decoded audio held by all connections together (error busy)
    job_seconds: float = 1.0  # stream chunks are computed in jobs of at most this much audio (fair turns)
    max_batch: int = 8  # stream jobs (audio out) of this many connections at most run as one batched forward (1: off)
    batch_wait_ms: float = 10.0  # how long a free worker waits for a batch to fill (0: take what is waiting)
    allowed_origins: List[str] = field(default_factory=list)  # browser origins; no Origin header is always allowed
    token: Optional[str] = None  # required from clients when set (header Authorization: Bearer, or the hello)


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
    cs.store(name="eval_schema", node=EvalConfig)
    cs.store(name="tokenize_schema", node=TokenizeConfig)
    cs.store(name="serve_schema", node=ServeConfig)


register_configs()

def slurm_gpus(device: str, gpus: int) -> Optional[int]:
    """GPUs per node to ask SLURM for: none for CPU ranks (sbatch rejects a GPU request on a cluster
    without GPU gres, and it never schedules on a CPU-only node), else one per rank (``auto`` too)."""
    return None if str(device) == "cpu" else int(gpus)


# Registered on import (every entry point imports this module before Hydra composes):
#   ${luna_pkg:}                    the installed package dir (holds the bundled corpus)
#   ${luna_slurm_gpus:device,gpus}  conf/hydra/launcher/slurm.yaml's gpus_per_node
for _name, _fn in {"luna_pkg": lambda: str(Path(__file__).resolve().parent), "luna_slurm_gpus": slurm_gpus}.items():
    if not OmegaConf.has_resolver(_name):
        OmegaConf.register_new_resolver(_name, _fn)


def plain(cfg: Any) -> Dict[str, Any]:
    """The one config normaliser: a DictConfig, dataclass or mapping as a resolved plain dict (what checkpoints,
    trackers and ``codec.json`` store, and what :func:`typed` merges)."""
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)  # type: ignore[return-value]
    if is_dataclass(cfg) and not isinstance(cfg, type):
        return asdict(cfg)
    return dict(cfg)


to_container = plain  # the name the trainer has always used


def typed(schema: type, cfg: Any) -> DictConfig:
    """``cfg`` (any form :func:`plain` takes) merged onto ``schema``'s defaults: unknown keys and wrong types fail."""
    data = plain(cfg)
    if schema is ModelConfig:
        data = {k: v for k, v in data.items() if k not in LEGACY_MODEL_KEYS}
    try:
        return OmegaConf.merge(OmegaConf.structured(schema), data)
    except Exception as e:  # omegaconf's ValidationError / ConfigKeyError: one line naming the key
        message, key = " ".join(str(e).split("\n")[0].split()), getattr(e, "full_key", None)
        raise ConfigError(f"{key}: {message}" if key and key not in message else message) from None
