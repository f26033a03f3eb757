"""The manifest: one ``soundfile.info`` pass over a corpus, cached as JSON lines, plus the train/val split.

A manifest covers one subset directory (``<root>/<subset>``, or the whole root for a folder corpus with
no subsets), so ``clean100`` and ``all960`` share the ``train-clean-100`` table. The cache file starts
with a header line ``{"luna_manifest": VERSION, "fingerprint": ..., "failed": [...]}`` followed by one
row per usable file; the fingerprint hashes every relative path, size and mtime under the subset, so
any added, removed or rewritten file triggers a rebuild and nothing else does.

Files ``soundfile`` cannot open, or that hold no samples, are listed in :attr:`ManifestReport.failed`
and left out; damage that only decoding reveals (truncated FLAC, NaN samples) is handled by the dataset.
A training run lists both kinds, with their reasons, in ``<run_dir>/skipped_files.tsv``
(:func:`write_skipped`, :func:`record_skipped`).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from tqdm import tqdm

from luna.audio import AUDIO_EXTENSIONS, AudioError, info
from luna.data.librispeech import DataError, read_transcripts

log = logging.getLogger("luna.data")

MANIFEST_VERSION = 1
#: the list of unreadable files a training run writes into its run dir
SKIPPED_FILE = "skipped_files.tsv"
SKIPPED_HEADER = "path\treason\tfound\n"  # found: "indexing" (the manifest pass) or "decoding" (reading a crop)
_LIBRI_ID = re.compile(r"^(\d+)-(\d+)-(\d+)$")
_PACKAGE_DIR = Path(__file__).resolve().parent.parent  # luna/


@dataclass(frozen=True)
class Entry:
    """One usable audio file. ``path`` is absolute in memory, relative to the root in the cache file."""

    id: str
    path: str
    frames: int
    sample_rate: int
    channels: int
    speaker: str
    transcript: str
    subset: str

    @property
    def seconds(self) -> float:
        return self.frames / self.sample_rate


@dataclass
class ManifestReport:
    """Entries of one or more manifests, the files that were skipped and why, and where the caches live."""

    root: Path
    entries: List[Entry] = field(default_factory=list)
    failed: List[Tuple[str, str]] = field(default_factory=list)  # (path, reason)
    cache_paths: List[Path] = field(default_factory=list)
    rebuilt: List[str] = field(default_factory=list)  # subsets whose cache was (re)built this time

    @property
    def hours(self) -> float:
        return sum(e.seconds for e in self.entries) / 3600

    def extend(self, other: "ManifestReport") -> None:
        self.entries += other.entries
        self.failed += other.failed
        self.cache_paths += other.cache_paths
        self.rebuilt += other.rebuilt


def split_of(utt_id: str, val_fraction: float) -> str:
    """``"val"`` or ``"train"`` from a hash of the id alone: the same on every machine and for every corpus
    size, so adding files never moves an existing utterance to the other side."""
    return "val" if split_key(utt_id) < val_fraction else "train"


def split_key(utt_id: str) -> float:
    """Uniform number in [0, 1) from the first 8 bytes of ``sha1(utt_id)`` (big-endian)."""
    return int.from_bytes(hashlib.sha1(utt_id.encode("utf-8")).digest()[:8], "big") / 2.0**64


def build_manifest(
    root: Path,
    kind: str,
    subsets: Sequence[str],
    cache_dir: Optional[str] = None,
    workers: int = 8,
) -> ManifestReport:
    """Load (or build and cache) the manifests of ``subsets`` under ``root``; one warning counts the failures.

    ``kind="librispeech"``: ``<subset>/<speaker>/<chapter>/<spk>-<chap>-<utt>.flac`` with ``*.trans.txt``.
    ``kind="folder"``: any wav/flac/ogg below ``<root>/<subset>`` (the whole root when ``subsets`` is
    empty); id = relative path without extension, speaker = parent directory name, no transcript.
    """
    root = Path(root)
    cache = manifest_dir(root, cache_dir)
    report = ManifestReport(root=root)
    for subset in (list(subsets) or [""]) if kind == "folder" else list(subsets):
        report.extend(_subset_manifest(root, kind, subset, cache, workers))
    if not report.entries:
        where = ", ".join(str(root / s) for s in subsets) or str(root)
        raise DataError(f"no usable audio files ({'/'.join(AUDIO_EXTENSIONS)}) under {where}")
    if report.failed:
        path, reason = report.failed[0]
        log.warning("%d unreadable audio file(s) skipped under %s (first: %s: %s)", len(report.failed), root, path, reason)
    return report


def _skipped_line(path: str, reason: str, found: str) -> str:
    """One TSV row; tabs and line breaks inside a field become spaces."""
    return "\t".join(" ".join(str(f).replace("\t", " ").splitlines()) for f in (path, reason, found)) + "\n"


def write_skipped(path: Path, failed: Sequence[Tuple[str, str]], found: str = "indexing") -> Path:
    """``path`` (a TSV: path, reason, found) listing ``failed``, replacing any earlier list (atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(SKIPPED_HEADER + "".join(_skipped_line(p, r, found) for p, r in failed))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def record_skipped(path: Path, file: str, reason: str, found: str = "decoding") -> bool:
    """Append ``file`` to the TSV at ``path`` unless it is listed already; True if it was added.

    Safe from many processes at once (DataLoader workers of every rank): the file is locked while it is
    read and appended to. Never raises: a list that cannot be written must not stop training.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, at worst a duplicate row
        fcntl = None
    key = _skipped_line(file, "", "").split("\t", 1)[0]
    try:
        with open(path, "a+", encoding="utf-8") as f:
            if fcntl is not None:
                fcntl.flock(f, fcntl.LOCK_EX)
            f.seek(0)
            text = f.read()
            if any(line.split("\t", 1)[0] == key for line in text.splitlines()):
                return False
            f.write(("" if text else SKIPPED_HEADER) + _skipped_line(file, reason, found))
            return True
    except OSError as e:
        log.warning("could not list %s in %s: %s", file, path, e)
        return False


def manifest_dir(root: Path, cache_dir: Optional[str] = None) -> Path:
    """``cache_dir`` if set; else ``<root>/.luna_manifests``; else (read-only root, or the bundled corpus,
    which is package data) ``$XDG_CACHE_HOME/luna/manifests/<hash of root>``."""
    if cache_dir:
        path = Path(os.path.expanduser(str(cache_dir)))
        path.mkdir(parents=True, exist_ok=True)
        return path
    root = root.resolve()
    if _PACKAGE_DIR not in root.parents:
        path = root / ".luna_manifests"
        try:
            path.mkdir(parents=True, exist_ok=True)
            if os.access(path, os.W_OK):
                return path
        except OSError:
            pass
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    path = base / "luna" / "manifests" / hashlib.sha1(str(root).encode()).hexdigest()[:12]
    path.mkdir(parents=True, exist_ok=True)
    return path


def _subset_manifest(root: Path, kind: str, subset: str, cache: Path, workers: int) -> ManifestReport:
    base = root / subset if subset else root
    files, fingerprint = _scan(base, root)
    cache_path = cache / f"{kind}-{subset.replace('/', '_') or '_root'}.jsonl"
    cached = _read_cache(cache_path, fingerprint, root)
    if cached is not None:
        entries, failed = cached
        return ManifestReport(root, entries, failed, [cache_path])
    transcripts: Dict[str, str] = {}
    if kind == "librispeech":
        for rel in files:
            if rel.endswith(".trans.txt"):
                transcripts.update(read_transcripts(root / rel))
    audio = [f for f in files if f.lower().endswith(AUDIO_EXTENSIONS)]
    with ThreadPoolExecutor(max(1, workers)) as pool:  # libsndfile releases the GIL: overlap the I/O
        infos = list(tqdm(pool.map(lambda rel: _probe(root / rel), audio), total=len(audio), disable=None,
                          leave=False, desc=f"indexing {subset or root.name}", unit="file"))
    entries: List[Entry] = []
    failed: List[Tuple[str, str]] = []
    for rel, probed in zip(audio, infos):
        if isinstance(probed, str):
            failed.append((str(root / rel), probed))
            continue
        frames, sr, channels = probed
        entries.append(_entry(rel, root, subset, kind, frames, sr, channels, transcripts))
    _write_cache(cache_path, fingerprint, entries, failed, root)
    log.info("indexed %s: %d files, %.2f h (manifest %s)", base, len(entries),
             sum(e.seconds for e in entries) / 3600, cache_path)
    return ManifestReport(root, entries, failed, [cache_path], [subset])


def _scan(base: Path, root: Path) -> Tuple[List[str], str]:
    """Sorted root-relative paths of audio and transcript files under ``base``, and their fingerprint."""
    found: List[Tuple[str, int, int]] = []
    stack = [base]
    while stack:
        d = stack.pop()
        try:
            it = list(os.scandir(d))
        except FileNotFoundError:
            raise DataError(f"data directory {d} does not exist") from None
        for e in it:
            if e.name.startswith("."):
                continue  # our own caches, downloads, half-extracted trees
            if e.is_dir(follow_symlinks=True):
                stack.append(Path(e.path))
            elif e.name.lower().endswith(AUDIO_EXTENSIONS) or e.name.endswith(".trans.txt"):
                st = e.stat(follow_symlinks=True)
                found.append((Path(e.path).relative_to(root).as_posix(), st.st_size, st.st_mtime_ns))
    found.sort()
    h = hashlib.sha1(f"luna_manifest {MANIFEST_VERSION}\n".encode())
    for rel, size, mtime in found:
        h.update(f"{rel}\t{size}\t{mtime}\n".encode("utf-8", "surrogateescape"))
    return [rel for rel, _, _ in found], h.hexdigest()


def _probe(path: Path):
    """(frames, sample_rate, channels), or the reason the file is unusable."""
    try:
        if path.stat().st_size == 0:
            return "empty file (0 bytes)"
        frames, sr, channels = info(path)
    except (AudioError, OSError) as e:
        return str(e)
    if frames <= 0:
        return "no audio samples (0 frames)"
    if sr <= 0 or channels <= 0:
        return f"invalid header (sample_rate={sr}, channels={channels})"
    return frames, sr, channels


def _entry(rel: str, root: Path, subset: str, kind: str, frames: int, sr: int, channels: int,
           transcripts: Dict[str, str]) -> Entry:
    p = Path(rel)
    stem = p.name.rsplit(".", 1)[0]
    if kind == "librispeech":
        utt_id = stem
        m = _LIBRI_ID.match(stem)
        speaker = m.group(1) if m else p.parent.name
    else:
        utt_id = p.with_suffix("").as_posix()
        speaker = p.parent.name if p.parent != Path(".") else root.name
    return Entry(utt_id, str(root / rel), frames, sr, channels, speaker, transcripts.get(stem, ""), subset)


def _read_cache(path: Path, fingerprint: str, root: Path):
    try:
        with open(path, encoding="utf-8") as f:
            header = json.loads(f.readline())
            if header.get("luna_manifest") != MANIFEST_VERSION or header.get("fingerprint") != fingerprint:
                return None
            entries = [Entry(**{**r, "path": str(root / r["path"])}) for r in map(json.loads, f)]
        failed = [(str(root / p), str(reason)) for p, reason in header.get("failed", [])]
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None  # missing or damaged cache: rebuild
    if len(entries) != header.get("count"):
        return None  # cut short (e.g. disk full): rebuild
    return entries, failed


def _write_cache(path: Path, fingerprint: str, entries: Iterable[Entry], failed: List[Tuple[str, str]],
                 root: Path) -> None:
    """Atomic (temp file + rename): concurrent jobs or a crash never leave a half-written manifest."""
    rows = [{**asdict(e), "path": Path(e.path).relative_to(root).as_posix()} for e in entries]
    header = {
        "luna_manifest": MANIFEST_VERSION,
        "fingerprint": fingerprint,
        "count": len(rows),
        "failed": [[Path(p).relative_to(root).as_posix(), reason] for p, reason in failed],
    }
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(header) + "\n")
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
