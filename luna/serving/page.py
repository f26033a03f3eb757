"""The browser page of ``python -m luna.serve``: static files (luna/serving/static/) over plain HTTP, same port.

A GET without ``Upgrade: websocket`` is answered here (websockets' ``process_request`` may answer any request):
``/`` is the page, which streams a file or the microphone to this server and shows the codes as they arrive
(docs/streaming.md "Server (WebSocket)"). The files hold nothing secret, so they are served to anyone who can reach the
port; the WebSocket handshake that follows still passes the Origin allow-list and the token
(:class:`~luna.serving.admission.Gate`): the page's own origin is admitted, other pages are refused.
"""
from __future__ import annotations

from http import HTTPStatus
from pathlib import Path
from typing import Any, Optional

STATIC = Path(__file__).parent / "static"
FILES = {  # URL path -> (file under static/, Content-Type)
    "/": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/capture.js": ("capture.js", "text/javascript; charset=utf-8"),
}


def is_websocket(request: Any) -> bool:
    return "websocket" in request.headers.get("Upgrade", "").lower()


def respond(connection: Any, request: Any) -> Optional[Any]:
    """A plain HTTP GET → a static file (200) or 404; a WebSocket handshake → None (the handshake goes on)."""
    if is_websocket(request):
        return None
    entry = FILES.get(request.path.split("?", 1)[0])
    if entry is None:
        return connection.respond(HTTPStatus.NOT_FOUND, "not found (the page is at /)\n")
    name, content_type = entry
    response = connection.respond(HTTPStatus.OK, (STATIC / name).read_text(encoding="utf-8"))
    del response.headers["Content-Type"]
    response.headers["Content-Type"] = content_type
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"  # no framing by other pages
    return response
