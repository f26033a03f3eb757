"""Train/val split: a pure function of the utterance id, ~val_fraction, stable when files are added."""
from __future__ import annotations

import hashlib

import pytest

from luna.data import BUNDLED, build_datasets, split_of
from luna.data.manifest import split_key

from .helpers import data_cfg, make_libri_tree


def _reference(utt_id: str, fraction: float) -> str:
    """The documented formula, written out independently: sha1 -> first 8 bytes big-endian / 2**64."""
    u = int(hashlib.sha1(utt_id.encode("utf-8")).hexdigest()[:16], 16) / 2**64
    return "val" if u < fraction else "train"


def test_matches_the_documented_formula():
    ids = [f"{s}-{c}-{u:04d}" for s in range(30) for c in range(3) for u in range(12)]
    for fraction in (0.0, 0.05, 0.5):
        assert [split_of(i, fraction) for i in ids] == [_reference(i, fraction) for i in ids]


def test_frozen_values():
    """Values computed once and frozen: a change of formula (or a platform difference) fails here."""
    assert split_key("100-1000-0000") == pytest.approx(0.4842176693, abs=1e-9)
    assert split_key("1089-134686-0000") == pytest.approx(0.4482744842, abs=1e-9)
    assert split_key("speaker/a") == pytest.approx(0.9359882262, abs=1e-9)
    assert split_key("100-1000-0026") == pytest.approx(0.0152951301, abs=1e-9)
    assert split_of("100-1000-0026", 0.05) == "val" and split_of("100-1000-0000", 0.05) == "train"


def test_about_five_percent_val():
    ids = [f"{s}-{c}-{u:04d}" for s in range(200) for c in range(10) for u in range(10)]
    frac = sum(split_of(i, 0.05) == "val" for i in ids) / len(ids)
    assert 0.045 < frac < 0.055


def test_stable_when_files_are_added(tmp_path):
    root = tmp_path / "L"
    make_libri_tree(root, speakers=range(20), utts=3, seconds=0.3)
    cfg = data_cfg(root, subsets=["train-x"], max_val_items=0, val_fraction=0.2)
    train, val, _ = build_datasets(cfg, 16000, seed=0)
    before = {"train": {train.path(i) for i in range(len(train))}, "val": {val.path(i) for i in range(len(val))}}
    assert before["val"] and before["train"]
    make_libri_tree(root, speakers=range(20, 40), utts=3, seconds=0.3)
    train2, val2, info = build_datasets(cfg, 16000, seed=0)
    assert info.train_files + info.val_files == 120
    assert before["train"] <= {train2.path(i) for i in range(len(train2))}
    assert before["val"] <= {val2.path(i) for i in range(len(val2))}


def test_val_subsets_and_cap(tmp_path):
    root = tmp_path / "L"
    make_libri_tree(root, "train-x", speakers=range(10), utts=4, seconds=0.3)
    dev_ids = make_libri_tree(root, "dev-x", speakers=(90, 91), utts=5, seconds=0.3)
    cfg = data_cfg(root, subsets=["train-x"], val_subsets=["dev-x"], max_val_items=4)
    train, val, info = build_datasets(cfg, 16000, seed=0)
    assert info.train_files == 40 and info.val_files == 4 and "dev-x" in info.val_source
    chosen = sorted(dev_ids, key=split_key)[:4]  # smallest hash keys, whatever the machine
    assert sorted(val.path(i).rsplit("/", 1)[1][:-5] for i in range(len(val))) == sorted(chosen)
    assert not any("/dev-x/" in train.path(i) for i in range(len(train)))


def test_val_fraction_zero_gives_no_val(libri_tree):
    _, val, info = build_datasets(data_cfg(libri_tree, subsets=["train-x"], val_fraction=0.0), 16000, seed=0)
    assert len(val) == 0 and info.val_files == 0 and info.train_files == 6


def test_bundled_corpus_split():
    train, val, info = build_datasets(data_cfg(BUNDLED, subsets=["train-clean-100"]), 22050, seed=0)
    assert info.train_files + info.val_files == 75 and 1 <= info.val_files <= 8
    paths = [train.path(i) for i in range(len(train))] + [val.path(i) for i in range(len(val))]
    assert all("/train-clean-100/" in p for p in paths)  # dev-clean stays out: it is the test set
    assert len(set(paths)) == 75
    for i in range(len(val)):
        assert split_of(val.path(i).rsplit("/", 1)[1][:-5], 0.05) == "val"
