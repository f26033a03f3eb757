"""Manifest: fields, cache reuse, rebuild on change, bad files listed/skipped/counted, cache location."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest

import luna.data.manifest as manifest_mod
from luna.data import BUNDLED, DataError, build_manifest

from .helpers import make_libri_tree, tone, write


def test_librispeech_fields(libri_tree):
    report = build_manifest(libri_tree, "librispeech", ["train-x"])
    ids = [e.id for e in report.entries]
    assert ids == sorted(ids) and len(ids) == 6
    e = {x.id: x for x in report.entries}["12-7-0002"]
    assert Path(e.path) == libri_tree / "train-x" / "12" / "7" / "12-7-0002.flac"
    assert (e.frames, e.sample_rate, e.channels) == (int(round(1.7 * 16000)), 16000, 1)
    assert e.speaker == "12" and e.subset == "train-x"
    assert e.transcript == "HELLO WORLD NUMBER 2"
    assert e.seconds == pytest.approx(1.7)
    assert report.failed == [] and report.rebuilt == ["train-x"]
    assert report.hours == pytest.approx(2 * (1.5 + 1.6 + 1.7) / 3600)
    assert report.cache_paths == [libri_tree / ".luna_manifests" / "librispeech-train-x.jsonl"]


def test_cache_is_reused_without_probing_files(libri_tree, monkeypatch):
    first = build_manifest(libri_tree, "librispeech", ["train-x"])
    cache = first.cache_paths[0]
    stamp = cache.stat().st_mtime_ns

    def no_probe(path):
        raise AssertionError(f"probed {path} although the tree did not change")

    monkeypatch.setattr(manifest_mod, "info", no_probe)
    again = build_manifest(libri_tree, "librispeech", ["train-x"])
    assert again.rebuilt == [] and again.entries == first.entries
    assert cache.stat().st_mtime_ns == stamp


def test_rebuilt_when_files_are_added_or_removed(libri_tree):
    build_manifest(libri_tree, "librispeech", ["train-x"])
    new = write(libri_tree / "train-x" / "13" / "7" / "13-7-0000.flac", tone(1.0, 16000), 16000)
    added = build_manifest(libri_tree, "librispeech", ["train-x"])
    assert added.rebuilt == ["train-x"]
    assert "13-7-0000" in {e.id for e in added.entries} and len(added.entries) == 7

    (libri_tree / "train-x" / "11" / "7" / "11-7-0001.flac").unlink()
    new.unlink()
    removed = build_manifest(libri_tree, "librispeech", ["train-x"])
    assert removed.rebuilt == ["train-x"]
    assert {e.id for e in removed.entries} == {"11-7-0000", "11-7-0002", "12-7-0000", "12-7-0001", "12-7-0002"}


def test_damaged_cache_is_rebuilt(libri_tree):
    cache = build_manifest(libri_tree, "librispeech", ["train-x"]).cache_paths[0]
    lines = cache.read_text().splitlines()
    cache.write_text("\n".join(lines[:3]) + "\n")  # cut short
    report = build_manifest(libri_tree, "librispeech", ["train-x"])
    assert report.rebuilt == ["train-x"] and len(report.entries) == 6


def test_bad_files_are_listed_skipped_and_counted_once(libri_tree, caplog):
    d = libri_tree / "train-x" / "11" / "7"
    (d / "11-7-0100.flac").write_bytes(b"")  # zero bytes
    (d / "11-7-0101.wav").write_text("this is not audio\n" * 20)  # text named .wav
    write(d / "11-7-0102.wav", np.zeros(0, np.float32), 16000)  # valid header, 0 frames
    with caplog.at_level(logging.INFO, logger="luna.data"):
        report = build_manifest(libri_tree, "librispeech", ["train-x"])
    failed = dict(report.failed)
    assert set(failed) == {str(d / "11-7-0100.flac"), str(d / "11-7-0101.wav"), str(d / "11-7-0102.wav")}
    assert "empty" in failed[str(d / "11-7-0100.flac")]
    assert "0 frames" in failed[str(d / "11-7-0102.wav")]
    assert all(reason for reason in failed.values())
    assert len(report.entries) == 6 and not any(e.id.startswith("11-7-01") for e in report.entries)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "3 unreadable" in warnings[0].getMessage()
    # reused from the cache: still reported
    assert build_manifest(libri_tree, "librispeech", ["train-x"]).failed == report.failed


def test_folder_kind(tmp_path):
    write(tmp_path / "alice" / "a.wav", tone(0.5, 8000), 8000)
    write(tmp_path / "alice" / "deep" / "b.flac", tone(0.5, 22050, channels=2), 22050)
    write(tmp_path / "bob" / "a.ogg", tone(0.5, 32000), 32000)
    write(tmp_path / "top.wav", tone(0.5, 16000), 16000)
    (tmp_path / "notes.txt").write_text("ignored")
    report = build_manifest(tmp_path, "folder", [])
    by_id = {e.id: e for e in report.entries}
    assert set(by_id) == {"alice/a", "alice/deep/b", "bob/a", "top"}
    assert by_id["alice/a"].speaker == "alice" and by_id["alice/deep/b"].speaker == "deep"
    assert by_id["top"].speaker == tmp_path.name
    assert by_id["alice/deep/b"].channels == 2 and by_id["bob/a"].sample_rate == 32000
    only_bob = build_manifest(tmp_path, "folder", ["bob"])
    assert [e.id for e in only_bob.entries] == ["bob/a"] and only_bob.entries[0].subset == "bob"


def test_no_audio_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no usable audio"):
        build_manifest(tmp_path, "folder", ["empty"])
    with pytest.raises(DataError, match="does not exist"):
        build_manifest(tmp_path, "librispeech", ["missing"])


def test_cache_location(tmp_path, monkeypatch):
    make_libri_tree(tmp_path / "a")
    explicit = build_manifest(tmp_path / "a", "librispeech", ["train-x"], cache_dir=str(tmp_path / "cache"))
    assert explicit.cache_paths == [tmp_path / "cache" / "librispeech-train-x.jsonl"]
    assert explicit.cache_paths[0].is_file()

    user_cache = Path(os.environ["XDG_CACHE_HOME"]) / "luna" / "manifests"
    # the bundled corpus is package data: never written into
    bundled = build_manifest(BUNDLED, "librispeech", ["dev-clean"])
    assert user_cache in bundled.cache_paths[0].parents
    assert not (BUNDLED / ".luna_manifests").exists() or not any((BUNDLED / ".luna_manifests").iterdir())
    assert len(bundled.entries) == 30

    # a read-only root falls back to the user cache dir
    make_libri_tree(tmp_path / "ro")
    monkeypatch.setattr(manifest_mod.os, "access", lambda path, mode: False)
    ro = build_manifest(tmp_path / "ro", "librispeech", ["train-x"])
    assert user_cache in ro.cache_paths[0].parents


def test_manifest_survives_a_moved_tree(libri_tree, tmp_path):
    build_manifest(libri_tree, "librispeech", ["train-x"])
    moved = tmp_path / "moved"
    libri_tree.rename(moved)
    report = build_manifest(moved, "librispeech", ["train-x"])
    assert report.rebuilt == []  # paths are stored relative to the root, mtimes survive a rename
    assert all(Path(e.path).is_file() and moved in Path(e.path).parents for e in report.entries)


def test_skipped_files_listing(tmp_path):
    from luna.data import record_skipped, write_skipped

    listing = tmp_path / "run" / "skipped_files.tsv"
    write_skipped(listing, [("/a/empty.flac", "empty file (0 bytes)"), ("/a/x.wav", "bad\theader\nline two")])
    assert record_skipped(listing, "/a/cut.flac", "file ends early") is True
    assert record_skipped(listing, "/a/cut.flac", "file ends early") is False  # another worker met it too
    assert record_skipped(listing, "/a/empty.flac", "again") is False
    assert listing.read_text().splitlines() == [
        "path\treason\tfound",
        "/a/empty.flac\tempty file (0 bytes)\tindexing",
        "/a/x.wav\tbad header line two\tindexing",
        "/a/cut.flac\tfile ends early\tdecoding",
    ]
    fresh = tmp_path / "other.tsv"
    assert record_skipped(fresh, "/b/c.flac", "no samples") and fresh.read_text().startswith("path\treason\tfound\n")
