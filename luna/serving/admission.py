"""Who may connect and how much audio the server holds: the serve limits, checked once, then enforced per request.

* :func:`check_limits`: the limit keys of :class:`~luna.config.ServeConfig` (a bad value is a ``ConfigError``).
* :class:`Gate`: the HTTP handshake's Origin allow-list (browsers send ``Origin``; other clients do not) and the
  optional token (``Authorization: Bearer TOKEN`` header, or ``"token"`` in the hello). The token is compared in
  constant time and never logged or echoed.
* :class:`AudioBudget`: bytes of decoded audio held across all connections (queued chunks, buffered turns).
"""
from __future__ import annotations

import hmac
import logging
import re
from http import HTTPStatus
from typing import Any, Optional, Set

from luna.errors import ConfigError

log = logging.getLogger("luna.serve")
ORIGIN = re.compile(r"https?://[^/\s]+")  # scheme://host[:port], no path, no trailing slash (as browsers send it)


def check_limits(cfg: Any) -> None:
    """Raise :class:`ConfigError` naming the first bad limit key."""

    def positive(key: str, value: Any, optional: bool = False) -> None:
        if value is None and optional:
            return
        if value is None or not float(value) > 0:
            raise ConfigError(f"{key}: must be > 0{' or null (off)' if optional else ''}, got {value}")

    positive("max_connections", cfg.max_connections)
    positive("hello_timeout", cfg.hello_timeout)
    positive("idle_timeout", cfg.idle_timeout, optional=True)
    positive("job_seconds", cfg.job_seconds)
    least = 2 * int(cfg.max_chunk_bytes)  # one chunk of s16le decodes to twice its bytes (float32)
    if int(cfg.max_buffered_bytes) < least:
        raise ConfigError(f"max_buffered_bytes: must hold one decoded chunk (>= 2 x max_chunk_bytes = {least}), "
                          f"got {cfg.max_buffered_bytes}")
    for origin in cfg.allowed_origins:
        if not isinstance(origin, str) or not ORIGIN.fullmatch(origin):
            raise ConfigError(f"allowed_origins: {origin!r} is not an origin like http://host:port (no path)")
    if cfg.token is not None and (not isinstance(cfg.token, str) or not cfg.token.strip()):
        raise ConfigError("token: must be a non-empty string or null")  # the value itself is not echoed


class Gate:
    """The Origin allow-list and the token; :meth:`check_request` is websockets' ``process_request`` hook."""

    def __init__(self, cfg: Any):
        self.origins: Set[str] = set(cfg.allowed_origins)
        self.token: Optional[str] = cfg.token or None

    def allow_own(self, host: str, port: int) -> None:
        """The server's own origin (a page it would serve at ``/``), once the port is known."""
        hosts = {host, "localhost", "127.0.0.1"} if host in ("127.0.0.1", "localhost") else {host}
        self.origins |= {f"http://{h}:{port}" for h in hosts}

    def token_ok(self, given: Any) -> bool:
        return self.token is None or (isinstance(given, str) and hmac.compare_digest(given.encode(), self.token.encode()))

    def header_token(self, request: Any) -> Optional[str]:
        value = request.headers.get("Authorization")
        return value[len("Bearer "):] if value is not None and value.startswith("Bearer ") else value

    def check_request(self, connection: Any, request: Any) -> Any:
        """Refuse the handshake of a foreign Origin (403) or a wrong token header (401); else proceed (None)."""
        origin = request.headers.get("Origin")
        if origin is not None and origin not in self.origins:
            log.warning("refused %s: origin %s is not in allowed_origins", connection.remote_address, origin[:200])
            return connection.respond(HTTPStatus.FORBIDDEN, "origin not allowed (serve config allowed_origins)\n")
        given = self.header_token(request)
        if self.token is not None and given is not None and not self.token_ok(given):
            log.warning("refused %s: wrong token", connection.remote_address)
            return connection.respond(HTTPStatus.UNAUTHORIZED, "wrong token\n")
        return None


class AudioBudget:
    """Decoded audio bytes held by all connections together, at most ``limit``."""

    def __init__(self, limit: int):
        self.limit, self.used = int(limit), 0

    def take(self, nbytes: int) -> bool:
        if self.used + nbytes > self.limit:
            return False
        self.used += nbytes
        return True

    def give(self, nbytes: int) -> None:
        self.used -= nbytes
