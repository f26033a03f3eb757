"""One bad client must not stall the rest: admission, timeouts, the audio budget, cancellation and fair scheduling,
against real ``python -m luna.serve`` subprocesses with small limits (loopback, bounded loops)."""
from __future__ import annotations

import asyncio
import json
import re
import time

import numpy as np
import pytest
import torch
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from luna.client import stream_async
from luna.errors import ServerError
from tests.paths import ROOT
from tests.serving.conftest import ENV, speech, start_server
from tests.serving.test_malformed import error_and_close

TOKEN = "s3cret-Tok3n-never-logged"
HELLO = json.dumps({"type": "hello", "mode": "turn", "sample_rate": 16000, "audio": False})
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def guarded(checkpoint, tmp_path_factory):
    """Token from LUNA_SERVE_TOKEN, one allowed origin, 3 connections, 2 s / 3 s timeouts, a 200 kB audio budget."""
    run_dir = tmp_path_factory.mktemp("guarded")
    proc, url = start_server([f"checkpoint={checkpoint}", "port=0", "threads=1", "max_connections=3", "hello_timeout=2",
                              "idle_timeout=3", "max_chunk_bytes=65536", "max_buffered_bytes=200000",
                              "allowed_origins=[http://good.example]", f"hydra.run.dir={run_dir}"],
                             ROOT, env={**ENV, "LUNA_SERVE_TOKEN": TOKEN})
    yield url, run_dir / "serve.log"
    proc.terminate()
    proc.wait(timeout=30)


async def ready(url: str, hello: str = HELLO, **connect_kw) -> dict:
    async with connect(url, **connect_kw) as ws:
        await ws.send(hello)
        return json.loads(await asyncio.wait_for(ws.recv(), 10))


def long_speech(index: int, seconds: float) -> torch.Tensor:
    """``seconds`` of speech (a bundled utterance, repeated), ``[S]`` at 16 kHz."""
    w = speech(index, seconds)
    return torch.cat([w] * int(np.ceil(seconds * 16000 / len(w))))[: int(seconds * 16000)]


def refused_status(url: str, **connect_kw) -> int:
    with pytest.raises(InvalidStatus) as e:
        asyncio.run(ready(url, **connect_kw))
    return e.value.response.status_code


def test_origin_allow_list(guarded):
    url, _ = guarded
    port = url.rsplit(":", 1)[1]
    assert refused_status(url, origin="http://evil.example", additional_headers=AUTH) == 403
    assert refused_status(url, origin="http://127.0.0.1:1", additional_headers=AUTH) == 403  # another local page
    for origin in (None, "http://good.example", f"http://127.0.0.1:{port}", f"http://localhost:{port}"):
        assert asyncio.run(ready(url, origin=origin, additional_headers=AUTH))["type"] == "ready", origin


def test_token_header_or_hello_and_never_logged(guarded):
    url, log = guarded
    error, code = asyncio.run(error_and_close(url, [HELLO]))  # no token
    assert (error["code"], code) == ("unauthorized", 1008) and TOKEN not in error["message"]
    error, code = asyncio.run(error_and_close(url, [json.dumps({**json.loads(HELLO), "token": "wrong-guess-42"})]))
    assert (error["code"], code) == ("unauthorized", 1008) and "wrong-guess-42" not in error["message"]
    assert refused_status(url, additional_headers={"Authorization": "Bearer wrong-guess-43"}) == 401
    assert asyncio.run(ready(url, additional_headers=AUTH))["type"] == "ready"
    assert asyncio.run(ready(url, json.dumps({**json.loads(HELLO), "token": TOKEN})))["type"] == "ready"
    wav = speech(0, 0.5)
    r = asyncio.run(stream_async(url, wav, 16000, mode="turn", token=TOKEN))  # luna.client sends it
    assert r.done["frames"] == r.codes.shape[-1] > 0
    time.sleep(0.3)
    text = log.read_text()
    assert "unauthorized" in text and "wrong token" in text  # refusals are logged, the values are not
    assert all(secret not in text for secret in (TOKEN, "wrong-guess-42", "wrong-guess-43"))


def test_max_connections_then_hello_timeout(guarded):
    """3 silent connections fill the server: the 4th is refused (busy, 1013); each silent one gets hello_timeout."""
    url, _ = guarded

    async def main():
        silent = [await connect(url) for _ in range(3)]
        t0 = time.perf_counter()
        error, code = await error_and_close(url, [])
        assert (error["code"], code) == ("busy", 1013), error
        outcomes = []
        for ws in silent:
            message = await asyncio.wait_for(ws.recv(), 10)  # hello_timeout=2
            await ws.wait_closed()
            outcomes.append((json.loads(message)["code"], ws.close_code))
        waited = time.perf_counter() - t0
        await asyncio.sleep(0.2)  # the server's handlers end
        return outcomes, waited, await ready(url, additional_headers=AUTH)  # room again

    outcomes, waited, again = asyncio.run(main())
    assert outcomes == [("hello_timeout", 1008)] * 3 and waited < 8
    assert again["type"] == "ready"


