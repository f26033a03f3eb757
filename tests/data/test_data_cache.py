"""data.cache: decoded once into a memory map, reused, rebuilt on change, same crops as decoding, atomic."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import luna.data.cache as cache_mod
from luna.data import build_datasets, prepare
from luna.data.cache import cache_root
from luna.data.manifest import SKIPPED_HEADER
from tests.paths import ROOT

from .helpers import data_cfg, make_libri_tree, tone, write

SR = 22050
#: int16 steps of 1/32768 round to within half a step; the decode path's windowed resampling adds float noise
TOLERANCE = 0.5 / 32768 + 1e-6


@pytest.fixture
def decodes(monkeypatch):
    """Counts the files the cache decodes (every decode of a build goes through luna.data.cache.load)."""
    calls = []
    real = cache_mod.load

    def counting(path, *args, **kwargs):
        calls.append(str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(cache_mod, "load", counting)
    return calls


def _cfg(root, tmp_path, **kw):
    return data_cfg(root, **{"subsets": ["train-x"], "cache": True, "cache_dir": str(tmp_path / "cache"), **kw})


def _samples_files(cfg):
    return sorted(cache_root(cfg).glob("*.npy"))


def test_built_once_then_reused_without_decoding(libri_tree, tmp_path, decodes):
    cfg = _cfg(libri_tree, tmp_path)
    train, val, _ = build_datasets(cfg, SR, seed=0)
    assert len(decodes) == train.num_files + val.num_files == 6  # every file once, train and val
    files = _samples_files(cfg)
    assert len(files) == 2 and all(p.parent == tmp_path / "cache" / "audio" for p in files)
    inodes = [p.stat().st_ino for p in files]
    first = [train[i]["audio"] for i in range(len(train))]
    decodes.clear()
    train2, _, _ = build_datasets(cfg, SR, seed=0)
    assert decodes == []  # the second build decodes nothing
    assert [p.stat().st_ino for p in _samples_files(cfg)] == inodes
    assert all(torch.equal(a, train2[i]["audio"]) for i, a in enumerate(first))


def test_prepare_with_a_sample_rate_builds_the_caches_for_every_rank(libri_tree, tmp_path, decodes):
    cfg = _cfg(libri_tree, tmp_path)
    report = prepare(cfg, sample_rate=SR)  # what rank 0 runs before the barrier
    assert len(decodes) == 6
    decodes.clear()
    build_datasets(cfg, SR, seed=0, report=report)  # the other ranks
    assert decodes == []


def test_concurrent_builders_decode_once(libri_tree, tmp_path, decodes):
    cfg = _cfg(libri_tree, tmp_path)
    threads = [threading.Thread(target=build_datasets, args=(cfg, SR, 0)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(decodes) == 6  # the lock: one builder, the others waited and reused its cache


def test_rebuilt_when_the_file_list_changes(libri_tree, tmp_path, decodes):
    cfg = _cfg(libri_tree, tmp_path)
    build_datasets(cfg, SR, seed=0)
    old = set(_samples_files(cfg))
    new = libri_tree / "train-x" / "11" / "7" / "11-7-0009.flac"
    write(new, tone(2.0, 16000, freq=700), 16000)
    decodes.clear()
    train, val, _ = build_datasets(cfg, SR, seed=0)
    assert str(new) in decodes and train.num_files + val.num_files == 7
    assert set(_samples_files(cfg)).isdisjoint(old)  # replaced (the stale build is deleted), not added
    assert len(_samples_files(cfg)) == 2

    decodes.clear()
    st = new.stat()
    os.utime(new, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # same size, new mtime
    build_datasets(cfg, SR, seed=0)
    assert str(new) in decodes


def test_rebuilt_when_the_sample_rate_changes(libri_tree, tmp_path, decodes):
    cfg = _cfg(libri_tree, tmp_path)
    build_datasets(cfg, SR, seed=0)
    decodes.clear()
    train, _, _ = build_datasets(cfg, 24000, seed=0)
    assert len(decodes) == 6 and train.cache.sample_rate == 24000
    assert train[0]["audio"].shape == (24000,)


@pytest.mark.parametrize("sr", [16000, 22050, 24000])
def test_crops_equal_the_decode_path(tmp_path, sr):
    """Same seed, same epoch: the same crop, lengths and padding; exact when nothing is resampled."""
    root = tmp_path / "mixed"
    write(root / "a" / "stereo44k.wav", tone(1.7, 44100, channels=2), 44100, "PCM_24")
    write(root / "a" / "short8k.wav", tone(0.3, 8000), 8000)  # shorter than a segment: padded
    write(root / "b" / "loud.wav", tone(1.2, 16000, amp=1.6), 16000, "FLOAT")  # beyond full scale
    make_libri_tree(root / "libri", utts=2)
    split = dict(kind="folder", subsets=["a", "b"], val_subsets=["libri"], segment_seconds=0.5)
    decoded, decoded_val, _ = build_datasets(data_cfg(root, **split), sr, seed=5)
    cached, cached_val, _ = build_datasets(_cfg(root, tmp_path, **split), sr, seed=5)
    assert cached.cache is not None and decoded.cache is None and len(cached) == len(decoded) == 3
    assert len(cached_val) == len(decoded_val) == 4
    for epoch in range(3):
        decoded.set_epoch(epoch), cached.set_epoch(epoch)
        for i in range(len(decoded)):
            x, y = decoded[i], cached[i]
            assert torch.equal(x["length"], y["length"]) and int(x["failed"]) == int(y["failed"]) == 0
            step = float(cached.cache.scales[cached._rows[i % cached.num_files]])  # 1/32768, coarser for loud.wav
            assert step <= 3 / 32767 and (x["audio"] - y["audio"]).abs().max() <= 0.5 * step + 1e-6
    assert (cached.cache.scales > 1 / 32768).sum() == 1  # only the file beyond full scale: never clipped
    for i in range(len(decoded_val)):
        assert (decoded_val[i]["audio"] - cached_val[i]["audio"]).abs().max() <= TOLERANCE
    if sr == 16000:  # the 16-bit FLACs at their own rate are stored exactly
        assert all(decoded_val.path(i).endswith(".flac") for i in range(4))
        assert all(torch.equal(decoded_val[i]["audio"], cached_val[i]["audio"]) for i in range(4))


def _odd_tree(root: Path) -> Path:
    write(root / "a_good.flac", tone(2.0, 16000), 16000)
    x = tone(2.0, 16000)
    x[::997] = np.nan
    write(root / "b_nan.wav", x, 16000, "FLOAT")
    write(root / "c_truncated.flac", tone(4.0, 16000), 16000)
    data = (root / "c_truncated.flac").read_bytes()
    (root / "c_truncated.flac").write_bytes(data[: len(data) // 20])
    write(root / "d_good.flac", tone(2.0, 16000, freq=500), 16000)
    (root / "e_text.wav").write_text("not audio\n")  # the manifest skips this one
    return root


def _skipped(path: Path):
    lines = path.read_text().splitlines()
    assert lines[0] + "\n" == SKIPPED_HEADER
    return sorted((Path(r.split("\t")[0]).name, r.split("\t")[2]) for r in lines[1:])


def test_unreadable_files_are_skipped_counted_and_listed_as_without_the_cache(tmp_path):
    runs = {}
    for cache in (False, True):
        root = _odd_tree(tmp_path / f"odd_{cache}")
        cfg = data_cfg(root, kind="folder", subsets=[], val_fraction=0.0, segment_seconds=0.5, cache=cache,
                       cache_dir=str(tmp_path / f"cache_{cache}"))
        log = tmp_path / f"skipped_{cache}.tsv"
        train, _, info = build_datasets(cfg, SR, seed=0, skipped_log=str(log))
        items = [train[i] for i in range(len(train))]
        runs[cache] = (info.failed, [Path(p).name for p, _ in info.failed_files], items, _skipped(log))
    plain, cached = runs[False], runs[True]
    assert cached[0] == plain[0] == 1 and cached[1] == plain[1] == ["e_text.wav"]  # indexing: unchanged
    assert [int(i["failed"]) for i in cached[2]] == [int(i["failed"]) for i in plain[2]] == [0, 2, 1, 0]
    assert cached[3] == plain[3] == [("b_nan.wav", "decoding"), ("c_truncated.flac", "decoding")]
    for a, b in zip(plain[2], cached[2]):
        assert (a["audio"] - b["audio"]).abs().max() <= TOLERANCE


def test_a_read_only_data_folder_works_and_the_cache_goes_to_the_user_cache_dir(libri_tree, tmp_path):
    before = sorted(p for p in libri_tree.rglob("*"))
    modes = {p: p.stat().st_mode for p in [libri_tree, *before]}
    for p in [libri_tree, *before]:
        p.chmod(stat.S_IMODE(modes[p]) & ~0o222)
    try:
        cfg = data_cfg(libri_tree, subsets=["train-x"], cache=True)  # cache_dir null: $XDG_CACHE_HOME
        train, _, _ = build_datasets(cfg, SR, seed=0)
        assert train[0]["audio"].shape == (SR,)
    finally:
        for p in [libri_tree, *before]:
            p.chmod(stat.S_IMODE(modes[p]))
    assert cache_root(cfg) == Path(os.environ["XDG_CACHE_HOME"]) / "luna" / "audio"
    assert len(list(cache_root(cfg).glob("*.npy"))) == 2
    assert not list(libri_tree.rglob("*.npy")) and not list(libri_tree.rglob("*.json"))


_SLOW_BUILD = """
import sys, time
import luna.data.cache as c
from luna.data import build_datasets
from tests.data.helpers import data_cfg
real = c._decode
def slow(*a, **k):
    time.sleep(0.3)
    return real(*a, **k)
