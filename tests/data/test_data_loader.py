"""make_loader: deterministic order, DDP sharding, exact mid-epoch resume without reading skipped items."""
from __future__ import annotations

import pytest
import torch
from torch.utils.data import Dataset

from luna.data import DataError, SegmentDataset, build_manifest, make_loader

from .helpers import tone, write


class Indices(Dataset):
    """Returns its index; counts reads and remembers the epoch it was given."""

    def __init__(self, n: int):
        self.n, self.reads, self.epoch = n, [], None

    def __len__(self):
        return self.n

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __getitem__(self, i):
        self.reads.append(i)
        return {"index": torch.tensor(i)}


def _batches(loader):
    return [b["index"].tolist() for b in loader]


def test_train_order_is_a_pure_function_of_seed_and_epoch():
    ds = Indices(50)
    a = _batches(make_loader(ds, 8, train=True, seed=1, epoch=3))
    assert ds.epoch == 3
    assert a == _batches(make_loader(Indices(50), 8, train=True, seed=1, epoch=3))
    assert a != _batches(make_loader(ds, 8, train=True, seed=1, epoch=4))
    assert a != _batches(make_loader(ds, 8, train=True, seed=2, epoch=3))
    assert len(a) == 6 and all(len(b) == 8 for b in a)  # 50 // 8 full batches, the rest dropped
    assert len({i for b in a for i in b}) == 48


def test_val_is_sequential_and_complete():
    assert _batches(make_loader(Indices(10), 4, train=False, seed=0, epoch=7)) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


@pytest.mark.parametrize("n", [37, 64])
def test_two_ranks_get_disjoint_equal_train_shards(n):
    shards = [_batches(make_loader(Indices(n), 4, train=True, seed=5, epoch=1, rank=r, world_size=2)) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == (n // 2) // 4
    flat = [{i for b in s for i in b} for s in shards]
    assert not flat[0] & flat[1]
    assert all(len(b) == 4 for s in shards for b in s)


def test_two_ranks_val_covers_everything_with_equal_lengths():
    shards = [_batches(make_loader(Indices(9), 2, train=False, seed=0, epoch=0, rank=r, world_size=2)) for r in (0, 1)]
    assert [len(s) for s in shards] == [3, 3] and [sum(map(len, s)) for s in shards] == [5, 5]
    assert {i for s in shards for b in s for i in b} == set(range(9))  # padded by wrapping, like DistributedSampler


def test_start_batch_gives_the_tail_without_reading_the_head():
    full = _batches(make_loader(Indices(40), 4, train=True, seed=9, epoch=2, rank=1, world_size=2))
    ds = Indices(40)
    loader = make_loader(ds, 4, train=True, seed=9, epoch=2, rank=1, world_size=2, start_batch=3)
    assert len(loader) == len(full) - 3 and loader.batch_sampler.batches_per_epoch == len(full)
    tail = _batches(loader)
    assert tail == full[3:]
    assert sorted(ds.reads) == sorted(i for b in full[3:] for i in b)  # skipped batches were never read
    assert _batches(make_loader(Indices(40), 4, train=True, seed=9, epoch=2, rank=1, world_size=2,
                                start_batch=len(full))) == []
    with pytest.raises(ValueError, match="start_batch"):
        make_loader(Indices(40), 4, train=True, seed=9, epoch=2, start_batch=len(full) * 2 + 1)


def test_too_little_data_for_one_batch_is_a_clear_error():
    with pytest.raises(DataError, match="fewer than one batch"):
        make_loader(Indices(5), 4, train=True, seed=0, epoch=0, world_size=2)
    assert _batches(make_loader(Indices(0), 4, train=False, seed=0, epoch=0)) == []


def test_resume_and_workers_see_identical_audio(tmp_path):
    for k in range(12):
        write(tmp_path / f"s{k % 3}" / f"u{k}.flac", tone(1.5 + 0.1 * k, 16000, freq=120 + 20 * k), 16000)
    ds = SegmentDataset(build_manifest(tmp_path, "folder", []).entries, 24000, 0.25, train=True, seed=4)
    full = list(make_loader(ds, 3, train=True, seed=4, epoch=1))
    ds.set_epoch(0)  # the loader must set the epoch itself
    resumed = list(make_loader(ds, 3, train=True, seed=4, epoch=1, start_batch=2, num_workers=2))
    assert len(full) == 4 and len(resumed) == 2
    for a, b in zip(full[2:], resumed):
        assert torch.equal(a["audio"], b["audio"]) and torch.equal(a["length"], b["length"])
    other_epoch = list(make_loader(ds, 3, train=True, seed=4, epoch=2))
    assert not torch.equal(full[0]["audio"], other_epoch[0]["audio"])
    assert full[0]["audio"].shape == (3, 6000) and full[0]["failed"].tolist() == [0, 0, 0]


@pytest.mark.parametrize("workers", [0, 2])
def test_iterating_leaves_the_global_rng_alone(workers):
    """A resumed run restores the RNG mid-epoch and then builds a loader: that must not shift the stream."""
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    list(make_loader(Indices(12), 4, train=True, seed=0, epoch=1, num_workers=workers))
    assert torch.equal(torch.rand(3), expected)
