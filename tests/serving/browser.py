"""A real headless Chromium, driven over the Chrome DevTools Protocol with the ``websockets`` package.

``Chromium(wav, tmp)`` starts ``chromium --headless`` with a fake microphone that plays ``wav``; ``page()`` is the
CDP session of its tab: ``call(method, **params)``, ``js(expression)`` (a user gesture, so clicks may start audio),
``wait(expression)``. No browser download, no new dependency: Debian's ``chromium`` package (``.ci/run``).
"""
from __future__ import annotations

import asyncio
import base64
import itertools
import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any, Optional

from websockets.asyncio.client import connect

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--remote-debugging-port=0", "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
         "--autoplay-policy=no-user-gesture-required", "--window-size=820,620"]


def chromium_path() -> Optional[str]:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Chromium:
    def __init__(self, wav: Path, tmp: Path):
        profile = tmp / "profile"
        profile.mkdir()
        self.proc = subprocess.Popen(
            [chromium_path(), *FLAGS, f"--use-file-for-fake-audio-capture={wav}", f"--user-data-dir={profile}",
             "about:blank"], stdout=subprocess.DEVNULL, stderr=open(tmp / "chromium.log", "w"))
        port_file, deadline = profile / "DevToolsActivePort", time.monotonic() + 60
        while not (port_file.is_file() and len(port_file.read_text().split()) == 2):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"chromium did not start (exit {self.proc.poll()}): {(tmp / 'chromium.log').read_text()[-2000:]}")
            time.sleep(0.1)
        self.port = int(port_file.read_text().split()[0])

    def page_url(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/list", timeout=10) as r:
            return next(t["webSocketDebuggerUrl"] for t in json.load(r) if t["type"] == "page")

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Page:
    """One CDP session (use as ``async with Page(url) as page``)."""

    def __init__(self, url: str):
        self.url, self.ids = url, itertools.count(1)

    async def __aenter__(self) -> "Page":
        self.ws = await connect(self.url, max_size=None)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.ws.close()

    async def call(self, method: str, **params: Any) -> dict:
        ident = next(self.ids)
        await self.ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:  # events (no id) and nothing else arrive meanwhile: one call at a time
            msg = json.loads(await asyncio.wait_for(self.ws.recv(), 60))
            if msg.get("id") == ident:
                if "error" in msg:
                    raise AssertionError(f"{method}: {msg['error']}")
                return msg["result"]

    async def js(self, expression: str) -> Any:
        r = await self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True,
                            userGesture=True)
        if "exceptionDetails" in r:
            raise AssertionError(f"{expression}: {r['exceptionDetails']}")
        return r["result"].get("value")

    async def wait(self, expression: str, timeout: float = 30.0) -> Any:
        deadline = time.monotonic() + timeout
        while not (value := await self.js(expression)):
            if time.monotonic() > deadline:
                state = await self.js("JSON.stringify({status: luna.status, error: luna.error, note: luna.note})")
                raise AssertionError(f"timed out waiting for {expression}: {state}")
            await asyncio.sleep(0.1)
        return value

    async def open(self, url: str) -> None:
        await self.call("Page.enable")
        await self.call("Emulation.setDeviceMetricsOverride", width=800, height=410, deviceScaleFactor=1, mobile=False)
        await self.call("Page.navigate", url=url)
        await self.wait("document.readyState === 'complete' && typeof window.luna === 'object'")

    async def choose_file(self, selector: str, path: Path) -> None:
        root = (await self.call("DOM.getDocument"))["root"]["nodeId"]
        node = (await self.call("DOM.querySelector", nodeId=root, selector=selector))["nodeId"]
        await self.call("DOM.setFileInputFiles", nodeId=node, files=[str(path)])

    async def floats(self, name: str) -> "Any":
        import numpy as np

        return np.frombuffer(base64.b64decode(await self.js(f"luna.dump({name!r})")), dtype="<f4")

    async def screenshot(self, path: Path) -> None:
        path.write_bytes(base64.b64decode((await self.call("Page.captureScreenshot", format="png"))["data"]))