c._decode = slow
build_datasets(data_cfg(sys.argv[1], subsets=["train-x"], cache=True, cache_dir=sys.argv[2]), 22050, 0)
"""


def test_a_killed_build_leaves_no_valid_looking_cache(libri_tree, tmp_path, decodes):
    cache_dir = tmp_path / "cache"
    audio = cache_dir / "audio"
    p = subprocess.Popen([sys.executable, "-c", _SLOW_BUILD, str(libri_tree), str(cache_dir)], cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        while p.poll() is None and not list(audio.glob("*.tmp")):
            time.sleep(0.01)  # until the samples are being written
        p.kill()
    finally:
        p.wait()
    assert p.returncode != 0, "the build finished before it was killed"
    assert list(audio.glob("*.npy.tmp")) and not list(audio.glob("*.json"))  # no index: nothing looks valid
    train, _, _ = build_datasets(_cfg(libri_tree, tmp_path), SR, seed=0)
    assert len(decodes) == 6  # rebuilt from scratch
    assert not list(audio.glob("*.tmp"))  # the killed build's temp file is cleared
    index = json.loads(next(audio.glob("train-*.json")).read_text())
    assert (audio / index["samples"]).is_file() and train[0]["audio"].shape == (SR,)


def test_a_damaged_samples_file_is_rebuilt(libri_tree, tmp_path, decodes):
    cfg = _cfg(libri_tree, tmp_path)
    build_datasets(cfg, SR, seed=0)
    for p in _samples_files(cfg):
        p.write_bytes(p.read_bytes()[:1000])  # cut short
    decodes.clear()
    build_datasets(cfg, SR, seed=0)
    assert len(decodes) == 6


def test_wrong_values_are_rejected_naming_the_key():
    from luna.config import DataConfig, typed
    from luna.errors import ConfigError

    with pytest.raises(ConfigError, match="cache"):
        typed(DataConfig, {"root": "x", "cache": "maybe"})
    assert typed(DataConfig, {"root": "x"}).cache is False  # off unless asked for


@pytest.mark.slow
@pytest.mark.parametrize("data", [[], ["data=folder", f"data.root={ROOT}/luna/data/librispeech_mini/dev-clean"]])
def test_a_short_training_run_reads_from_the_cache(tmp_path, data):
    from tests.training.helpers import metrics, run_train

    cache_dir = tmp_path / "cache"
    r = run_train(tmp_path / "run", [*data, "data.cache=true", f"data.cache_dir={cache_dir}", "trainer.max_steps=2"])
    assert metrics(tmp_path / "run")["step"] == 2
    assert len(list((cache_dir / "audio").glob("train-*.npy"))) == 1
    assert len(list((cache_dir / "audio").glob("val-*.npy"))) == 1
    assert "cached" in r.stdout + r.stderr  # the build's log line


def test_a_pickled_cache_maps_the_samples_again_instead_of_copying_them(libri_tree, tmp_path):
    import pickle

    train, _, _ = build_datasets(_cfg(libri_tree, tmp_path), SR, seed=0)
    blob = pickle.dumps(train)  # what a spawned DataLoader worker receives
    assert len(blob) < train.cache.samples.nbytes / 4
    again = pickle.loads(blob)
    assert all(torch.equal(train[i]["audio"], again[i]["audio"]) for i in range(len(train)))
