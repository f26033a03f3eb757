"""LibriSpeech download against a 127.0.0.1 server: fresh, resumed, corrupt, missing, unsafe, already present."""
from __future__ import annotations

import io
import tarfile

import pytest

from luna.data import DataError, build_datasets, ensure_subsets, prepare

from .helpers import SYNTHETIC_MINI, data_cfg, make_libri_tree, md5

ARCHIVE = "train-mini.tar.gz"


def _cfg(root, server, digest, **kw):
    return data_cfg(root, subsets=["train-mini"], download=True, base_url=server.url, md5={ARCHIVE: digest}, **kw)


def _assert_extracted(root):
    for spk in ("100", "101"):
        src = sorted(p.name for p in (SYNTHETIC_MINI / "train-mini" / spk / str(int(spk) * 10)).iterdir())
        dst = sorted(p.name for p in (root / "train-mini" / spk / str(int(spk) * 10)).iterdir())
        assert dst == src
    assert (root / "SPEAKERS.TXT").is_file()  # top-level files land next to the subsets
    assert not (root / "LibriSpeech").exists()  # leading component stripped
    assert not list(root.glob(".extract-*"))
    downloads = root / ".downloads"
    assert not list(downloads.glob("*.tar.gz*"))  # archive removed after extraction, no .part left


def test_fresh_download_extracts_and_indexes(tmp_path, serve, synthetic_tarball):
    server = serve({f"/{ARCHIVE}": synthetic_tarball})
    root = tmp_path / "LibriSpeech"
    report = prepare(_cfg(root, server, md5(synthetic_tarball)))
    assert server.requests == [{"path": f"/{ARCHIVE}", "range": None}]
    _assert_extracted(root)
    assert len(report.entries) == 20 and report.failed == []
    assert {e.speaker for e in report.entries} == {"100", "101"} and all(e.transcript for e in report.entries)
    train, val, info = build_datasets(_cfg(root, server, md5(synthetic_tarball)), 24000, seed=0)
    assert info.train_files + info.val_files == 20 and len(server.requests) == 1


def test_resume_from_a_partial_file(tmp_path, serve, synthetic_tarball):
    server = serve({f"/{ARCHIVE}": synthetic_tarball})
    root = tmp_path / "LibriSpeech"
    half = len(synthetic_tarball) // 2
    (root / ".downloads").mkdir(parents=True)
    (root / ".downloads" / f"{ARCHIVE}.part").write_bytes(synthetic_tarball[:half])
    ensure_subsets(_cfg(root, server, md5(synthetic_tarball)))
    assert server.requests == [{"path": f"/{ARCHIVE}", "range": f"bytes={half}-"}]
    _assert_extracted(root)


def test_interrupted_download_keeps_the_part_and_resumes(tmp_path, serve, synthetic_tarball):
    server = serve({f"/{ARCHIVE}": synthetic_tarball})
    server.cut_after = 100_000
    root = tmp_path / "LibriSpeech"
    cfg = _cfg(root, server, md5(synthetic_tarball))
    with pytest.raises(DataError, match="run again to resume") as err:
        ensure_subsets(cfg)
    assert server.url in str(err.value)
    part = root / ".downloads" / f"{ARCHIVE}.part"
    assert part.stat().st_size == 100_000 and not (root / "train-mini").exists()
    ensure_subsets(cfg)
    assert server.requests[-1]["range"] == "bytes=100000-"
    _assert_extracted(root)


def test_server_without_range_support_restarts(tmp_path, serve, synthetic_tarball):
    server = serve({f"/{ARCHIVE}": synthetic_tarball})
    server.ignore_range = True
    root = tmp_path / "LibriSpeech"
    (root / ".downloads").mkdir(parents=True)
    (root / ".downloads" / f"{ARCHIVE}.part").write_bytes(b"garbage that is not a prefix")
    ensure_subsets(_cfg(root, server, md5(synthetic_tarball)))
    assert server.requests[0]["range"] is not None
    _assert_extracted(root)


def test_checksum_mismatch_names_the_file_and_both_sums(tmp_path, serve, synthetic_tarball):
    server = serve({f"/{ARCHIVE}": synthetic_tarball})
    root = tmp_path / "LibriSpeech"
    wrong = "0" * 32
    with pytest.raises(DataError) as err:
        ensure_subsets(_cfg(root, server, wrong))
    msg = str(err.value)
    assert ARCHIVE in msg and wrong in msg and md5(synthetic_tarball) in msg
    assert not (root / "train-mini").exists()
    assert not list((root / ".downloads").glob(f"{ARCHIVE}*"))  # the corrupt file is gone: next run starts afresh


