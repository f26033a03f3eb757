"""Files luna writes and reads back: atomic writes (checkpoints, JSON) and pickle-free loading (``torch.load(weights_only=True)``)."""
from __future__ import annotations

import json
import math
import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Optional, Union

import numpy as np
import torch

from luna.errors import CheckpointError  # noqa: F401 - raised here, importable from here


_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: Union[str, Path], data: Union[bytes, Callable[[BinaryIO], Any]]) -> None:
    """Write ``data`` (bytes, or a function of the open file) to a temp file in the same dir, fsync, rename,
    fsync the dir: a crash at any point leaves the previous file intact and no partial one visible."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; written files get the usual mode
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_save(obj: Any, path: Union[str, Path]) -> None:
    """``torch.save`` through :func:`atomic_write`."""
    atomic_write(path, lambda f: torch.save(obj, f))


def jsonable(x: Any) -> Any:
    """JSON-safe copy: non-finite floats become None, tensors and numpy scalars Python numbers, tuples lists."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, torch.Tensor):
        x = x.item() if x.numel() == 1 else x.tolist()
    elif isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def write_json(obj: Any, path: Union[str, Path], indent: Optional[int] = 2) -> Path:
    """``obj`` as strict UTF-8 JSON (see :func:`jsonable`) through :func:`atomic_write`; ``indent=None``: one line."""
    text = json.dumps(jsonable(obj), indent=indent, ensure_ascii=False, allow_nan=False)
    atomic_write(path, (text + "\n").encode("utf-8"))
    return Path(path)


def write_jsonl(rows: Iterable[Any], path: Union[str, Path]) -> Path:
    """One JSON object per line (JSON Lines) through :func:`atomic_write`."""
    text = "".join(json.dumps(jsonable(r), ensure_ascii=False, allow_nan=False) + "\n" for r in rows)
    atomic_write(path, text.encode("utf-8"))
    return Path(path)


def safe_load(path: Union[str, Path], map_location: Any = "cpu", legacy: bool = False) -> Any:
    """Load a checkpoint without unpickling arbitrary objects; refuses anything that needs pickle.

    ``legacy=True`` also accepts the pre-1.6 (non-zip) ``torch.save`` format, e.g. the official HiFi-GAN
    files; ``weights_only`` guards that format the same way."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if not legacy and not zipfile.is_zipfile(path):  # torch.save has written zip archives since torch 1.6
        raise CheckpointError(f"{path}: not a checkpoint file (not a torch.save archive)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "unsupported content"
        raise CheckpointError(f"{path}: refused to load (holds objects that need pickle): {first}") from None
    except (RuntimeError, EOFError, ValueError, OSError) as e:
        raise CheckpointError(f"{path}: not a readable checkpoint ({' '.join(str(e).split())[:200]})") from None
