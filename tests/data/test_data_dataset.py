"""SegmentDataset: exact lengths, odd inputs, crop determinism, crop-then-resample, fallback on bad files."""
from __future__ import annotations

import logging
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from luna.audio import load, resample
from luna.data import DataError, SegmentDataset, build_manifest

from .helpers import tone, write

SR = 24000


def _entries(root, kind="folder"):
    return build_manifest(root, kind, []).entries


def _one(tmp_path, name, data, sr, subtype=None):
    write(tmp_path / name, data, sr, subtype)
    (e,) = _entries(tmp_path)
    return e


@pytest.mark.parametrize(
    "name,sr,subtype,channels",
    [
        ("u8.wav", 8000, "PCM_U8", 1),
        ("s16_stereo.wav", 16000, "PCM_16", 2),
        ("s24.wav", 22050, "PCM_24", 1),
        ("s32.wav", 44100, "PCM_32", 2),
        ("f32.wav", 48000, "FLOAT", 1),
        ("f64.wav", 11025, "DOUBLE", 1),
        ("same_rate.flac", 24000, "PCM_16", 1),
        ("vorbis.ogg", 32000, None, 1),
    ],
)
@pytest.mark.parametrize("train", [True, False])
def test_odd_formats_give_exact_segments(tmp_path, name, sr, subtype, channels, train):
    e = _one(tmp_path, name, tone(2.0, sr, channels=channels), sr, subtype)
    ds = SegmentDataset([e], SR, 0.5, train=train, seed=3)
    item = ds[0]
    assert set(item) == {"audio", "length", "failed"}
    assert item["audio"].shape == (12000,) and item["audio"].dtype == torch.float32
    assert item["length"].dtype == torch.int64 and item["length"].shape == () and int(item["length"]) == 12000
    assert int(item["failed"]) == 0
    assert torch.isfinite(item["audio"]).all() and item["audio"].abs().max() > 0.05


@pytest.mark.parametrize("sr", [8000, 16000, 44100, 48000])
@pytest.mark.parametrize("train", [True, False])
def test_crop_then_resample_equals_a_crop_of_the_resampled_file(tmp_path, sr, train):
    e = _one(tmp_path, "x.wav", tone(1.3, sr, freq=330.0), sr, "FLOAT")
    ds = SegmentDataset([e], SR, 0.4, train=train, seed=1)
    full = resample(load(e.path)[0], sr, SR)
    for epoch in range(3):
        ds.set_epoch(epoch)
        start = ds.crop_start(0)
        offset = start * SR // sr
        assert offset * sr == start * SR  # crops start on a sample of both rates
        expected = full[offset : offset + 9600]
        assert torch.allclose(ds[0]["audio"], expected, atol=2e-5)


def test_segment_length_is_rounded(tmp_path):
    e = _one(tmp_path, "x.wav", tone(1.0, 16000), 16000)
    assert SegmentDataset([e], SR, 0.33333, train=True).segment_samples == round(0.33333 * SR) == 8000
    assert SegmentDataset([e], 22050, 0.5, train=True)[0]["audio"].shape == (11025,)


@pytest.mark.parametrize("sr", [8000, 16000, 48000])
def test_short_clip_is_padded_with_its_valid_length(tmp_path, sr):
    e = _one(tmp_path, "short.wav", tone(0.3, sr), sr, "PCM_16")
    for train in (True, False):
        item = SegmentDataset([e], SR, 1.0, train=train)[0]
        n = int(item["length"])
        assert n == math.ceil(int(round(0.3 * sr)) * SR / sr) == 7200
        assert item["audio"].shape == (SR,)
        assert torch.all(item["audio"][n:] == 0) and item["audio"][:n].abs().max() > 0.1


def test_silence_is_kept(tmp_path):
    e = _one(tmp_path, "silence.flac", np.zeros(16000, np.float32), 16000)
    item = SegmentDataset([e], SR, 0.5, train=True)[0]
    assert int(item["length"]) == 12000 and torch.all(item["audio"] == 0) and int(item["failed"]) == 0


