"""The page at ``/`` of ``python -m luna.serve``, over plain HTTP and in a real headless Chromium (CDP).

The browser tests skip only where no ``chromium`` is installed (``.ci/run`` installs Debian's); everything
else fails. ``LUNA_SCREENSHOT=docs/img/serve_page.png`` also saves the screenshot in docs/streaming.md.
"""
from __future__ import annotations

import asyncio
import os
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from luna import audio as audio_io
from tests.serving.browser import Chromium, Page, chromium_path
from tests.serving.conftest import ThreadServer, speech, tiny_tokenizer
from tests.serving.test_limits import ready, refused_status

needs_chromium = pytest.mark.skipif(chromium_path() is None, reason="no chromium on PATH (Debian: apt-get install chromium)")


def http_get(url: str) -> "tuple[int, str, str]":
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.headers["Content-Type"], r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read().decode()


def test_the_page_is_served_over_http_and_its_origin_admitted(server_url):
    http = server_url.replace("ws://", "http://")
    status, kind, body = http_get(http + "/")
    assert (status, kind) == (200, "text/html; charset=utf-8") and '<script src="/app.js">' in body
    for path in ("/app.js", "/capture.js"):
        status, kind, body = http_get(http + path)
        assert (status, kind) == (200, "text/javascript; charset=utf-8") and len(body) > 500, path
    assert http_get(http + "/../pyproject.toml")[0] == 404 and http_get(http + "/secret")[0] == 404
    assert asyncio.run(ready(server_url, origin=http))["type"] == "ready"  # the page's own origin
    assert refused_status(server_url, origin="http://evil.example") == 403  # another page's


@pytest.fixture(scope="module")
def wav_file(tmp_path_factory) -> "tuple[Path, torch.Tensor]":
    """2 s of bundled speech as a 16 kHz PCM16 WAV, and the samples as luna reads them back."""
    path = tmp_path_factory.mktemp("page") / "speech.wav"
    sf.write(path, speech(5, 2.0).numpy(), 16000, subtype="PCM_16")
    return path, audio_io.load(path)[0]


@pytest.fixture(scope="module")
def browser(wav_file, tmp_path_factory):
    if chromium_path() is None:
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium)")
    chromium = Chromium(wav_file[0], tmp_path_factory.mktemp("chromium"))
    yield chromium
    chromium.close()


@pytest.fixture(scope="module")
def hifigan_server():
    """The tiny causal model with a random HiFi-GAN v3 (hop 160): its audio streams."""
    from luna.models.vocoder import HiFiGANGenerator, HiFiGANVocoder, hifigan_generator_config

    tok = tiny_tokenizer(causal=True)
    torch.manual_seed(0)
    tok.set_vocoder(HiFiGANVocoder(HiFiGANGenerator(hifigan_generator_config("v3", hop_length=160), 40), tok.config.mel))
    server = ThreadServer(tok, threads=1)
    yield server, tok
    server.close()


async def stream_file(browser: Chromium, url: str, wav: Path, screenshot: "Path | None" = None) -> dict:
    async with Page(browser.page_url()) as page:
        await page.open(url.replace("ws://", "http://") + "/")
        await page.choose_file("#file", wav)
        await page.js("document.getElementById('play-file').click()")
        await page.wait("luna.status === 'done' || luna.status === 'error'", timeout=120)
        result = await page.js("({status: luna.status, error: luna.error, note: luna.note, codes: luna.codes, "
                               "ready: luna.ready, done: luna.done, rate: luna.rate, latencies: luna.latencies, "
                               "frames: document.getElementById('frames').textContent})")
        result["sent"] = await page.floats("sent")
        if result["status"] == "done" and result["ready"]["audio"]:
            await page.wait("luna.heardPeak > 0", timeout=30)  # the AudioContext rendered the reconstruction
            result["heard"] = await page.js("luna.heardPeak")
            result["audio"] = await page.floats("audio")
        if screenshot is not None:
            await page.screenshot(screenshot)
        return result


@needs_chromium
def test_browser_streams_a_file_codes_only_with_griffinlim(browser, server_url, tok, wav_file, tmp_path):
    """Griffin-Lim cannot stream audio: the page falls back to codes only and says so; codes equal tokenize."""
    path, wav = wav_file
    shot = Path(os.environ.get("LUNA_SCREENSHOT") or tmp_path / "serve_page.png")
    r = asyncio.run(stream_file(browser, server_url, path, screenshot=shot))
    assert r["status"] == "done", r["error"]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and 5_000 < shot.stat().st_size < 150_000
    assert r["note"].startswith("codes only") and "unsupported_mode" in r["note"] and r["ready"]["audio"] is False
    assert r["rate"] == 16000 and len(r["latencies"]) == 50  # 2 s in 40 ms chunks, one codes reply each
    assert np.array_equal(r["sent"], wav.numpy())  # the page sent the WAV's samples, exactly
    assert torch.equal(torch.tensor(r["codes"])[None], tok.tokenize(wav, 16000))
    assert r["frames"] == str(r["done"]["frames"]) == "100"


