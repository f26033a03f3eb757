"""Speech data: LibriSpeech download and indexing, cached manifests, fixed-length segments.

Typical use (rank 0 first, then every rank)::

    report = prepare(cfg.data)                                  # download + index, rank 0 only
    train_ds, val_ds, info = build_datasets(cfg.data, sample_rate=24000, seed=cfg.seed)  # data.cache: + decode once
    loader = make_loader(train_ds, batch_size, train=True, seed=cfg.seed, epoch=epoch,
                         rank=rank, world_size=world, num_workers=4, start_batch=resume_batch)
"""
from pathlib import Path

from luna.data.dataset import DataInfo, SegmentDataset, ShardedBatchSampler, build_datasets, make_loader, prepare
from luna.data.librispeech import DataError, ensure_subsets
from luna.data.manifest import SKIPPED_FILE, Entry, ManifestReport, build_manifest, record_skipped, split_of, write_skipped

#: the bundled real-speech corpus (package data, LibriSpeech layout): train-clean-100 readers for training,
#: dev-clean (readers never seen in training) as the held-out test set
BUNDLED = Path(__file__).resolve().parent / "librispeech_mini"

__all__ = [
    "BUNDLED",
    "SKIPPED_FILE",
    "DataError",
    "DataInfo",
    "Entry",
    "ManifestReport",
    "SegmentDataset",
    "ShardedBatchSampler",
    "build_datasets",
    "build_manifest",
    "ensure_subsets",
    "make_loader",
    "prepare",
    "record_skipped",
    "split_of",
    "write_skipped",
]