def test_idle_timeout(guarded):
    url, _ = guarded

    async def main():
        async with connect(url, additional_headers=AUTH) as ws:
            await ws.send(HELLO)
            assert json.loads(await ws.recv())["type"] == "ready"
            t0 = time.perf_counter()
            error = json.loads(await asyncio.wait_for(ws.recv(), 10))  # idle_timeout=3
            await ws.wait_closed()
            return error, ws.close_code, time.perf_counter() - t0

    error, code, waited = asyncio.run(main())
    assert (error["code"], code) == ("idle_timeout", 1008) and 2.5 < waited < 8, (error, waited)


def test_global_audio_budget(guarded, tok):
    """Turn A holds 96 kB; turn B's 128 kB would pass the 200 kB budget: B is refused (busy, 1013), A completes,
    and once both are gone the budget is free again."""
    url, _ = guarded
    wav = long_speech(1, 2.0)  # 32000 samples: 128 kB of float32
    chunk = 8000  # 32 kB

    async def main():
        async with connect(url, additional_headers=AUTH) as a:
            await a.send(HELLO)
            assert json.loads(await a.recv())["type"] == "ready"
            for i in range(3):
                await a.send(wav[i * chunk:(i + 1) * chunk].numpy().tobytes())
            await asyncio.sleep(1.0)  # the server has read A's chunks
            b = await error_and_close(url, [HELLO, *(wav[i * chunk:(i + 1) * chunk].numpy().tobytes() for i in range(4))],
                                      additional_headers=AUTH)
            await a.send(json.dumps({"type": "end"}))
            codes = json.loads(await a.recv())
            done = json.loads(await a.recv())
        return b, codes, done

    (error, code), codes, done = asyncio.run(main())
    assert (error["code"], code) == ("busy", 1013), error
    assert torch.equal(torch.tensor(codes["codes"])[None], tok.tokenize(wav[:3 * chunk], 16000)) and done["type"] == "done"
    r = asyncio.run(stream_async(url, wav, 16000, mode="turn", chunk_ms=500, token=TOKEN))  # all 128 kB fit again
    assert torch.equal(r.codes, tok.tokenize(wav, 16000))


@pytest.fixture(scope="module")
def fair(checkpoint, tmp_path_factory):
    """One compute worker, jobs of at most 50 ms of audio."""
    run_dir = tmp_path_factory.mktemp("fair")
    proc, url = start_server([f"checkpoint={checkpoint}", "port=0", "threads=1", "workers=1", "job_seconds=0.05",
                              "max_chunk_bytes=65536", f"hydra.run.dir={run_dir}"], ROOT)
    yield url, run_dir / "serve.log"
    proc.terminate()
    proc.wait(timeout=30)


def test_fair_share_a_real_time_stream_is_not_starved_by_big_chunks(fair, tok):
    """3 clients blast 30 chunks of 1 s each while one streams 40 ms chunks in real time: the real-time client
    waits about one 50 ms job, not behind the others' whole seconds (first come, first served: 1-3 big chunks)."""
    url, _ = fair
    heavy = [long_speech(i, 30.0) for i in range(3)]
    healthy = long_speech(5, 1.0)

    async def main():
        t0 = time.perf_counter()
        blasts = [asyncio.create_task(stream_async(url, w, 16000, chunk_ms=1000)) for w in heavy]
        await asyncio.sleep(0.3)  # the big chunks are queued
        r = await stream_async(url, healthy, 16000, chunk_ms=40, realtime=True)
        healthy_end = time.perf_counter() - t0
        big = await asyncio.gather(*blasts)
        return r, big, healthy_end, time.perf_counter() - t0

    r, big, healthy_end, heavy_end = asyncio.run(main())
    assert torch.equal(r.codes, tok.tokenize(healthy, 16000)) and [b.done["frames"] for b in big] == [1500] * 3
    per_big_chunk = heavy_end / sum(len(b.latencies) for b in big)  # worker time of one 1 s chunk, about
    p50 = float(np.percentile(r.latencies, 50))
    print(f"\nfair: real-time chunk latency p50 {p50 * 1e3:.1f} ms; one big chunk ~{per_big_chunk * 1e3:.1f} ms of work")
    assert p50 < 0.5 * per_big_chunk, (p50, per_big_chunk)
    assert heavy_end > healthy_end + 0.2, (heavy_end, healthy_end)  # the worker was saturated the whole time