@needs_chromium
@pytest.mark.parametrize("name, rate", [("speech.flac", 16000), ("speech.wav", 11025)])
def test_browser_decodes_other_files_at_48khz(browser, server_url, tok, tmp_path, name, rate):
    """A FLAC, or a WAV at a rate the server does not take (11025: not in sample_rates), is decoded by the browser
    at 48 kHz; codes equal tokenize of the PCM the page sent."""
    path = tmp_path / name
    sf.write(path, speech(2, 1.0).numpy(), rate)
    r = asyncio.run(stream_file(browser, server_url, path))
    assert r["status"] == "done" and r["rate"] == 48000, r["error"]
    sent = torch.from_numpy(r["sent"].copy())
    assert abs(sent.numel() - 16000 / rate * 48000) <= 48 and sent.abs().max() > 0.05
    assert torch.equal(torch.tensor(r["codes"])[None], tok.tokenize(sent, 48000))


@needs_chromium
def test_browser_streams_a_file_and_plays_the_reconstruction(browser, hifigan_server, wav_file, tmp_path):
    server, tok = hifigan_server
    path, wav = wav_file
    shot = tmp_path / "serve_page_audio.png"
    r = asyncio.run(stream_file(browser, server.url, path, screenshot=shot))
    assert r["status"] == "done" and r["error"] == "" and r["note"] == "", r
    codes = tok.tokenize(wav, 16000)
    assert np.array_equal(r["sent"], wav.numpy()) and torch.equal(torch.tensor(r["codes"])[None], codes)
    audio = torch.from_numpy(r["audio"].copy())[None]
    assert audio.shape == (1, codes.shape[-1] * 320) and r["done"]["samples"] == audio.shape[-1]
    assert torch.allclose(audio, tok.detokenize(codes), atol=1e-5)
    peak = audio.abs().max().item()  # what the AudioContext rendered is that audio (resampled to its rate: a
    assert 0.05 * peak < r["heard"] <= 1.25 * peak, (r["heard"], peak)  # resampler may overshoot a little)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and 5_000 < shot.stat().st_size < 150_000


@needs_chromium
def test_browser_streams_the_microphone(browser, hifigan_server, wav_file):
    """Chromium's fake microphone plays the WAV; the codes equal tokenize of the PCM the page sent (48 kHz)."""
    server, tok = hifigan_server

    async def main():
        async with Page(browser.page_url()) as page:
            await page.open(server.url.replace("ws://", "http://") + "/")
            await page.js("document.getElementById('want-audio').checked = false")
            await page.js("document.getElementById('mic').click()")
            await page.wait("luna.status === 'streaming' && luna.sent.length >= 40 || luna.status === 'error'", 60)
            await page.js("document.getElementById('stop').click()")
            await page.wait("luna.status === 'done' || luna.status === 'error'", 120)
            r = await page.js("({status: luna.status, error: luna.error, codes: luna.codes, rate: luna.rate})")
            r["sent"] = await page.floats("sent")
            return r

    r = asyncio.run(main())
    assert r["status"] == "done", r["error"]
    sent = torch.from_numpy(r["sent"].copy())
    assert r["rate"] == 48000 and sent.numel() >= 40 * 1920
    assert sent.abs().max() > 0.05  # the WAV's speech came through (not silence)
    assert torch.equal(torch.tensor(r["codes"])[None], tok.tokenize(sent, 48000))


@needs_chromium
def test_browser_on_a_token_server(browser, tok, wav_file):
    """The page is served without the token; its stream needs it, typed into the page (sent in the hello)."""
    server = ThreadServer(tok, threads=1, token="s3cret")

    async def attempt(token: str) -> dict:
        async with Page(browser.page_url()) as page:
            await page.open(server.url.replace("ws://", "http://") + "/")
            await page.js(f"document.getElementById('token').value = {token!r}")
            await page.choose_file("#file", wav_file[0])
            await page.js("document.getElementById('play-file').click()")
            await page.wait("luna.status === 'done' || luna.status === 'error'", timeout=120)
            return await page.js("({status: luna.status, error: luna.error, frames: luna.done && luna.done.frames})")

    try:
        wrong, right = asyncio.run(attempt("guess")), asyncio.run(attempt("s3cret"))
    finally:
        server.close()
    assert wrong["status"] == "error" and wrong["error"].startswith("unauthorized"), wrong
    assert right == {"status": "done", "error": "", "frames": 100}, right
