"""LibriSpeech on disk: fetch missing subsets (resumable, MD5-verified, atomic extraction) and read transcripts.

Only the subsets a config names are fetched; a subset whose directory exists under ``data.root`` is
trusted and nothing touches the network. Archives land in ``<root>/.downloads`` as ``NAME.tar.gz.part``
until their MD5 matches, so an interrupted download resumes with an HTTP Range request and a corrupt one
never reaches extraction. Extraction goes to a temporary directory next to the target and is renamed into
place, so a half-extracted subset never looks finished.
"""
from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path, PurePosixPath
from typing import Any, Dict, Iterator, Optional

from tqdm import tqdm
from luna.errors import DataError  # noqa: F401 - raised here, importable from here

log = logging.getLogger("luna.data")

#: top-level directory inside the official archives (``LibriSpeech/train-clean-100/...``)
ARCHIVE_PREFIX = "LibriSpeech"
CHUNK = 1 << 20



def resolve_root(data_cfg: Any) -> Path:
    """``data.root`` as an absolute path; relative roots are relative to the launch dir (Hydra-aware)."""
    root = Path(os.path.expanduser(str(data_cfg.root)))
    if not root.is_absolute():
        from hydra.utils import to_absolute_path  # original cwd inside a Hydra job, else os.getcwd()

        root = Path(to_absolute_path(str(root)))
    return root


def ensure_subsets(data_cfg: Any) -> Path:
    """Make every subset in ``data.subsets`` and ``data.val_subsets`` present under the root; return the root.

    ``kind=librispeech``: a missing subset is downloaded when ``data.download`` is true, else a
    :class:`DataError` says where it looked and how to fix it. ``kind=folder``: the root (and any listed
    subdirectory) must exist; nothing is downloaded.
    """
    root = resolve_root(data_cfg)
    names = list(dict.fromkeys([*data_cfg.subsets, *data_cfg.val_subsets]))
    if data_cfg.kind == "folder":
        missing = [root / s for s in names if not (root / s).is_dir()] or ([] if root.is_dir() else [root])
        if missing:
            raise DataError(
                f"data.root: audio folder {missing[0]} does not exist; point data.root= at a directory of "
                f"wav/flac/ogg files"
            )
        return root
    for subset in names:
        if (root / subset).is_dir():
            continue
        nested = root / ARCHIVE_PREFIX / subset
        if nested.is_dir():  # data.root names the parent of an extracted copy: say so rather than download again
            raise DataError(
                f"LibriSpeech subset {subset!r} not found at {root / subset}, but {nested} exists: "
                f"set data.root={root / ARCHIVE_PREFIX}"
            )
        if not data_cfg.download:
            raise DataError(
                f"LibriSpeech subset {subset!r} not found at {root / subset}. Set data.download=true to fetch "
                f"it from {data_cfg.base_url}, or data.root=DIR to use an existing copy (DIR/{subset}/...)."
            )
        download_subset(root, subset, str(data_cfg.base_url), dict(data_cfg.md5 or {}))
    return root


def download_subset(root: Path, subset: str, base_url: str, md5: Dict[str, str]) -> Path:
    """Fetch ``<base_url>/<subset>.tar.gz``, verify it and extract ``<root>/<subset>``; return that dir."""
    archive_name = f"{subset}.tar.gz"
    downloads = root / ".downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    with _lock(downloads / f"{subset}.lock"):
        target = root / subset
        if target.is_dir():  # another process finished it while we waited for the lock
            return target
        archive = downloads / archive_name
        url = f"{base_url.rstrip('/')}/{archive_name}"
        expected = md5.get(archive_name) or md5.get(subset)
        if not archive.exists():
            fetch(url, archive, expected)
        elif expected:
            _check_md5(archive, _md5_of(archive), expected, url)
        extract_subset(archive, root, subset)
        archive.unlink()  # the extracted tree is what we keep; the mirror keeps the archive
        log.info("LibriSpeech %s ready at %s", subset, target)
        return target