def test_a_closed_connection_s_queued_work_is_dropped(fair):
    """A client queues 8 s of audio in 160 jobs and leaves: the server drops what it had not started, and the
    next client is served at once."""
    url, log = fair
    wav = long_speech(2, 8.0)

    async def main():
        async with connect(url) as ws:
            await ws.send(json.dumps({"type": "hello", "mode": "stream", "sample_rate": 16000}))
            await ws.recv()
            for i in range(8):
                await ws.send(wav[i * 16000:(i + 1) * 16000].numpy().tobytes())
        t0 = time.perf_counter()
        r = await stream_async(url, speech(3, 0.2), 16000, chunk_ms=100)
        return r, time.perf_counter() - t0

    r, seconds = asyncio.run(main())
    assert r.done["frames"] > 0 and seconds < 5
    time.sleep(0.3)
    assert "queued item(s) dropped" in log.read_text()


def test_a_long_job_delays_no_hello_and_a_gone_client_s_queued_flush_never_runs(tok, monkeypatch):
    """One worker busy with a 2 s turn (A1); A2's turn waits behind it and A2 leaves: its flush never runs.
    B's hello is answered at once (sessions start off the compute workers), and B's turn runs after A1's."""
    from luna.serving import server as server_module
    from luna.serving.session import TurnSession
    from tests.serving.conftest import ThreadServer

    flushed = []

    class SlowTurn(TurnSession):
        def flush(self):
            flushed.append(self.length)
            time.sleep(2.0)
            return super().flush()

    monkeypatch.setattr(server_module, "new_session", lambda t, h, s: SlowTurn(t, h, s))
    server = ThreadServer(tok, threads=1, workers=1)

    async def turn(seconds: float, leave: bool = False) -> float:
        async with connect(server.url) as ws:
            await ws.send(HELLO)
            await ws.recv()
            await ws.send(speech(0, seconds).numpy().tobytes())
            await ws.send(json.dumps({"type": "end"}))
            if leave:
                return 0.0
            t0 = time.perf_counter()
            while json.loads(await ws.recv())["type"] != "done":
                pass
            return time.perf_counter() - t0

    async def main():
        a1 = asyncio.create_task(turn(0.5))
        await asyncio.sleep(0.5)  # A1's flush holds the worker
        await turn(0.6, leave=True)
        t0 = time.perf_counter()
        b_ready = await ready(server.url)
        b_ready_s = time.perf_counter() - t0
        await a1
        return b_ready, b_ready_s

    try:
        b_ready, b_ready_s = asyncio.run(main())
        time.sleep(0.5)
    finally:
        server.close()
    assert b_ready["type"] == "ready" and b_ready_s < 1.0, b_ready_s
    assert flushed == [8000], flushed  # A1's 0.5 s ran; A2's 0.6 s (9600 samples) was dropped


@pytest.mark.parametrize("key, value, message", [
    ("max_connections", 0, "max_connections: must be > 0"),
    ("hello_timeout", -1.0, "hello_timeout: must be > 0"),
    ("idle_timeout", 0.0, "idle_timeout: must be > 0 or null"),
    ("job_seconds", 0.0, "job_seconds: must be > 0"),
    ("max_buffered_bytes", 1000, "max_buffered_bytes: must hold one decoded chunk"),
    ("allowed_origins", ["http://ok.example/path"], "allowed_origins: 'http://ok.example/path' is not an origin"),
    ("allowed_origins", ["*"], "allowed_origins: '*' is not an origin"),
    ("token", "  ", "token: must be a non-empty string"),
])
def test_limit_keys_are_validated(key, value, message):
    import dataclasses

    from luna.config import ServeConfig
    from luna.errors import ConfigError
    from luna.serving.admission import check_limits

    check_limits(ServeConfig(checkpoint="-"))  # the defaults pass
    with pytest.raises(ConfigError, match="^" + re.escape(message)) as e:
        check_limits(dataclasses.replace(ServeConfig(checkpoint="-"), **{key: value}))
    assert "\n" not in str(e.value)


def test_a_bad_limit_is_one_line_exit_2(checkpoint, tmp_path):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "luna.serve", f"checkpoint={checkpoint}", "max_connections=0",
                        f"hydra.run.dir={tmp_path}"], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr == "error: max_connections: must be > 0, got 0\n", r.stderr


def test_client_cli_token(guarded, tmp_path):
    """``python -m luna.client --token``: the right one tokenizes; a wrong one is one line ``error:``, exit 2."""
    import subprocess
    import sys

    import soundfile as sf

    url, _ = guarded
    wav = tmp_path / "x.wav"
    sf.write(wav, speech(0, 0.5).numpy(), 16000)
    cli = [sys.executable, "-m", "luna.client", url, str(wav), "--turn"]
    ok = subprocess.run(cli, env={**ENV, "LUNA_SERVE_TOKEN": TOKEN}, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "frames" in ok.stdout, ok.stderr[-2000:]
    bad = subprocess.run(cli + ["--token", "nope"], env=ENV, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and bad.stderr.count("\n") == 1, bad.stderr
    assert "401" in bad.stderr and "nope" not in bad.stderr
