"""Data pipeline throughput: audio seconds delivered per CPU second (per core) and per wall second.

Setting: the bundled corpus's train split (``luna/data/librispeech_mini/train-clean-100``, real 16 kHz
FLAC), 1 s segments resampled to the default model's rate (``model=rvq8``: 22.05 kHz), batch 16, random
crops, loop over the loader only (no model). The split is repeated so one epoch is long enough that
worker start-up (reported as ``first_batch_s``) does not dominate. Each worker runs one torch thread (the
DataLoader default); with ``num_workers=0`` the main process is limited to one thread too. A third row
reads the same crops at the files' own 16 kHz (no resampling), so the resampler's share is visible. A fourth
row reads the same crops from the decoded-audio cache (``data.cache=true``: one memory-mapped int16 array,
built once before the timing, in a temporary directory), with ``vs_decode``: its per-core figure over the
first row's, measured in the same run.
Targets: >= 2000x realtime per core decoding; >= 20,000x from the cache.

    python -m benchmarks.data_pipeline [--quick]
"""
from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from typing import Dict, List

import torch
from omegaconf import OmegaConf

from luna.config import DataConfig
from luna.data import BUNDLED, SegmentDataset, make_loader, prepare, split_of
from luna.data.cache import open_cache

SAMPLE_RATE = 22050  # model=rvq8 (the default tokenizer), the universal HiFi-GAN mel convention
FILE_RATE = 16000  # the bundled corpus
SEGMENT_SECONDS = 1.0
BATCH = 16


def _dataset(min_items: int, sample_rate: int = SAMPLE_RATE, cache_dir: str = None) -> SegmentDataset:
    cfg = OmegaConf.structured(DataConfig(root=str(BUNDLED), kind="librispeech", subsets=["train-clean-100"]))
    train = [e for e in prepare(cfg).entries if split_of(e.id, cfg.val_fraction) == "train"]
    repeats = -(-min_items // len(train))
    cache = open_cache(train, sample_rate, cache_dir, "bench", workers=1) if cache_dir else None
    return SegmentDataset(train * repeats, sample_rate, SEGMENT_SECONDS, train=True, seed=0, cache=cache)


def _khz(rate: int) -> str:
    return f"{rate / 1000:g} kHz"


def _cpu_seconds() -> float:
    """CPU time of this process plus its finished children (the DataLoader workers, joined per epoch)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def _measure(ds: SegmentDataset, workers: int, epochs: int) -> Dict[str, float]:
    """Audio seconds delivered per wall second and per CPU second over whole epochs (start-up included)."""
    items, wall, cpu, first = 0, 0.0, 0.0, []
    for epoch in range(epochs):
        c0, t0 = _cpu_seconds(), time.perf_counter()
        it = iter(make_loader(ds, BATCH, train=True, seed=0, epoch=epoch, num_workers=workers))
        for i, batch in enumerate(it):
            if i == 0:
                first.append(time.perf_counter() - t0)
            items += batch["audio"].shape[0]
        del it  # workers are joined when the epoch ends; their CPU time is now counted
        wall += time.perf_counter() - t0
        cpu += _cpu_seconds() - c0
    seconds = items * SEGMENT_SECONDS
    return {"wall_x_realtime": seconds / wall, "cpu_x_realtime": seconds / cpu, "first_batch_s": min(first)}


def run(quick: bool = False) -> List[dict]:
    """Rows for ``num_workers`` 0 and N, no resampling, and the cache. ``luna`` is per core: audio seconds per CPU second of every process
    involved (main + workers), which a busy shared machine does not distort; ``wall_x_realtime_per_worker``
    is the wall-clock figure divided by the number of loading processes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        items = BATCH * (24 if quick else 150)
        ds = _dataset(min_items=items)
        n_workers = max(2, min(4, os.cpu_count() or 1))
        if not quick:
            _measure(ds, 0, 1)  # warm the page cache and the resampling kernels
        rows = []
        with tempfile.TemporaryDirectory(prefix="luna_bench_cache") as cache_dir:
            t0 = time.perf_counter()
            cached = _dataset(items, SAMPLE_RATE, cache_dir)
            build_s = time.perf_counter() - t0
            if not quick:
                _measure(cached, 0, 1)  # fault the memory map in, as a second epoch would
            for rate, workers, cache in ((SAMPLE_RATE, 0, False), (SAMPLE_RATE, n_workers, False),
                                         (FILE_RATE, 0, False), (SAMPLE_RATE, 0, True)):
                data = cached if cache else ds if rate == SAMPLE_RATE else _dataset(items, rate)
                m = _measure(data, workers, 1 if quick else 2)
                source = "no resampling" if rate == FILE_RATE else f"from {_khz(FILE_RATE)}"
                what = (f"1 s train segments @ {_khz(rate)} ({source}) of 16 kHz FLAC, batch {BATCH}, "
                        f"num_workers={workers}")
                rows.append({
                    "what": f"{what}, from the data.cache memory map" if cache else what,
                    "luna": round(m["cpu_x_realtime"], 1),
                    "unit": "x realtime",
                    "threads": 1,
                    "workers": workers,
                    "wall_x_realtime_per_worker": round(m["wall_x_realtime"] / max(1, workers), 1),
                    "wall_x_realtime_total": round(m["wall_x_realtime"], 1),
                    "first_batch_s": round(m["first_batch_s"], 3),
                    "items_per_epoch": len(data),
                    "cpu_count": os.cpu_count(),
                })
            rows[-1]["vs_decode"] = round(rows[-1]["luna"] / rows[0]["luna"], 1)
            rows[-1]["cache_build_s"] = round(build_s, 2)
        return rows
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter run (smoke test)")
    for row in run(quick=parser.parse_args().quick):
        print(row)
