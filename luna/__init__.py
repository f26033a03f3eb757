"""luna: train speech tokenizers (mel-RVQ neural codecs) with Hydra, plain PyTorch DDP and SLURM sweeps."""
from luna.version import __version__  # noqa: F401


def __getattr__(name):  # lazy, so `import luna` stays light and free of cycles
    if name == "SpeechTokenizer":
        from luna.models.tokenizer import SpeechTokenizer

        return SpeechTokenizer
    raise AttributeError(f"module 'luna' has no attribute {name!r}")
