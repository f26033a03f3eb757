"""The asyncio WebSocket server: per-connection state, a bounded queue per connection, model compute off the loop.

Each connection runs two tasks. The reader validates every frame (cheap: JSON, sizes, alignment) and puts it on
the connection's bounded queue; when the queue is full the reader awaits, so the server stops reading that socket
(websockets' own receive buffer, ``max_queue`` frames, fills next, then TCP pushes back on the client): nothing
is dropped or reordered. The processor takes one item at a time and runs its model work on the shared compute
pool (``workers`` threads), so the event loop stays free for the pings and frames of every other connection,
and each connection has at most one job in flight (connections share the pool first come, first served).
A protocol violation is answered with a JSON ``error`` after the replies to everything received before it, then
that connection alone is closed (1008).
"""
from __future__ import annotations

import asyncio
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Dict, Optional

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from luna.errors import ConfigError, LunaError, one_line
from luna.serving import protocol
from luna.serving.protocol import ProtocolError
from luna.serving.session import new_session

log = logging.getLogger("luna.serve")


class Server:
    """One tokenizer behind a WebSocket; ``cfg`` is a :class:`~luna.config.ServeConfig` (or alike)."""

    def __init__(self, tok, cfg: Any):
        self.tok = tok.eval()
        self.cfg = cfg
        self.pool = ThreadPoolExecutor(max_workers=int(cfg.workers), thread_name_prefix="luna-serve")
        self.port: Optional[int] = None

    def model_info(self) -> Dict[str, Any]:
        t = self.tok
        return {
            "sample_rate": t.sample_rate, "frame_rate": t.frame_rate, "samples_per_token": t.samples_per_token,
            "num_quantizers": t.num_quantizers, "codebook_size": t.codebook_size,
        }

    async def compute(self, fn: Callable, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    async def handle(self, ws: ServerConnection) -> None:
        await Connection(self, ws).run()

    async def serve(self, on_ready: Callable[[str, int], None] = lambda host, port: None,
                    stop: Optional[asyncio.Event] = None) -> None:
        """Serve until ``stop`` is set (forever without one); ``on_ready(host, port)`` once bound."""
        cfg = self.cfg
        try:
            server = await serve(
                self.handle, cfg.host, int(cfg.port),
                max_size=2 * int(cfg.max_chunk_bytes) + 4096,  # up to 2x max_chunk_bytes: our chunk_too_large error
                max_queue=max(1, int(cfg.queue_chunks)),  # frames websockets buffers before it stops reading TCP
                ping_interval=cfg.ping_interval,
            )
        except OSError as e:
            raise ConfigError(f"port: cannot listen on {cfg.host}:{cfg.port}: {e.strerror or e}") from None
        async with server:
            self.port = server.sockets[0].getsockname()[1]
            on_ready(cfg.host, self.port)
            await (stop.wait() if stop is not None else asyncio.Future())
        self.pool.shutdown(wait=False, cancel_futures=True)


class Connection:
    """State of one client: the hello it sent, its bounded queue, its current session."""

    def __init__(self, server: Server, ws: ServerConnection):
        self.server, self.ws, self.cfg = server, ws, server.cfg
        self.queue: asyncio.Queue = asyncio.Queue(maxsize=int(self.cfg.queue_chunks))
        self.hello: Optional[protocol.Hello] = None  # set by the reader once the hello parsed

    async def run(self) -> None:
        peer = self.ws.remote_address
        log.info("connection from %s", peer)
        reader = asyncio.create_task(self.read())
        try:
            await self.process()
        except ProtocolError as e:
            log.info("closing %s: %s: %s", peer, e.code, e)
            await self.refuse(e, protocol.CLOSE_POLICY)
        except LunaError as e:  # input the model cannot take (e.g. audio the resampler refuses)
            await self.refuse(ProtocolError("bad_input", one_line(e)), protocol.CLOSE_POLICY)
        except ConnectionClosed:
            pass
        except Exception:  # a bug: keep the server, tell the client, log the traceback
            log.exception("connection %s failed", peer)
            await self.refuse(ProtocolError("internal", "the server failed on this stream (logged)"), protocol.CLOSE_INTERNAL)
        finally:
            reader.cancel()
            log.info("connection %s closed", peer)

    async def refuse(self, e: ProtocolError, code: int) -> None:
        try:
            await self.ws.send(e.to_json())
            await self.ws.close(code, e.code)
        except ConnectionClosed:
            pass

    # ---- reader: validate, enqueue (awaits when the queue is full) ----------------------------------------
    def classify(self, message: Any) -> tuple:
        if isinstance(message, bytes):
            protocol.check_chunk(message, self.hello, int(self.cfg.max_chunk_bytes))
            return "audio", protocol.decode_pcm(message, self.hello.format)  # [S] float32
        msg = protocol.parse_json(message)
        kind = msg["type"]
        if kind == "hello":
            if self.hello is not None:
                raise ProtocolError("bad_hello", "a connection sends one hello")
            self.hello = protocol.parse_hello(msg, list(self.cfg.sample_rates), self.server.tok.num_quantizers)
            return "hello", self.hello
        if kind == "end":
            if self.hello is None:
                raise ProtocolError("end_before_hello", '{"type": "end"} arrived before the hello')
            return "end", None
        raise ProtocolError("unknown_type", f"unknown message type {kind!r} (client messages: hello, end)")

    async def read(self) -> None:
        try:
            async for message in self.ws:
                try:
                    item = self.classify(message)
                except ProtocolError as e:
                    await self.queue.put(("error", e))  # after everything before it
                    return
                except Exception as e:  # a bug in validation: the processor answers `internal` and logs it
                    await self.queue.put(("error", e))
                    return
                await self.queue.put(item)  # back-pressure: a full queue stops reading this socket
        except ConnectionClosed:
            pass
        await self.queue.put(("closed", None))

    # ---- processor: one job at a time on the compute pool, replies in order ---------------------------------
    async def process(self) -> None:
        server, session, chunk, frames, samples = self.server, None, 0, 0, 0
        while True:
            kind, value = await self.queue.get()
            if kind == "closed":
                return
            if kind == "error":
                raise value
            if kind == "hello":
                session = await server.compute(new_session, server.tok, value, float(self.cfg.max_turn_seconds))
                n = value.num_quantizers or server.tok.num_quantizers
                ready = {"type": "ready", "mode": value.mode, "audio": value.audio, **server.model_info(),
                         "num_quantizers": n, "latency_ms": session.latency_ms}
                await self.ws.send(json.dumps(ready))
                continue
            if kind == "audio":
                out = await server.compute(session.push, value)
                if self.hello.mode == "stream":  # exactly one codes reply per chunk (t may be 0), in order
                    await self.ws.send(protocol.codes_message(out.index, out.codes, chunk))
                chunk += 1
            else:  # end: the rest of the codes (all of them in a turn)
                out = await server.compute(session.flush)
                await self.ws.send(protocol.codes_message(out.index, out.codes))
            frames += out.codes.shape[-1]
            if out.audio is not None and out.audio.numel():
                await self.ws.send(protocol.audio_frame(out.audio_index, out.audio))
                samples += out.audio.numel()
            if kind == "end":
                await self.ws.send(json.dumps({"type": "done", "frames": frames, "samples": samples}))
                session = await server.compute(new_session, server.tok, self.hello, float(self.cfg.max_turn_seconds))
                chunk, frames, samples = 0, 0, 0