def test_stereo_is_averaged_to_mono(tmp_path):
    x = tone(1.0, SR)
    e = _one(tmp_path, "st.wav", np.stack([x, -0.5 * x], axis=1), SR, "FLOAT")
    ds = SegmentDataset([e], SR, 0.5, train=False)
    start = ds.crop_start(0)
    assert torch.allclose(ds[0]["audio"], torch.from_numpy(0.25 * x[start : start + 12000]), atol=1e-6)


def test_crops_are_a_pure_function_of_seed_epoch_index(tmp_path):
    for k in range(4):
        write(tmp_path / f"f{k}.flac", tone(4.0 + k, 16000, freq=150 + 40 * k), 16000)
    entries = _entries(tmp_path)
    a = SegmentDataset(entries, SR, 0.5, train=True, seed=7)
    b = SegmentDataset(entries, SR, 0.5, train=True, seed=7)
    b.set_epoch(5)
    _ = [b[i] for i in (3, 1)]  # other reads in between change nothing
    b.set_epoch(2)
    a.set_epoch(2)
    for i in (2, 0, 3):
        assert torch.equal(a[i]["audio"], b[i]["audio"])
        assert a.crop_start(i) == b.crop_start(i)
    starts = {}
    for epoch in range(6):
        a.set_epoch(epoch)
        starts[epoch] = [a.crop_start(i) for i in range(4)]
    assert len({tuple(s) for s in starts.values()}) == 6  # crops move between epochs
    a.set_epoch(0)
    other_seed = SegmentDataset(entries, SR, 0.5, train=True, seed=8)
    assert [a.crop_start(i) for i in range(4)] != [other_seed.crop_start(i) for i in range(4)]
    assert not torch.equal(a[0]["audio"], (a.set_epoch(1), a[0]["audio"])[1])


def test_val_crop_is_fixed_and_central(tmp_path):
    e = _one(tmp_path, "x.flac", tone(3.0, 16000), 16000)
    ds = SegmentDataset([e], SR, 1.0, train=False, seed=0)
    first = ds[0]["audio"]
    for epoch in (1, 9):
        ds.set_epoch(epoch)
        assert torch.equal(ds[0]["audio"], first)
    assert ds.crop_start(0) == 16000  # (48000 - 16000) / 2


def _nan_wav(path):
    x = tone(2.0, 16000)
    x[::997] = np.nan  # in every crop
    return write(path, x, 16000, "FLOAT")


def _truncated_flac(path):
    write(path, tone(4.0, 16000), 16000)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 20])
    return path


def test_unreadable_items_fall_back_to_the_next_file(tmp_path, caplog):
    _nan_wav(tmp_path / "a_nan.wav")
    _truncated_flac(tmp_path / "b_truncated.flac")
    write(tmp_path / "c_good.flac", tone(2.0, 16000), 16000)
    write(tmp_path / "d_good.flac", tone(2.0, 16000, freq=500), 16000)
    entries = _entries(tmp_path)
    assert [e.id for e in entries] == ["a_nan", "b_truncated", "c_good", "d_good"]  # info() cannot tell
    ds = SegmentDataset(entries, SR, 0.5, train=True, seed=0)
    with caplog.at_level(logging.WARNING, logger="luna.data"):
        items = [ds[i] for i in range(4)] + [ds[0], ds[1]]
    assert [int(it["failed"]) for it in items] == [2, 1, 0, 0, 2, 1]
    assert torch.equal(items[0]["audio"], items[2]["audio"])  # deterministic: the next readable file
    assert torch.equal(items[1]["audio"], items[2]["audio"])
    assert all(it["audio"].shape == (12000,) for it in items)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2  # once per bad file, however often it is hit
    assert any("a_nan.wav" in m and "NaN" in m for m in messages)
    assert any("b_truncated.flac" in m for m in messages)


def test_wrap_around_and_all_bad(tmp_path):
    write(tmp_path / "a_good.flac", tone(1.0, 16000), 16000)
    _nan_wav(tmp_path / "b_nan.wav")
    ds = SegmentDataset(_entries(tmp_path), SR, 0.5, train=False)
    assert int(ds[1]["failed"]) == 1 and torch.equal(ds[1]["audio"], ds[0]["audio"])

    bad = tmp_path / "bad"
    _nan_wav(bad / "x.wav")
    with pytest.raises(DataError, match="none of the 1"):
        SegmentDataset(_entries(bad), SR, 0.5, train=True)[0]


