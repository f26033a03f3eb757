"""Fixed-length training segments, the deterministic sharded loader, and the config-level entry points.

Every random choice is a pure function of ``(seed, epoch, index)``: the crop of an item does not depend
on the worker that loads it, on the order items are read, or on whether the run was resumed. The
sampler's order is a pure function of ``(seed, epoch)``, so a resumed run skips the batches it already
trained on (``start_batch``) without reading them and sees exactly the rest of the epoch.
"""
from __future__ import annotations

import functools
import hashlib
import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torchaudio
from torch.utils.data import DataLoader, Dataset, Sampler

from luna.audio import AudioError, load, resample
from luna.data.cache import AudioCache, open_split_caches
from luna.data.librispeech import DataError, ensure_subsets
from luna.data.manifest import Entry, ManifestReport, build_manifest, record_skipped, split_key

log = logging.getLogger("luna.data")

_reported: set = set()  # paths already logged as unreadable by this process


class SegmentDataset(Dataset):
    """``segment_seconds`` of mono audio at ``sample_rate`` per entry.

    ``train=True``: a random crop, a pure function of ``(seed, epoch, index)``; call :meth:`set_epoch`
    (``make_loader`` does). ``train=False``: the centre crop, the same every epoch. The crop is chosen
    and read in the file's own rate (only that range is decoded, plus the resampling filter's context
    so the edges equal a crop of the fully resampled file), then resampled.

    Clips shorter than a segment are zero-padded, never dropped: ``length`` gives the valid samples so
    the loss can mask the padding. A file that fails to decode is logged once (and added to the TSV at
    ``skipped_log``, when set) and the item falls back deterministically to the next index, so every rank
    still gets full batches; ``failed`` counts the files skipped for the item.

    ``cache`` (``data.cache=true``, luna/data/cache.py): the same crops sliced from the decoded, resampled
    files in a memory map instead of decoded per item (equal to int16 precision); failures are handled alike.

    Item: ``audio`` float32 ``[segment_samples]``, ``length`` int64 ``[]``, ``failed`` int64 ``[]``.
    """

    def __init__(self, entries: Sequence[Entry], sample_rate: int, segment_seconds: float, train: bool,
                 seed: int = 0, crops_per_file: int = 1, skipped_log: Optional[str] = None,
                 cache: Optional[AudioCache] = None):
        if segment_seconds <= 0:
            raise ValueError(f"segment_seconds must be > 0, got {segment_seconds}")
        # numpy arrays, not a list of objects: forked workers would touch (and so copy) every refcount
        self._paths = np.array([e.path.encode("utf-8", "surrogateescape") for e in entries], dtype=np.bytes_)
        self._frames = np.array([e.frames for e in entries], dtype=np.int64)
        self._rates = np.array([e.sample_rate for e in entries], dtype=np.int64)
        self.sample_rate = int(sample_rate)
        self.segment_seconds = float(segment_seconds)
        self.segment_samples = round(segment_seconds * sample_rate)
        self.train = bool(train)
        self.seed = int(seed)
        self.epoch = 0
        self.skipped_log = str(skipped_log) if skipped_log else None  # e.g. <run_dir>/skipped_files.tsv
        # items = files × crops_per_file: item i crops file i % files, each item its own random crop,
        # so a corpus of a few minutes still makes epochs long enough to be worth a validation
        self.crops_per_file = int(crops_per_file) if train else 1
        if self.crops_per_file < 1:
            raise ValueError(f"crops_per_file must be >= 1, got {crops_per_file}")
        if cache is not None and cache.sample_rate != self.sample_rate:
            raise ValueError(f"the cache holds {cache.sample_rate} Hz audio, the dataset needs {self.sample_rate} Hz")
        self.cache = cache
        self._rows = cache.rows(e.path for e in entries) if cache is not None else None  # entry -> cache row

    @property
    def num_files(self) -> int:
        return len(self._frames)

    def __len__(self) -> int:
        return self.num_files * self.crops_per_file

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def path(self, index: int) -> str:
        return self._paths[index].decode("utf-8", "surrogateescape")

    def seconds(self) -> float:
        """Total duration of the files (not of the segments)."""
        return float((self._frames / self._rates).sum()) if len(self) else 0.0

    def crop_start(self, index: int, file: int = None) -> int:
        """First frame (in the file's own rate) of item ``index``'s crop of ``file`` (default: its own) this epoch."""
        file = index % self.num_files if file is None else file
        frames, sr = int(self._frames[file]), int(self._rates[file])
        unit, _, _ = _grid(sr, self.sample_rate)
        units = max(0, frames - _source_len(self.segment_samples, sr, self.sample_rate)) // unit
        if self.train:
            key = hashlib.blake2b(f"{self.seed},{self.epoch},{index}".encode(), digest_size=8).digest()
            return int.from_bytes(key, "big") % (units + 1) * unit
        return units // 2 * unit

    def __getitem__(self, index: int) -> Dict[str, torch.Tensor]:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} items")
        index %= n
        files = self.num_files
        for failed in range(files):
            i = (index + failed) % files
            try:
                audio, length = self._segment(i, (index + failed) % n)  # the crop item index + failed would get
            except AudioError as e:
                path = self.path(i)
                if path not in _reported:
                    _reported.add(path)
                    log.warning("skipping unreadable audio %s: %s", path, e)
                    if self.skipped_log:
                        record_skipped(self.skipped_log, path, str(e))
                continue
            return {"audio": audio, "length": torch.tensor(length), "failed": torch.tensor(failed)}
        raise DataError(f"none of the {files} audio files of this dataset can be decoded (see the warnings above)")

    def _segment(self, i: int, index: int) -> Tuple[torch.Tensor, int]:
        frames, sr, seg = int(self._frames[i]), int(self._rates[i]), self.segment_samples
        start = self.crop_start(index, i)
        if self.cache is not None:  # start is on the grid: an exact sample of the resampled file
            return self.cache.segment(int(self._rows[i]), start * self.sample_rate // sr, seg)
        unit, out_unit, context = _grid(sr, self.sample_rate)
        left = min(context, start)
        first = start - left
        want = min(left + _source_len(seg, sr, self.sample_rate) + context + unit, frames - first)
        wav, _ = load(self.path(i), None, first, want)
        if wav.numel() < want:
            raise AudioError(f"file ends after {first + wav.numel()} of {frames} frames (truncated?)")
        if sr != self.sample_rate:
            wav = resample(wav, sr, self.sample_rate)
        offset = left // unit * out_unit
        valid = min(seg, -(-(frames - start) * self.sample_rate // sr))
        if wav.numel() - offset >= seg:
            return wav[offset : offset + seg].contiguous(), valid
        out = torch.zeros(seg, dtype=torch.float32)
        out[:valid] = wav[offset : offset + valid]
        return out, valid


def _source_len(segment_samples: int, sr: int, target_sr: int) -> int:
    """Frames at ``sr`` that cover ``segment_samples`` at ``target_sr``."""
    return -(-segment_samples * sr // target_sr)


@functools.lru_cache(maxsize=64)
def _grid(sr: int, target_sr: int) -> Tuple[int, int, int]:
    """(source unit, target unit, context): crops start on multiples of ``sr/gcd`` frames, which land
    exactly on target samples; context is the resampling filter's half-width rounded up to whole units."""
    if sr == target_sr:
        return 1, 1, 0
    g = math.gcd(sr, target_sr)
    unit = sr // g
    width = torchaudio.transforms.Resample(sr, target_sr).width  # in source frames
    return unit, target_sr // g, -(-width // unit) * unit


class ShardedBatchSampler(Sampler[List[int]]):
    """Batches of one rank for one epoch, like ``DistributedSampler`` + ``BatchSampler``, but resumable.

    Order: a permutation seeded by ``(seed, epoch)`` when ``train`` (numpy SeedSequence, identical on
    every machine), else ``0..n-1``. Train drops the tail so every rank gets the same number of full
    batches; val pads by wrapping around (as DistributedSampler does) and keeps a short last batch.
    """

    def __init__(self, n: int, batch_size: int, *, train: bool, seed: int, epoch: int, rank: int = 0,
                 world_size: int = 1, start_batch: int = 0):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        if train:
            order = np.random.default_rng([seed & 0xFFFFFFFFFFFFFFFF, epoch]).permutation(n)
            per_rank = n // world_size
            order = order[: per_rank * world_size]
        else:
            per_rank = -(-n // world_size)
            order = np.resize(np.arange(n), per_rank * world_size) if n else np.arange(0)
        mine = order[rank::world_size].tolist()
        stop = len(mine) - len(mine) % batch_size if train else len(mine)
        self.batches = [mine[i : i + batch_size] for i in range(0, stop, batch_size)]
        if not 0 <= start_batch <= len(self.batches):
            raise ValueError(f"start_batch must be in [0, {len(self.batches)}], got {start_batch}")
        self.batches_per_epoch = len(self.batches)
        self.start_batch = start_batch

    def __iter__(self) -> Iterator[List[int]]:
        return iter(self.batches[self.start_batch :])

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start_batch


def make_loader(
    dataset: SegmentDataset,
    batch_size: int,
    *,
    train: bool,
    seed: int,
    epoch: int,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
    start_batch: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """A one-epoch loader of this rank's batches (``batch_size`` per rank), starting at ``start_batch``.

    Sets the dataset's epoch first, so workers (started per epoch, never persistent) copy it. The full
    epoch's batch count is ``loader.batch_sampler.batches_per_epoch``; ``len(loader)`` is what remains.
    Iterating it leaves the global RNGs untouched (worker seeds come from ``(seed, epoch)``).
    """
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)
    sampler = ShardedBatchSampler(len(dataset), batch_size, train=train, seed=seed, epoch=epoch, rank=rank,
                                  world_size=world_size, start_batch=start_batch)
    if train and sampler.batches_per_epoch == 0:
        raise DataError(
            f"the train split has {len(dataset)} files, fewer than one batch of {batch_size} per rank on "
            f"{world_size} rank(s); lower the batch size or add data"
        )
    # its own generator: iterating a DataLoader otherwise draws worker seeds from the global torch RNG,
    # so a resumed run (RNG restored mid-epoch) would diverge from the uninterrupted one
    generator = torch.Generator()
    generator.manual_seed(int(np.random.SeedSequence([seed & 0xFFFFFFFFFFFFFFFF, epoch]).generate_state(1, np.uint64)[0]))
    return DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, pin_memory=pin_memory,
                      persistent_workers=False, generator=generator)


def prepare(data_cfg: Any, sample_rate: Optional[int] = None) -> ManifestReport:
    """Download what is missing, then build or load the manifests of ``subsets`` and ``val_subsets``; with
    ``data.cache`` and a ``sample_rate``, also build (or check) both splits' decoded-audio caches.

    Run it on rank 0 (or once per node) before the other ranks call :func:`build_datasets`, so only one
    process downloads and indexes. The caches need no ``sample_rate`` here: :func:`build_datasets` builds
    them under a file lock (one rank decodes, the others wait outside any collective, then load).
    """
    root = ensure_subsets(data_cfg)
    subsets = list(dict.fromkeys([*data_cfg.subsets, *data_cfg.val_subsets]))
    report = build_manifest(root, data_cfg.kind, subsets, data_cfg.cache_dir)
    if sample_rate and data_cfg.get("cache", False):
        train, val, _ = split_entries(data_cfg, report)
        open_split_caches(data_cfg, train, val, sample_rate)
    return report


@dataclass(frozen=True)
class DataInfo:
    """What the datasets hold, for the log and the trackers."""

    root: str
    val_source: str  # "hash split (5%)" or the val subsets
    train_files: int
    val_files: int
    train_hours: float
    val_hours: float
    failed: int  # files the manifest skipped
    failed_files: List[Tuple[str, str]] = field(default_factory=list)
    manifests: List[str] = field(default_factory=list)

    def as_dict(self) -> Dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:  # one log line; the failed paths are in failed_files and the manifest report
        return (f"{self.train_files} train files ({self.train_hours:.2f} h), {self.val_files} val files "
                f"({self.val_hours:.2f} h, {self.val_source}), {self.failed} unreadable skipped, root {self.root}")


def split_entries(data_cfg: Any, report: ManifestReport) -> Tuple[List[Entry], List[Entry], str]:
    """(train, val, where val comes from): the split :func:`build_datasets` documents."""
    val_subsets = list(data_cfg.val_subsets)
    fraction = float(data_cfg.val_fraction)
    if val_subsets:
        val_prefixes = tuple(f"{v}/" for v in val_subsets)
        val = [e for e in report.entries if e.subset in val_subsets]
        train = [e for e in report.entries if e.subset not in val_subsets and not e.id.startswith(val_prefixes)]
        val_source = f"val_subsets {val_subsets}"
    else:
        keys = {e.id: split_key(e.id) for e in report.entries}
        train = [e for e in report.entries if keys[e.id] >= fraction]
        val = [e for e in report.entries if keys[e.id] < fraction]
        if not val and fraction > 0 and len(train) > 1:
            first = min(train, key=lambda e: keys[e.id])
            train.remove(first)
            val = [first]
        val_source = f"hash split ({fraction:.0%})"
    if not train:
        raise DataError(f"no training files under {report.root} (subsets {list(data_cfg.subsets)})")
    if data_cfg.max_val_items > 0 and len(val) > data_cfg.max_val_items:
        val = sorted(sorted(val, key=lambda e: split_key(e.id))[: data_cfg.max_val_items], key=lambda e: e.id)
    return train, val, val_source


def build_datasets(data_cfg: Any, sample_rate: int, seed: int, report: Optional[ManifestReport] = None,
                   skipped_log: Optional[str] = None) -> Tuple[SegmentDataset, SegmentDataset, DataInfo]:
    """(train, val, info) from a data config; val at most ``data.max_val_items`` files (``<= 0``: all).

    ``report``: what :func:`prepare` returned, if this process called it already (else it is called here).
    ``skipped_log``: the TSV both datasets add files to that fail only when decoded (see SegmentDataset).

    Val is ``data.val_subsets`` when set, else the ``val_fraction`` hash split of ``data.subsets``
    (:func:`~luna.data.manifest.split_of`). If a tiny corpus gets no val file by hash, the file with
    the smallest hash key goes to val. The cap keeps the files with the smallest hash keys, so it is
    the same on every machine and mostly unchanged when files are added.
    """
    report = report if report is not None else prepare(data_cfg)
    train, val, val_source = split_entries(data_cfg, report)
    train_cache, val_cache = open_split_caches(data_cfg, train, val, sample_rate) if data_cfg.get("cache", False) \
        else (None, None)
    segment = float(data_cfg.segment_seconds)
    train_ds = SegmentDataset(train, sample_rate, segment, train=True, seed=seed,
                              crops_per_file=int(data_cfg.crops_per_file), skipped_log=skipped_log, cache=train_cache)
    val_ds = SegmentDataset(val, sample_rate, segment, train=False, seed=seed, skipped_log=skipped_log,
                            cache=val_cache)
    info = DataInfo(
        root=str(report.root),
        val_source=val_source,
        train_files=len(train),
        val_files=len(val),
        train_hours=train_ds.seconds() / 3600,
        val_hours=val_ds.seconds() / 3600,
        failed=len(report.failed),
        failed_files=list(report.failed),
        manifests=[str(p) for p in report.cache_paths],
    )
    log.info("data: %s", info)
    return train_ds, val_ds, info
