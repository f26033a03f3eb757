"""The decoded-audio cache (``data.cache=true``): each file of a split decoded, mixed to mono and resampled
ONCE into one memory-mapped int16 array, so a training crop is a slice (no decoding, no resampling per item).

Files, in :func:`cache_root` (``<data.cache_dir>/audio``, default ``$XDG_CACHE_HOME/luna/audio``, i.e.
``~/.cache/luna/audio``; never inside the data folder, which may be read-only or shared)::

    <name>.json           the index: fingerprint, sample rate, samples file, per-file offsets and scales, failures
    <name>.<build>.npy    the int16 samples of every file, concatenated

``<name>`` is the split, the sample rate and a hash of the data selection (root, subsets, val settings).
The fingerprint hashes the sample rate and every file's path, size and mtime: any change rebuilds. The
index is written last, atomically (temp file + ``os.replace``): it is the commit point, so a killed build
leaves no cache that looks valid. A lock file serialises builders (the ranks of a job, concurrent jobs):
the first builds, the others wait, then reuse it.

Precision: int16 steps of 1/32768 (a file whose resampled peak exceeds full scale gets a coarser step,
never clipping): a 16-bit source at the model's rate is stored exactly, a resampled one to within half a
step (1.5e-5, the 16-bit source's own quantization). Files that fail to decode are kept in the index with
their reason; the dataset skips and lists them exactly as it does without the cache.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from tqdm import tqdm

from luna.audio import AudioError, load, resample
from luna.data.librispeech import DataError
from luna.data.manifest import Entry

try:
    import fcntl
except ImportError:  # not POSIX: no lock (concurrent builders would each build; the last index wins)
    fcntl = None

log = logging.getLogger("luna.data")

CACHE_VERSION = 1
_STEP = 1.0 / 32768  # int16 step of a file within full scale


def cache_root(data_cfg: Any) -> Path:
    """``<data.cache_dir>/audio`` when set, else ``$XDG_CACHE_HOME/luna/audio`` (``~/.cache/luna/audio``)."""
    if data_cfg.cache_dir:
        return Path(os.path.expanduser(str(data_cfg.cache_dir))) / "audio"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "luna" / "audio"


def cache_name(data_cfg: Any, split: str, sample_rate: int) -> str:
    """Stable per split and selection, so a changed file list replaces its cache instead of adding one."""
    selection = json.dumps([str(Path(str(data_cfg.root)).resolve()), data_cfg.kind, list(data_cfg.subsets),
                            list(data_cfg.val_subsets), float(data_cfg.val_fraction), int(data_cfg.max_val_items)])
    return f"{split}-{int(sample_rate)}-{hashlib.sha1(selection.encode()).hexdigest()[:12]}"


class AudioCache:
    """A built cache: ``segment(row, first, count)`` is ``count`` float32 samples from sample ``first``."""

    def __init__(self, index_path: Path, index: Dict[str, Any]):
        self.index_path = Path(index_path)
        self.samples_path = self.index_path.parent / index["samples"]
        self.sample_rate = int(index["sample_rate"])
        self.fingerprint = index["fingerprint"]
        self.paths: List[str] = index["paths"]
        self.offsets = np.asarray(index["offsets"], dtype=np.int64)
        self.scales = np.asarray(index["scales"], dtype=np.float32)
        self.failed: Dict[int, str] = {int(k): v for k, v in index["failed"].items()}
        self.bad = np.zeros(len(self.paths), dtype=bool)
        self.bad[list(self.failed)] = True
        # mapped now, in the process that builds the datasets: forked DataLoader workers inherit the mapping,
        # which stays valid even if another job replaces the file meanwhile
        self._samples: Optional[np.ndarray] = np.load(self.samples_path, mmap_mode="r")

    @property
    def samples(self) -> np.ndarray:
        if self._samples is None:  # unpickled (spawned worker): map it again; pickling never copies the samples
            self._samples = np.load(self.samples_path, mmap_mode="r")
        return self._samples

    def __getstate__(self):
        return {**self.__dict__, "_samples": None}

    def rows(self, paths: Iterable[str]) -> np.ndarray:
        row = {p: i for i, p in enumerate(self.paths)}
        return np.array([row[p] for p in paths], dtype=np.int64)

    def segment(self, row: int, first: int, count: int) -> Tuple[torch.Tensor, int]:
        """(audio ``[count]`` zero-padded past the file's end, valid samples); AudioError for a failed file."""
        if self.bad[row]:
            raise AudioError(self.failed[row])
        a = self.offsets[row] + first
        valid = int(max(0, min(count, self.offsets[row + 1] - a)))
        out = np.empty(count, dtype=np.float32) if valid == count else np.zeros(count, dtype=np.float32)
        np.multiply(self.samples[a : a + valid], self.scales[row], out=out[:valid])
        return torch.from_numpy(out), valid


def fingerprint(paths: Sequence[str], sample_rate: int) -> str:
    h = hashlib.sha1(f"luna_audio_cache {CACHE_VERSION} {int(sample_rate)}\n".encode())
    for p in paths:
        try:
            st = os.stat(p)
            h.update(f"{p}\t{st.st_size}\t{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
        except OSError:
            h.update(f"{p}\tmissing\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def open_cache(entries: Sequence[Entry], sample_rate: int, directory: Path, name: str,
               workers: int = 4) -> AudioCache:
    """The cache of ``entries`` at ``sample_rate``: loaded if its fingerprint matches, else (re)built.

    Builders take a lock on ``<name>.lock`` first, so concurrent callers (every rank of a job calls this
    from ``build_datasets``) build once: the others wait for the lock outside any collective, then load.
    """
    unique = list({e.path: e for e in entries}.values())
    key = fingerprint([e.path for e in unique], sample_rate)
    directory = Path(directory)
    index_path = directory / f"{name}.json"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        lock = open(directory / f"{name}.lock", "a")
    except OSError as e:  # a read-only cache dir: usable if it holds this cache already
        cache = _load(index_path, key)
        if cache is None:
            raise DataError(f"data.cache_dir: cannot write the audio cache in {directory}: {e}") from None
        return cache
    with lock:
        if fcntl is not None:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes (or the process dies)
        cache = _load(index_path, key)
        if cache is None:
            cache = _build(unique, sample_rate, index_path, key, workers)
    return cache


def _load(index_path: Path, key: str) -> Optional[AudioCache]:
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
        if index.get("version") != CACHE_VERSION or index.get("fingerprint") != key:
            return None
        cache = AudioCache(index_path, index)
        if cache.samples.shape != (int(cache.offsets[-1]),):
            return None  # samples file replaced or cut short: rebuild
        return cache
    except (OSError, ValueError, TypeError, KeyError):
        return None  # missing or damaged: rebuild


def _build(entries: List[Entry], sample_rate: int, index_path: Path, key: str, workers: int) -> AudioCache:
    directory, name = index_path.parent, index_path.stem
    lengths = [-(-e.frames * sample_rate // e.sample_rate) for e in entries]  # the resampler's output length
    offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
    total = int(offsets[-1])
    free = shutil.disk_usage(directory).free
    if free < total * 2:
        raise DataError(f"data.cache: the decoded audio needs {total * 2 / 1e9:.1f} GB, {directory} has "
                        f"{free / 1e9:.1f} GB free; set data.cache_dir to a larger disk or data.cache=false")
    for old in directory.glob(f"{name}.*.npy*"):  # under the lock: stale builds and killed builds' temp files
        old.unlink(missing_ok=True)
    samples_name = f"{name}.{secrets.token_hex(4)}.npy"
    tmp = directory / f"{samples_name}.tmp"
    scales = np.full(len(entries), _STEP, dtype=np.float32)
    failed: Dict[int, str] = {}
    try:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.int16, shape=(total,))

        def fill(i: int) -> None:
            try:
                out[offsets[i] : offsets[i + 1]], scales[i] = _decode(entries[i], sample_rate, lengths[i])
            except AudioError as e:
                failed[i] = str(e)

        with ThreadPoolExecutor(max(1, workers)) as pool:  # libsndfile and torch release the GIL
            list(tqdm(pool.map(fill, range(len(entries))), total=len(entries), disable=None, leave=False,
                      desc=f"caching {name}", unit="file"))
        out.flush()
        del out
        os.replace(tmp, directory / samples_name)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    index = {"version": CACHE_VERSION, "fingerprint": key, "sample_rate": int(sample_rate), "samples": samples_name,
             "paths": [e.path for e in entries], "offsets": offsets.tolist(), "scales": scales.tolist(),
             "failed": {str(i): failed[i] for i in sorted(failed)}}
    fd, tmp_index = tempfile.mkstemp(prefix=index_path.name, suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(index, f)
        os.replace(tmp_index, index_path)  # the commit point
    except BaseException:
        Path(tmp_index).unlink(missing_ok=True)
        raise
    log.info("cached %d files (%.2f h at %d Hz, %.2f GB, %d undecodable) in %s", len(entries),
             total / sample_rate / 3600, sample_rate, total * 2 / 1e9, len(failed), directory / samples_name)
    return AudioCache(index_path, index)


def _decode(e: Entry, sample_rate: int, length: int) -> Tuple[np.ndarray, float]:
    """The whole file at ``sample_rate`` as int16 ``[length]`` and its step (see the module docstring)."""
    wav, _ = load(e.path)
    if wav.numel() < e.frames:
        raise AudioError(f"file ends after {wav.numel()} of {e.frames} frames (truncated?)")
    x = resample(wav[: e.frames], e.sample_rate, sample_rate).numpy()[:length]
    peak = float(np.abs(x).max()) if x.size else 0.0
    step = _STEP if peak <= 32767 * _STEP else peak / 32767
    return np.clip(np.rint(x / step), -32768, 32767).astype(np.int16), step


def open_split_caches(data_cfg: Any, train: Sequence[Entry], val: Sequence[Entry],
                      sample_rate: int) -> Tuple[Optional[AudioCache], Optional[AudioCache]]:
    """The train and val caches of a data config (built when missing or stale; None for an empty split)."""
    root = cache_root(data_cfg)
    workers = max(1, min(8, os.cpu_count() or 1))
    return tuple(open_cache(entries, sample_rate, root, cache_name(data_cfg, split, sample_rate), workers)
                 if entries else None for split, entries in (("train", train), ("val", val)))
