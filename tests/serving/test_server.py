"""``python -m luna.serve`` as a real subprocess, talked to with the real websockets client."""
from __future__ import annotations

import asyncio
import json
import re
import socket
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from luna.client import stream_async, tokenize_turn
from luna.errors import ServerError
from tests.paths import ROOT
from tests.serving.conftest import ENV, ThreadServer, speech, tiny_tokenizer


def test_turn_codes_equal_tokenize(server_url, tok):
    wav = speech(1, 2.5)  # [S] at 16 kHz
    codes, audio = tokenize_turn(server_url, wav, 16000)
    expected = tok.tokenize(wav, 16000)  # [1, 2, T]
    assert torch.equal(codes, expected), (codes.shape, expected.shape)
    assert len(codes.unique()) > 4  # initialised codebooks: not a constant code
    assert audio.shape == (1, expected.shape[-1] * tok.samples_per_token)
    assert torch.allclose(audio, tok.detokenize(expected), atol=1e-4)


def test_turn_rate_format_and_quantizers(server_url, tok):
    wav = speech(2, 1.0)
    wav22 = torch.nn.functional.interpolate(wav[None, None], scale_factor=22050 / 16000, mode="linear")[0, 0]
    r = asyncio.run(stream_async(server_url, wav22, 22050, mode="turn", fmt="s16le", num_quantizers=1, audio_out=False))
    s16 = torch.from_numpy((wav22.clamp(-1, 32767 / 32768) * 32768).round().numpy().astype("int16")).float() / 32768
    assert torch.equal(r.codes, tok.tokenize(s16, 22050, num_quantizers=1)) and r.audio is None
    assert r.ready["num_quantizers"] == 1 and r.done == {"type": "done", "frames": r.codes.shape[-1], "samples": 0}


async def expect_error(url: str, messages, code: str) -> None:
    """Send ``messages``; the server answers one JSON error ``code`` and closes with 1008."""
    async with connect(url, max_size=None) as ws:
        for m in messages:
            await ws.send(m)
        replies = []
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                replies.append(await ws.recv())
        errors = [json.loads(r) for r in replies if isinstance(r, str) and json.loads(r)["type"] == "error"]
        assert [e["code"] for e in errors] == [code], replies
        assert closed.value.rcvd.code == 1008


def test_malformed_clients_get_an_error_and_healthy_stream_completes(server_url, tok):
    hello = json.dumps({"type": "hello", "mode": "stream", "sample_rate": 16000})
    bad = [
        (["{not json"], "bad_json"),
        ([b"\0" * 640], "binary_before_hello"),
        ([hello, b"\0" * 65540], "chunk_too_large"),  # max_chunk_bytes=65536
        ([json.dumps({"type": "hello", "mode": "turn", "sample_rate": 12345})], "unsupported_rate"),
        ([hello, json.dumps({"type": "pause"})], "unknown_type"),
        ([hello, b"\0" * 6], "bad_alignment"),
        ([json.dumps({"type": "end"})], "end_before_hello"),
    ]
    wav = speech(3, 4.0)

    async def main():
        healthy = stream_async(server_url, wav, 16000, mode="stream", chunk_ms=40, realtime=True)
        return await asyncio.gather(healthy, *(expect_error(server_url, m, code) for m, code in bad))

    result = asyncio.run(main())[0]
    assert torch.equal(result.codes, tok.tokenize(wav, 16000))
    codes, _ = tokenize_turn(server_url, wav[:8000], 16000)  # the server is still up
    assert torch.equal(codes, tok.tokenize(wav[:8000], 16000))


def test_non_causal_model_refuses_stream_mode():
    server = ThreadServer(tiny_tokenizer(causal=False), threads=1)
    try:
        with pytest.raises(ServerError, match="unsupported_mode"):
            asyncio.run(stream_async(server.url, speech(0, 0.5), 16000))
    finally:
        server.close()


def run_serve(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "luna.serve", *args], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)


def test_entry_point_user_errors(checkpoint, tmp_path):
    run_dir = f"hydra.run.dir={tmp_path}"
    r = run_serve(f"checkpoint={tmp_path / 'missing.pt'}", run_dir)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0, r.stderr
    assert r.stderr.startswith("error: ") and "missing.pt" in r.stderr
    r = run_serve(f"checkpoint={checkpoint}", "port=70000", run_dir)
    assert r.returncode == 2 and re.fullmatch(r"error: port: must be in \[0, 65535\], got 70000\n", r.stderr), r.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        r = run_serve(f"checkpoint={checkpoint}", f"port={busy.getsockname()[1]}", run_dir)
    assert r.returncode == 2 and re.fullmatch(r"error: port: cannot listen on 127\.0\.0\.1:\d+: .*\n", r.stderr), r.stderr


def test_docs_client_example_runs(server_url):
    text = (ROOT / "docs/streaming.md").read_text()  # tests/test_docs.py leaves this block to this test
    block = re.search(r"## Server \(WebSocket\).*?```python\n(.*?)```", text, re.S).group(1)
    assert len(block.strip().splitlines()) <= 10
    block = block.replace("ws://127.0.0.1:8765", server_url).replace('"luna/data/', f'"{ROOT}/luna/data/')
    r = subprocess.run([sys.executable, "-c", block], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert re.search(r"\d+ frames", r.stdout), r.stdout


def test_client_cli_user_errors_are_one_line(tmp_path):
    """``python -m luna.client``: a refused connection and an unreadable file are one line each, exit 2."""
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    wav = tmp_path / "x.wav"
    sf.write(wav, np.zeros(1600, dtype=np.float32), 16000)
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio")
    for target, named in ((wav, f"ws://127.0.0.1:{port}"), (bad, str(bad))):
        r = subprocess.run([sys.executable, "-m", "luna.client", f"ws://127.0.0.1:{port}", str(target)], env=ENV,
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and r.stderr.startswith("error: ") and named in r.stderr, r.stderr
