"""Servers for the serving tests: the real entry point as a subprocess, or a Server in a thread of this process.

The tiny model (16 kHz, hidden 32, 2 x 32 codes, Griffin-Lim) is random but its codebooks are k-means
initialised on real speech, so codes vary. It is causal (stream mode needs it). No test here skips on a missing
API: a renamed ``model.causal`` or ``SpeechTokenizer.stream_encoder`` fails the tests that use it.
"""
from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import pytest
import torch

from luna import audio as audio_io
from luna.config import ServeConfig
from luna.models.tokenizer import SpeechTokenizer
from luna.serving.server import Server
from tests.conftest import compose_train
from tests.paths import ROOT

DEV = ROOT / "luna" / "data" / "librispeech_mini" / "dev-clean"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # 2 shared cores: more threads only wait on each other


def speech(index: int = 0, seconds: float = 3.0) -> torch.Tensor:
    """A bundled dev-clean utterance at 16 kHz, ``[S]`` float32, cropped to ``seconds``."""
    files = sorted(DEV.rglob("*.flac"))
    wav, sr = audio_io.load(files[index % len(files)], frames=int(16000 * seconds))
    assert sr == 16000
    return wav


def tiny_tokenizer(causal: bool) -> SpeechTokenizer:
    overrides = ["model=tiny", "vocoder=griffinlim"] + (["model.causal=true"] if causal else [])
    torch.manual_seed(0)
    tok = SpeechTokenizer.from_config(compose_train(overrides))
    tok.train()
    with torch.no_grad():
        tok(torch.stack([speech(i, 2.0)[:32000] for i in range(4)]))  # k-means initialises the codebooks
    return tok.eval()


def voiced_tokenizer() -> SpeechTokenizer:
    """The tiny causal model with a random HiFi-GAN v3 at its hop 160: a vocoder that streams."""
    from luna.models.vocoder import HiFiGANGenerator, HiFiGANVocoder, hifigan_generator_config

    tok = tiny_tokenizer(causal=True)
    torch.manual_seed(0)
    tok.set_vocoder(HiFiGANVocoder(HiFiGANGenerator(hifigan_generator_config("v3", hop_length=160), 40), tok.config.mel))
    return tok


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("serve") / "tiny_causal.pt"
    tiny_tokenizer(causal=True).save_checkpoint(path)
    return path


@pytest.fixture(scope="session")
def tok(checkpoint) -> SpeechTokenizer:
    return SpeechTokenizer.from_checkpoint(checkpoint)


def start_server(args: List[str], cwd: Path, env: Optional[Dict[str, str]] = None) -> "tuple[subprocess.Popen, str]":
    """``python -m luna.serve ARGS`` until it prints ``serving ws://HOST:PORT``; (process, url)."""
    proc = subprocess.Popen([sys.executable, "-m", "luna.serve", *args], cwd=cwd, env=env or ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    for line in proc.stdout:  # Hydra's log shares stdout; the address line is ours
        lines.append(line)
        if line.startswith("serving ws://"):
            threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep draining
            return proc, line.split()[1]
    proc.wait(timeout=30)
    raise AssertionError(f"server exited {proc.returncode}: {''.join(lines)[-2000:]} {proc.stderr.read()[-2000:]}")


@pytest.fixture(scope="session")
def served(checkpoint, tmp_path_factory) -> Iterator["tuple[str, Path]"]:
    """The real entry point, port=0, small max_chunk_bytes (64 KiB) so the too-large test stays cheap:
    (url, its log file)."""
    run_dir = tmp_path_factory.mktemp("serve_run")
    proc, url = start_server([f"checkpoint={checkpoint}", "port=0", "threads=1", "max_chunk_bytes=65536",
                              f"hydra.run.dir={run_dir}"], ROOT)
    yield url, run_dir / "serve.log"
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="session")
def server_url(served) -> str:
    return served[0]


class ThreadServer:
    """A :class:`Server` on 127.0.0.1, port 0, in an event loop on a daemon thread of this process."""

    def __init__(self, tok: SpeechTokenizer, **overrides):
        self.server = Server(tok, dataclasses.replace(ServeConfig(checkpoint="-", port=0), **overrides))
        self.ready = threading.Event()
        self.thread = threading.Thread(target=asyncio.run, args=(self._main(),), daemon=True)
        self.thread.start()
        assert self.ready.wait(60)
        self.url = f"ws://127.0.0.1:{self.server.port}"

    async def _main(self) -> None:
        self.stop = asyncio.Event()
        self.loop = asyncio.get_running_loop()
        await self.server.serve(lambda host, port: self.ready.set(), self.stop)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(30)
