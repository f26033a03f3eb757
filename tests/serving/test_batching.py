"""Batched serving: stream chunks of several connections run as one batched forward (luna/serving/batching.py),
against a real server on 127.0.0.1 with real websocket clients; and the scheduler's batching on its own."""
from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest
import torch
from websockets.asyncio.client import connect

from luna.client import stream_async
from luna.serving.scheduler import Scheduler
from tests.serving.conftest import ThreadServer, speech, voiced_tokenizer

ATOL = 1e-5  # audio in [-1, 1]: a batched stream differs from the stream alone by float rounding only


@pytest.fixture(scope="module")
def voiced():
    return voiced_tokenizer()


@torch.no_grad()
def alone(tok, codes):
    """The single-stream StreamingDecoder's audio for ``codes`` [1, n, T]."""
    dec = tok.stream_decoder()
    return torch.cat([dec.push(codes), dec.flush()], -1)


def test_concurrent_streams_are_batched_exact_and_in_order(voiced):
    """Four full-duplex streams at once: the server ran batches of several, and each stream still gets the codes of
    ``tokenize`` on its own audio, every chunk answered in order, and the audio of its own stream decoded alone."""
    server = ThreadServer(voiced, threads=1, max_batch=8, batch_wait_ms=20)
    wavs = [speech(i, 1.5) for i in range(4)]
    try:
        async def main():
            return await asyncio.gather(*(stream_async(server.url, w, 16000, chunk_ms=40, audio_out=True) for w in wavs))

        results = asyncio.run(main())
        batches = dict(server.server.scheduler.batches)
    finally:
        server.close()
    assert max(batches) > 1 and sum(n * c for n, c in batches.items() if n > 1) >= 40, batches
    for w, r in zip(wavs, results):
        codes = voiced.tokenize(w, 16000)
        assert torch.equal(r.codes, codes)  # every frame, in order, none dropped (the client checks indices)
        assert len(r.latencies) == 38  # one codes reply per 40 ms chunk
        ref = alone(voiced, codes)
        assert r.audio.shape == ref.shape and torch.allclose(r.audio, ref, atol=ATOL)
    assert not torch.allclose(results[0].audio, results[1].audio[..., : results[0].audio.shape[-1]])


def test_a_closed_connection_s_queued_chunks_are_cancelled_in_a_batching_server(voiced):
    """A full-duplex client queues 3 s of audio (60 jobs of 50 ms) and leaves while another streams: the server
    runs few of the leaver's jobs (the rest are cancelled), and the other stream is still exact."""
    server = ThreadServer(voiced, threads=1, max_batch=8, batch_wait_ms=5, job_seconds=0.05)
    leaver, stayer = speech(2, 3.0), speech(3, 1.0)
    try:
        async def leave():
            async with connect(server.url) as ws:
                await ws.send(json.dumps({"type": "hello", "mode": "stream", "sample_rate": 16000, "audio": True}))
                await ws.recv()
                for i in range(3):
                    await ws.send(leaver[i * 16000:(i + 1) * 16000].numpy().tobytes())
                await asyncio.sleep(0.05)

        async def main():
            stay = asyncio.create_task(stream_async(server.url, stayer, 16000, chunk_ms=40, audio_out=True))
            await leave()
            return await stay

        r = asyncio.run(main())
        time.sleep(0.3)
        started = server.server.scheduler.started
    finally:
        server.close()
    codes = voiced.tokenize(stayer, 16000)
    assert torch.equal(r.codes, codes) and torch.allclose(r.audio, alone(voiced, codes), atol=ATOL)
    assert started < 25 + 60 + 1, started  # the stayer's 25 chunks and flush, and not all 60 of the leaver's


def run_jobs(scheduler, plan):
    """``plan``: {owner: [values]}; each owner runs its values one after another (``together`` key "k"); returns
    (the calls made: a value or a tuple of batched values, each owner's results)."""
    calls = []

    def one(v):
        calls.append(v)
        return v * 10

    def many(args):
        calls.append(tuple(a[0] for a in args))
        return [ValueError("bad") if a[0] < 0 else a[0] * 10 for a in args]

    async def owner(values):
        out = []
        for v in values:
            try:
                out.append(await scheduler.run(id(values), 0.1, one, v, together="k", many=many))
            except ValueError:
                out.append("error")
        return out

    async def main():
        return await asyncio.gather(*(owner(v) for v in plan.values()))

    results = asyncio.run(main())
    scheduler.shutdown()
    return calls, results


def test_scheduler_batches_one_job_per_owner_in_order_and_errors_stay_with_their_job():
    scheduler = Scheduler(workers=1, max_batch=3, batch_wait=0.2)
    calls, results = run_jobs(scheduler, {"A": [1, 2, 3], "B": [11, -12, 13], "C": [21, 22, 23], "D": [31, 32, 33]})
    assert results == [[10, 20, 30], [110, "error", 130], [210, 220, 230], [310, 320, 330]]
    assert all(isinstance(c, tuple) and len(c) <= 3 for c in calls[1:]), calls  # a batch never holds 4 owners
    flat = [v for c in calls for v in (c if isinstance(c, tuple) else (c,))]
    for values in ([1, 2, 3], [11, -12, 13], [21, 22, 23], [31, 32, 33]):
        assert [v for v in flat if v in values] == values  # per owner: each job once, in order
    assert max(scheduler.batches) == 3


def test_the_batch_wait_is_bounded():
    """Two connections have sent batchable jobs; now only one sends: its job waits for the other's at most
    ``batch_wait`` (then runs alone), and with ``batch_wait=0`` it runs at once."""
    for wait in (0.3, 0.0):
        scheduler = Scheduler(workers=1, max_batch=4, batch_wait=wait)
        ran = threading.Event()

        async def main():
            await asyncio.gather(*(scheduler.run(o, 0.1, lambda: None, together="k", many=lambda a: [None] * len(a))
                                   for o in ("A", "B")))  # both are members now
            t0 = time.perf_counter()
            await scheduler.run("A", 0.1, ran.set, together="k", many=lambda a: [None] * len(a))
            return time.perf_counter() - t0

        seconds = asyncio.run(main())
        scheduler.shutdown()
        assert ran.is_set() and (wait - 0.02 <= seconds < wait + 0.25), (wait, seconds)


def test_batches_keep_the_fair_order():
    """A's jobs cost 1 s and never batch; B's and C's cost 0.1 s and batch together: each batch charges both, so
    B and C still run about ten jobs for each of A's (least-served first, as without batching)."""
    scheduler = Scheduler(workers=1, max_batch=4, batch_wait=0.05)
    started = []

    async def owner(name, cost, key):
        for _ in range(30):
            await scheduler.run(name, cost, started.append, name, together=key,
                                many=lambda args: [started.append(a[0]) for a in args])

    async def main():
        await asyncio.gather(owner("A", 1.0, None), owner("B", 0.1, "k"), owner("C", 0.1, "k"))

    asyncio.run(main())
    scheduler.shutdown()
    a = [i for i, name in enumerate(started) if name == "A"][:3]  # all three have work waiting until then
    for lo, hi in zip(a, a[1:]):  # 1 s of A's per 10 x 0.1 s of B's and of C's (charging only a batch's first
        between = started[lo + 1:hi]  # job would let B and C run twice as many)
        assert 9 <= between.count("B") <= 12 and 9 <= between.count("C") <= 12, "".join(started)
    assert scheduler.batches.get(2, 0) >= 15  # B and C ran together