def test_http_error_names_the_url(tmp_path, serve):
    server = serve({})
    with pytest.raises(DataError, match="HTTP 404") as err:
        ensure_subsets(_cfg(tmp_path / "L", server, "0" * 32))
    assert f"{server.url}/{ARCHIVE}" in str(err.value)


def test_unreachable_server_names_the_url(tmp_path, serve):
    server = serve({})
    url = server.url
    server.close()  # nothing listens on that port any more
    cfg = data_cfg(tmp_path / "L", subsets=["train-mini"], download=True, base_url=url)
    with pytest.raises(DataError, match="download failed") as err:
        ensure_subsets(cfg)
    assert f"{url}/{ARCHIVE}" in str(err.value)


def test_nothing_is_fetched_when_present(tmp_path, serve):
    server = serve({})
    root = tmp_path / "LibriSpeech"
    make_libri_tree(root, "train-mini")
    assert ensure_subsets(_cfg(root, server, "0" * 32)) == root
    prepare(_cfg(root, server, "0" * 32))
    assert server.requests == []


def test_missing_without_download_says_how_to_fix(tmp_path):
    cfg = data_cfg(tmp_path / "LibriSpeech", subsets=["train-clean-100"], download=False)
    with pytest.raises(DataError) as err:
        ensure_subsets(cfg)
    msg = str(err.value)
    assert str(tmp_path / "LibriSpeech" / "train-clean-100") in msg
    assert "data.download=true" in msg and "data.root=" in msg


def test_val_subsets_are_fetched_too(tmp_path, serve, synthetic_tarball):
    server = serve({f"/{ARCHIVE}": synthetic_tarball})
    root = tmp_path / "LibriSpeech"
    make_libri_tree(root, "train-x")
    cfg = data_cfg(root, subsets=["train-x"], val_subsets=["train-mini"], download=True, base_url=server.url,
                   md5={ARCHIVE: md5(synthetic_tarball)})
    ensure_subsets(cfg)
    assert [r["path"] for r in server.requests] == [f"/{ARCHIVE}"]
    assert (root / "train-mini").is_dir()


def _tarball(members):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_path_traversal_is_refused(tmp_path, serve):
    evil = _tarball([("LibriSpeech/train-mini/1/1/1-1-0000.flac", b"x"), ("LibriSpeech/../../escaped.txt", b"x")])
    server = serve({f"/{ARCHIVE}": evil})
    root = tmp_path / "a" / "LibriSpeech"
    with pytest.raises(DataError, match=ARCHIVE):
        ensure_subsets(_cfg(root, server, md5(evil)))
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "a" / "escaped.txt").exists()
    assert not (root / "train-mini").exists() and not list(root.glob(".extract-*"))


def test_archive_without_the_subset_leaves_nothing_behind(tmp_path, serve):
    other = _tarball([("LibriSpeech/dev-other/1/1/1-1-0000.flac", b"x")])
    server = serve({f"/{ARCHIVE}": other})
    root = tmp_path / "LibriSpeech"
    with pytest.raises(DataError, match="no LibriSpeech/train-mini/"):
        ensure_subsets(_cfg(root, server, md5(other)))
    assert not (root / "train-mini").exists() and not (root / "dev-other").exists()
    assert not list(root.glob(".extract-*"))


def test_relative_root_is_relative_to_the_launch_dir(tmp_path, monkeypatch):
    make_libri_tree(tmp_path / "data" / "LibriSpeech", "train-mini")
    monkeypatch.chdir(tmp_path)
    cfg = data_cfg("data/LibriSpeech", subsets=["train-mini"])
    assert ensure_subsets(cfg) == tmp_path / "data" / "LibriSpeech"


def test_root_one_level_too_high_is_pointed_out_not_downloaded(tmp_path, serve):
    server = serve({})
    make_libri_tree(tmp_path / "LibriSpeech", "train-mini")
    with pytest.raises(DataError, match="data.root=") as err:
        ensure_subsets(_cfg(tmp_path, server, "0" * 32))
    assert str(tmp_path / "LibriSpeech") in str(err.value) and server.requests == []


def test_complete_part_file_is_verified_not_fetched_again(tmp_path, serve, synthetic_tarball):
    server = serve({f"/{ARCHIVE}": synthetic_tarball})
    root = tmp_path / "LibriSpeech"
    (root / ".downloads").mkdir(parents=True)
    (root / ".downloads" / f"{ARCHIVE}.part").write_bytes(synthetic_tarball)  # crashed before the rename
    ensure_subsets(_cfg(root, server, md5(synthetic_tarball)))
    assert server.requests == [{"path": f"/{ARCHIVE}", "range": f"bytes={len(synthetic_tarball)}-"}]  # 416
    _assert_extracted(root)