def test_file_shorter_than_its_header_is_unreadable(tmp_path):
    e = _one(tmp_path, "x.flac", tone(2.0, 16000), 16000)
    liar = replace(e, frames=e.frames * 3)  # e.g. the file was cut after indexing
    good = replace(e, id="y")
    ds = SegmentDataset([liar, good], SR, 1.0, train=False)
    assert int(ds[0]["failed"]) == 1


def test_a_folder_of_odd_files_trains_end_to_end(tmp_path):
    """Every odd input in one corpus: bad files are skipped by the manifest or the dataset, never a crash."""
    from luna.data import build_datasets, make_loader

    from .helpers import data_cfg

    root = tmp_path / "odd"
    write(root / "a" / "stereo.wav", tone(1.2, 44100, channels=2), 44100, "PCM_24")
    write(root / "a" / "u8.wav", tone(0.9, 8000), 8000, "PCM_U8")
    write(root / "a" / "short.flac", tone(0.2, 16000), 16000)
    write(root / "b" / "silence.wav", np.zeros(30000, np.float32), 48000, "FLOAT")
    write(root / "b" / "s32.wav", tone(2.0, 22050), 22050, "PCM_32")
    write(root / "b" / "v.ogg", tone(1.0, 32000), 32000)
    _nan_wav(root / "c" / "nan.wav")
    _truncated_flac(root / "c" / "truncated.flac")
    (root / "c" / "empty.flac").write_bytes(b"")
    (root / "c" / "text.wav").write_text("RIFF? no, just text\n")
    write(root / "c" / "zero.wav", np.zeros(0, np.float32), 16000)
    cfg = data_cfg(root, kind="folder", subsets=[], val_fraction=0.0, segment_seconds=0.5)
    train, val, info = build_datasets(cfg, SR, seed=0)
    assert info.failed == 3 and {p.rsplit("/", 1)[1] for p, _ in info.failed_files} == {"empty.flac", "text.wav", "zero.wav"}
    assert info.train_files == 8 and len(val) == 0
    failed = 0
    for epoch in range(2):
        batches = list(make_loader(train, 4, train=True, seed=0, epoch=epoch))
        assert len(batches) == 2 and all(b["audio"].shape == (4, 12000) for b in batches)
        assert all(torch.isfinite(b["audio"]).all() for b in batches)
        failed += sum(int(b["failed"].sum()) for b in batches)
        lengths = torch.cat([b["length"] for b in batches])
        assert (lengths <= 12000).all() and (lengths == 4800).any()  # the 0.2 s clip: padded, not dropped
    assert failed >= 4  # nan.wav and truncated.flac are hit every epoch (each falls back to the next file)


def test_index_out_of_range(tmp_path):
    ds = SegmentDataset([_one(tmp_path, "x.flac", tone(1.0, 16000), 16000)], SR, 0.5, train=True)
    assert torch.equal(ds[-1]["audio"], ds[0]["audio"])
    with pytest.raises(IndexError):
        ds[1]
    assert len(list(ds)) == 1  # the sequence protocol stops


def test_crops_per_file_gives_each_item_its_own_crop_of_a_file(libri_tree):
    entries = build_manifest(libri_tree, "librispeech", ["train-x"]).entries[:3]
    ds = SegmentDataset(entries, 16000, 0.5, train=True, seed=1, crops_per_file=4)
    assert len(ds) == 12 and ds.num_files == 3
    starts = [ds.crop_start(i) for i in range(12)]
    assert len(set(starts[0::3])) > 1  # the 4 items of file 0 are different crops
    for i in range(12):
        item = ds[i]
        ref, _ = load(ds.path(i % 3), None, ds.crop_start(i), 8000)
        assert torch.allclose(item["audio"][: ref.numel()], ref)
    val = SegmentDataset(entries, 16000, 0.5, train=False, crops_per_file=4)
    assert len(val) == 3  # validation crops stay fixed: one per file
