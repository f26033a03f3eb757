"""Malformed input against the real ``python -m luna.serve``: every bad hello (any field, any JSON type) and
non-finite PCM get one JSON error and a close, within seconds, and the server logs it."""
from __future__ import annotations

import asyncio
import json
import time

import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

HELLO = {"type": "hello", "mode": "turn", "sample_rate": 16000}
WRONG = [None, True, 2.5, "x", [], ["f32le"], {"k": 1}]  # every JSON type; lists and dicts are unhashable


async def error_and_close(url: str, messages, timeout: float = 10.0, **connect_kw) -> "tuple[dict, int]":
    """Send ``messages``; (the one JSON error the server answers, its close code). Fails instead of hanging."""
    async with connect(url, max_size=None, **connect_kw) as ws:
        for m in messages:
            await ws.send(m)
        replies = []
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                replies.append(await asyncio.wait_for(ws.recv(), timeout))
    errors = [json.loads(r) for r in replies if isinstance(r, str) and json.loads(r)["type"] == "error"]
    assert len(errors) == 1, replies
    return errors[0], closed.value.rcvd.code


def test_every_malformed_hello_gets_an_error_and_a_close_and_is_logged(served):
    url, log = served
    cases = [{**HELLO, field: value} for field in ("mode", "sample_rate", "format", "audio", "num_quantizers")
             for value in WRONG if not (field == "audio" and value is True) and not (field == "num_quantizers" and value is None)]
    cases += [{"type": "hello"}, {"type": "hello", "mode": "turn"}, {**HELLO, "token": ["a"]}]

    async def main():
        return await asyncio.gather(*(error_and_close(url, [json.dumps(c)]) for c in cases))

    t0 = time.perf_counter()
    results = asyncio.run(main())
    assert time.perf_counter() - t0 < 30
    for case, (error, code) in zip(cases, results):
        assert error["code"] in ("bad_hello", "unsupported_rate", "unsupported_format"), (case, error)
        assert code == 1008, case
    time.sleep(0.5)  # the log is written by the server process
    text = log.read_text()
    assert text.count("bad_hello") + text.count("unsupported_format") + text.count("unsupported_rate") >= len(cases), text[-3000:]


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_pcm_is_refused_with_bad_input(server_url, bad):
    x = np.zeros(1600, dtype="<f4")
    x[100] = bad
    error, code = asyncio.run(error_and_close(server_url, [json.dumps({**HELLO, "mode": "stream"}), x.tobytes()]))
    assert error["code"] == "bad_input" and code == 1008, error