def fetch(url: str, dest: Path, md5: Optional[str] = None, timeout: float = 60.0) -> Path:
    """Stream ``url`` to ``dest`` via ``dest.part``, resuming a partial file with an HTTP Range request.

    The ``.part`` survives an interrupted transfer (rerun to resume); it is deleted when the finished
    file's MD5 differs from ``md5``. Without a known sum the file is accepted with a warning.
    """
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.exists() else 0
    digest = hashlib.md5()
    request = urllib.request.Request(url, headers={"User-Agent": "luna"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    log.info("downloading %s to %s%s", url, dest.parent, f" (resuming after {offset} bytes)" if offset else "")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        e.close()
        if e.code == 416 and offset:  # range starts at the end: the .part is already complete
            response = None
        else:
            raise DataError(f"download failed: {url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise DataError(f"download failed: {url}: {reason}") from None

    if response is None:
        _hash_file(part, digest)
    else:
        with response:
            if offset and response.status != 206:  # server ignored the Range header: start over
                log.info("%s: server does not support resume, restarting the download", url)
                offset = 0
            if offset:
                _hash_file(part, digest)
            length = response.headers.get("Content-Length")
            total = offset + int(length) if length is not None else None
            _stream(response, part, offset, total, digest, url)
    actual = digest.hexdigest()
    if md5:
        _check_md5(part, actual, md5, url)
    else:
        log.warning("no known MD5 for %s; not verified (add it to data.md5)", dest.name)
    os.replace(part, dest)
    return dest


def _stream(response: Any, part: Path, offset: int, total: Optional[int], digest: Any, url: str) -> None:
    mode = "ab" if offset else "wb"
    written = offset
    bar = tqdm(total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
               desc=part.name.removesuffix(".part"), disable=None, leave=False)
    try:
        with open(part, mode) as f:
            while True:
                try:
                    chunk = response.read(CHUNK)
                except (OSError, ValueError, http.client.HTTPException) as e:  # reset, timeout, IncompleteRead
                    raise DataError(
                        f"download interrupted: {url} after {written} bytes ({e}); the partial file "
                        f"{part} is kept, run again to resume"
                    ) from None
                if not chunk:
                    break
                f.write(chunk)
                digest.update(chunk)
                written += len(chunk)
                bar.update(len(chunk))
    finally:
        bar.close()
    if total is not None and written != total:
        raise DataError(
            f"download incomplete: {url}: got {written} of {total} bytes; the partial file {part} is kept, "
            f"run again to resume"
        )


def _check_md5(path: Path, actual: str, expected: str, url: str) -> None:
    if actual.lower() != expected.lower():
        path.unlink(missing_ok=True)
        raise DataError(
            f"checksum mismatch for {path.name.removesuffix('.part')} from {url}: expected MD5 {expected}, got "
            f"{actual}; the corrupt file was deleted, run again to download it afresh"
        )


def _hash_file(path: Path, digest: Any) -> None:
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)


def _md5_of(path: Path) -> str:
    digest = hashlib.md5()
    _hash_file(path, digest)
    return digest.hexdigest()


def extract_subset(archive: Path, root: Path, subset: str) -> Path:
    """Extract ``archive`` into ``root`` (leading ``LibriSpeech/`` stripped) and rename ``<subset>`` into place.

    Members that would land outside the temporary directory (absolute paths, ``..``, links pointing
    out, devices) are rejected by tarfile's ``data`` filter: a :class:`DataError` naming the archive.
    Top-level files shared by all subsets (SPEAKERS.TXT, ...) are copied into ``root`` when missing.
    """
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".extract-{subset}-", dir=root))
    try:
        try:
            with tarfile.open(archive, "r:*") as tar:
                tar.extractall(tmp, members=_stripped(tar), filter="data")
        except (tarfile.TarError, OSError, EOFError) as e:
            raise DataError(f"cannot extract {archive}: {e}") from None
        src = tmp / subset
        if not src.is_dir():
            raise DataError(f"archive {archive} has no {ARCHIVE_PREFIX}/{subset}/ directory")
        for extra in tmp.iterdir():
            if extra.is_file() and not (root / extra.name).exists():
                os.replace(extra, root / extra.name)
        os.replace(src, root / subset)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root / subset


def _stripped(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    for member in tar:
        parts = PurePosixPath(member.name).parts
        if parts and parts[0] == ARCHIVE_PREFIX:
            if len(parts) == 1:
                continue  # the LibriSpeech/ directory entry itself
            member.name = str(PurePosixPath(*parts[1:]))
        yield member


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """Inter-process lock so concurrent jobs on one machine (a local sweep) download a subset once."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no locking
        yield
        return
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def read_transcripts(path: Path) -> Dict[str, str]:
    """``{utterance id: text}`` from one LibriSpeech ``<spk>-<chap>.trans.txt`` (``ID TEXT`` per line)."""
    out: Dict[str, str] = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            utt, _, text = line.strip().partition(" ")
            if utt:
                out[utt] = text.strip()
    return out
