"""Speak: codes in, audio out (the loop a speech LM sits in), against real servers."""
from __future__ import annotations

import asyncio
import json
import time

import numpy as np
import pytest
import torch
from websockets.asyncio.client import connect

from luna.client import speak, speak_async, speak_on, tokenize_turn
from luna.serving.protocol import encode_pcm
from tests.serving.conftest import ThreadServer, speech, voiced_tokenizer
from tests.serving.test_malformed import error_and_close

TURN = {"type": "hello", "mode": "turn", "sample_rate": 16000}


def test_turn_codes_spoken_back_equal_detokenize(server_url, tok):
    """The client against ``python -m luna.serve`` (Griffin-Lim): turn → codes → speak(codes) = detokenize(codes)."""
    codes, _ = tokenize_turn(server_url, speech(3, 1.5), 16000, audio_out=False)
    assert codes.shape[-1] > 50 and len(codes.unique()) > 4
    audio = speak(server_url, codes)
    expected = tok.detokenize(codes)
    assert audio.shape == expected.shape == (1, codes.shape[-1] * tok.samples_per_token)
    assert torch.allclose(audio, expected, atol=1e-5), (audio - expected).abs().max()
    fewer = codes[:, :1, :40]  # the first quantizer alone, a few tokens
    assert torch.allclose(speak(server_url, fewer), tok.detokenize(fewer), atol=1e-5)


def test_a_dialogue_on_one_connection(server_url, tok):
    """hello (turn) → the user's turn → its codes → speak them → the next turn, all on one connection."""
    wav = speech(6, 1.0)

    async def main():
        async with connect(server_url, max_size=None) as ws:
            await ws.send(json.dumps({**TURN, "audio": False}))
            assert json.loads(await ws.recv())["type"] == "ready"
            turns = []
            for _ in range(2):
                await ws.send(encode_pcm(wav))
                await ws.send(json.dumps({"type": "end"}))
                reply, done = json.loads(await ws.recv()), json.loads(await ws.recv())
                assert reply["type"] == "codes" and done["type"] == "done"
                codes = torch.tensor(reply["codes"])
                audio, spoken = await speak_on(ws, codes)
                turns.append((codes, audio, spoken))
            return turns

    for codes, audio, done in asyncio.run(main()):
        assert torch.equal(codes[None], tok.tokenize(wav, 16000))
        assert torch.allclose(audio, tok.detokenize(codes[None]), atol=1e-5)
        assert done == {"type": "done", "frames": codes.shape[-1], "samples": audio.shape[-1]}


@pytest.fixture(scope="module")
def hifigan_tok():
    return voiced_tokenizer()


def test_speak_with_a_streaming_vocoder_streams_jobs_and_equals_detokenize(hifigan_tok):
    """A HiFi-GAN streams: one audio frame per job of job_seconds, together = detokenize."""
    tok = hifigan_tok
    codes = tok.tokenize(speech(7, 1.0), 16000)  # [1, 2, 50]
    server = ThreadServer(tok, threads=1, job_seconds=0.25)  # 13 tokens a job: 4 jobs
    started = server.server.scheduler.started
    try:
        audio, ready = asyncio.run(speak_async(server.url, codes))
        jobs = server.server.scheduler.started - started
    finally:
        server.close()
    assert ready["mode"] == "speak" and jobs == 4
    assert torch.allclose(audio, tok.detokenize(codes), atol=1e-5), (audio - tok.detokenize(codes)).abs().max()


def speak_msg(codes) -> str:
    return json.dumps({"type": "speak", "codes": codes})


@pytest.mark.parametrize("codes", [
    [[1, 2], [3]],  # ragged
    [[1.0, 2.0]],  # floats
    [[True, False]],  # booleans
    [[0, 32]],  # = codebook_size (32)
    [[-1, 0]],
    [[[1]]],  # 3-D
    [[1], [2], [3]],  # 3 quantizers, the model has 2
    [[]],  # no tokens
    [],
    "12",
    None,
    [[2 ** 70]],
])
def test_bad_codes_are_bad_input(server_url, codes):
    error, close = asyncio.run(error_and_close(server_url, [json.dumps({"type": "hello", "mode": "speak"}), speak_msg(codes)]))
    assert (error["code"], close) == ("bad_input", 1008), error


def test_speak_out_of_place(server_url):
    speak_hello = json.dumps({"type": "hello", "mode": "speak"})
    cases = [
        ([speak_msg([[1, 2]])], "speak_before_hello"),
        ([json.dumps(TURN), encode_pcm(np.zeros(160)), speak_msg([[1, 2]])], "bad_input"),  # mid-utterance
        ([speak_hello, encode_pcm(np.zeros(160))], "unsupported_mode"),  # a speak connection sends no PCM
        ([speak_hello, json.dumps({"type": "end"})], "unsupported_mode"),
        ([speak_hello, json.dumps({"type": "speak", "codes": [[1]], "voice": "x"})], "bad_input"),
        ([speak_hello, speak_msg([[1] * 15001])], "turn_too_long"),  # 300 s at 50 tokens/s is 15000 tokens
    ]
    for messages, code in cases:
        error, close = asyncio.run(error_and_close(server_url, messages))
        assert (error["code"], close) == (code, 1008), (code, error)


def test_speak_is_charged_to_the_audio_budget(tok):
    """A speak whose reconstruction would not fit the server's audio budget is refused busy (1013)."""
    server = ThreadServer(tok, max_chunk_bytes=4096, max_buffered_bytes=65536)  # 51 tokens x 320 x 4 B do not fit
    try:
        fits = asyncio.run(speak_async(server.url, torch.zeros(1, 2, 50, dtype=torch.long)))[0]
        error, close = asyncio.run(error_and_close(server.url, [json.dumps({"type": "hello", "mode": "speak"}),
                                                                speak_msg([[0] * 60])]))
        assert server.server.budget.used == 0
    finally:
        server.close()
    assert fits.shape == (1, 50 * 320) and (error["code"], close) == ("busy", 1013)


def test_a_speak_whose_client_left_stops_and_gives_its_budget_back(hifigan_tok):
    """40 jobs of 5 tokens; the client reads one audio frame and closes: the rest never runs, nothing stays held."""
    server = ThreadServer(hifigan_tok, threads=1, job_seconds=0.1)
    started = server.server.scheduler.started

    async def leave_after_one_frame():
        async with connect(server.url, max_size=None) as ws:
            await ws.send(json.dumps({"type": "hello", "mode": "speak"}))
            assert json.loads(await ws.recv())["type"] == "ready"
            await ws.send(speak_msg(torch.randint(0, 32, (2, 200)).tolist()))
            assert isinstance(await ws.recv(), bytes)

    try:
        asyncio.run(leave_after_one_frame())
        deadline = time.monotonic() + 20
        while (server.server.connections or server.server.budget.used) and time.monotonic() < deadline:
            time.sleep(0.05)
        jobs = server.server.scheduler.started - started
        time.sleep(0.5)
        assert server.server.scheduler.started - started == jobs  # nothing more runs
    finally:
        server.close()
    assert server.server.connections == 0 and server.server.budget.used == 0
    assert 1 <= jobs < 10, jobs
