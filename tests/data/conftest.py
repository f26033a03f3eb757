"""Fixtures for the data tests (helpers in helpers.py)."""
from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Callable, Dict, List

import pytest

from .helpers import SYNTHETIC_MINI, Server, make_libri_tree


@pytest.fixture(autouse=True)
def _private_user_cache(tmp_path_factory, monkeypatch):
    """Manifests that fall back to the user cache dir go to a temp dir, never to ~/.cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg_cache")))


@pytest.fixture
def libri_tree(tmp_path) -> Path:
    root = tmp_path / "LibriSpeech"
    make_libri_tree(root)
    return root


@pytest.fixture(scope="session")
def synthetic_tarball() -> bytes:
    """An official-style archive (``LibriSpeech/<subset>/...``) of two bundled speakers, as bytes."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) as tar:
        tar.add(SYNTHETIC_MINI / "SPEAKERS.TXT", arcname="LibriSpeech/SPEAKERS.TXT")
        for spk in ("100", "101"):
            tar.add(SYNTHETIC_MINI / "train-mini" / spk, arcname=f"LibriSpeech/train-mini/{spk}")
    return buf.getvalue()


@pytest.fixture
def serve() -> Callable[[Dict[str, bytes]], Server]:
    servers: List[Server] = []

    def start(files: Dict[str, bytes]) -> Server:
        servers.append(Server(files))
        return servers[-1]

    yield start
    for s in servers:
        s.close()
