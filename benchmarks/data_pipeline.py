"""Data pipeline throughput: audio seconds delivered per wall-clock second, per worker process.

Setting: the bundled corpus's train split (16 kHz FLAC), 1 s segments resampled to 24 kHz, batch 16,
random crops, loop over the loader only (no model). The split is repeated so one epoch is long enough
that worker start-up (measured separately) does not dominate. Each worker runs one torch thread (the
DataLoader default); with ``num_workers=0`` the main process is limited to one thread too, so every
figure is per core. Target: >= 2000x realtime per core.

    python -m benchmarks.data_pipeline [--quick]
"""
from __future__ import annotations

import argparse
import os
import time
from typing import Dict, List

import torch
from omegaconf import OmegaConf

from luna.config import DataConfig
from luna.data import SegmentDataset, make_loader, prepare, split_of

SAMPLE_RATE = 24000
SEGMENT_SECONDS = 1.0
BATCH = 16


def _dataset(min_items: int) -> SegmentDataset:
    root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "luna", "data", "minispeech")
    cfg = OmegaConf.structured(DataConfig(root=root, subsets=["train-mini"]))
    train = [e for e in prepare(cfg).entries if split_of(e.id, cfg.val_fraction) == "train"]
    repeats = -(-min_items // len(train))
    return SegmentDataset(train * repeats, SAMPLE_RATE, SEGMENT_SECONDS, train=True, seed=0)


def _measure(ds: SegmentDataset, workers: int, epochs: int) -> Dict[str, float]:
    """Seconds to first batch, then audio seconds per second over the rest of each epoch."""
    items, busy, first = 0, 0.0, []
    for epoch in range(epochs):
        start = time.perf_counter()
        it = iter(make_loader(ds, BATCH, train=True, seed=0, epoch=epoch, num_workers=workers))
        next(it)
        t0 = time.perf_counter()
        first.append(t0 - start)
        for batch in it:
            items += batch["audio"].shape[0]
        busy += time.perf_counter() - t0
    seconds = items * SEGMENT_SECONDS
    return {"x_realtime": seconds / busy, "first_batch_s": min(first)}


def run(quick: bool = False) -> List[dict]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ds = _dataset(min_items=BATCH * (24 if quick else 150))
        n_workers = max(2, min(4, os.cpu_count() or 1))
        _measure(ds, 0, 1) if not quick else None  # warm caches (page cache, resampler kernels)
        rows = []
        for workers in (0, n_workers):
            m = _measure(ds, workers, 1 if quick else 2)
            per_core = m["x_realtime"] / max(1, workers)
            rows.append({
                "what": f"1 s train segments @ {SAMPLE_RATE // 1000} kHz from 16 kHz FLAC, batch {BATCH}, "
                        f"num_workers={workers}",
                "luna": round(per_core, 1),
                "unit": "x realtime",
                "threads": 1,
                "workers": workers,
                "total_x_realtime": round(m["x_realtime"], 1),
                "first_batch_s": round(m["first_batch_s"], 3),
                "items": len(ds),
                "cpu_count": os.cpu_count(),
            })
        return rows
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter run (smoke test)")
    for row in run(quick=parser.parse_args().quick):
        print(row)
