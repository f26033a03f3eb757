"""The asyncio WebSocket server: admission, per-connection reader and processor, model compute off the loop.

Admission (luna/serving/admission.py): the handshake is refused for a foreign ``Origin`` (403) or a wrong token
header (401); past ``max_connections`` a connection gets the JSON error ``busy`` and close 1013.
Each connection then runs two tasks. The reader validates every frame (cheap: JSON, sizes, alignment, finite
samples), charges decoded audio to the global :class:`~luna.serving.admission.AudioBudget` and puts it on the
connection's bounded queue; when the queue is full the reader awaits, so the server stops reading that socket
(websockets' own buffer, ``max_queue`` frames, fills next, then TCP pushes back on the client). It also enforces
``hello_timeout`` and ``idle_timeout``. The processor takes one item at a time; model work goes through the
shared :class:`~luna.serving.scheduler.Scheduler` (least-served connection first, chunks cut into jobs of
``job_seconds``; stream chunks of several connections run as one batch: luna/serving/batching.py), so the
event loop stays free and each connection has at most one job in flight. When the
client goes, its queued work is dropped. A violation is answered with a JSON ``error`` after the replies to
everything received before it, then that connection alone is closed. A ``speak`` request (codes in, audio out)
runs through the same scheduler, one job of ``job_seconds`` of audio at a time when the vocoder streams.
A plain HTTP GET (no WebSocket upgrade) is answered with the page (luna/serving/page.py).
"""
from __future__ import annotations

import asyncio
import json
import logging
import math
from typing import Any, Callable, Dict, Optional

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from luna.errors import ConfigError, LunaError, one_line
from luna.serving import page, protocol
from luna.serving.admission import AudioBudget, Gate, check_limits
from luna.serving.batching import push_one, push_streams, together
from luna.serving.protocol import ProtocolError
from luna.serving.scheduler import Scheduler
from luna.serving.session import Speech, concat, new_session

log = logging.getLogger("luna.serve")


class Server:
    """One tokenizer behind a WebSocket; ``cfg`` is a :class:`~luna.config.ServeConfig` (or alike)."""

    def __init__(self, tok, cfg: Any):
        check_limits(cfg)
        self.tok = tok.eval()
        self.cfg = cfg
        self.scheduler = Scheduler(int(cfg.workers), int(cfg.max_batch), float(cfg.batch_wait_ms) / 1000)
        self.gate = Gate(cfg)
        self.budget = AudioBudget(int(cfg.max_buffered_bytes))
        self.connections = 0
        self.port: Optional[int] = None

    def model_info(self) -> Dict[str, Any]:
        t = self.tok
        return {
            "sample_rate": t.sample_rate, "frame_rate": t.frame_rate, "samples_per_token": t.samples_per_token,
            "num_quantizers": t.num_quantizers, "codebook_size": t.codebook_size,
        }

    async def handle(self, ws: ServerConnection) -> None:
        limit = int(self.cfg.max_connections)
        if self.connections >= limit:
            log.warning("refused %s: busy (max_connections=%d)", ws.remote_address, limit)
            await refuse(ws, ProtocolError("busy", f"the server is full (max_connections={limit}); try again later",
                                           protocol.CLOSE_TRY_AGAIN))
            return
        self.connections += 1
        try:
            await Connection(self, ws).run()
        finally:
            self.connections -= 1

    def answer_http(self, connection: Any, request: Any) -> Any:
        """A plain GET: the page (luna/serving/page.py); a WebSocket handshake: Origin and token (the Gate)."""
        return page.respond(connection, request) or self.gate.check_request(connection, request)

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
                process_request=self.answer_http,
            )
        except OSError as e:
            raise ConfigError(f"port: cannot listen on {cfg.host}:{cfg.port}: {e.strerror or e}") from None
        async with server:
            self.port = server.sockets[0].getsockname()[1]
            self.gate.allow_own(cfg.host, self.port)
            on_ready(cfg.host, self.port)
            try:
                await (stop.wait() if stop is not None else asyncio.Future())
            finally:
                batches = {str(k): v for k, v in sorted(self.scheduler.batches.items())}
                log.info("compute: %d jobs, batches by size %s", self.scheduler.started, json.dumps(batches))
        self.scheduler.shutdown()


async def refuse(ws: ServerConnection, e: ProtocolError) -> None:
    """The JSON error, then the close (1008, 1011 or 1013)."""
    try:
        await ws.send(e.to_json())
        await ws.close(e.close, e.code)
    except ConnectionClosed:
        pass


class Connection:
    """State of one client: the hello it sent, its bounded queue, its current session, the audio it holds."""

    def __init__(self, server: Server, ws: ServerConnection):
        self.server, self.ws, self.cfg = server, ws, server.cfg
        self.queue: asyncio.Queue = asyncio.Queue(maxsize=int(self.cfg.queue_chunks))
        self.hello: Optional[protocol.Hello] = None  # set by the reader once the hello parsed
        self.authorized = server.gate.token_ok(server.gate.header_token(ws.request)) if ws.request else False
        self.held = 0  # decoded audio bytes charged to the server's budget
        self.working = False  # the processor is on an item (the client waits for us: not idle)
        self.gone = False  # the client closed: queued work is dropped
        self.open_utterance = False  # PCM arrived since the last end (the reader's view: a speak must wait)

    async def run(self) -> None:
        peer = self.ws.remote_address
        log.info("connection from %s", peer)
        reader = asyncio.create_task(self.read())
        self.work = asyncio.create_task(self.process_and_answer())
        try:
            await asyncio.wait({self.work})  # cancelled by the reader when the client goes
        finally:
            reader.cancel()
            self.work.cancel()
            dropped = self.queue.qsize() + self.server.scheduler.forget(self)
            self.server.budget.give(self.held)
            log.info("connection %s closed%s", peer, f" ({dropped} queued item(s) dropped)" if self.gone and dropped else "")

    async def process_and_answer(self) -> None:
        peer = self.ws.remote_address
        try:
            await self.process()
        except ProtocolError as e:
            log.info("closing %s: %s: %s", peer, e.code, e)
            await refuse(self.ws, e)
        except LunaError as e:  # input the model cannot take (e.g. audio the resampler refuses)
            log.info("closing %s: bad_input: %s", peer, one_line(e))
            await refuse(self.ws, ProtocolError("bad_input", one_line(e)))
        except ConnectionClosed:
            pass
        except Exception:  # a bug: keep the server, tell the client, log the traceback
            log.exception("connection %s failed", peer)
            await refuse(self.ws, ProtocolError("internal", "the server failed on this stream (logged)", protocol.CLOSE_INTERNAL))

    # ---- reader: validate, charge, enqueue (awaits when the queue is full) --------------------------------
    def classify(self, message: Any) -> tuple:
        if isinstance(message, bytes):
            protocol.check_chunk(message, self.hello, int(self.cfg.max_chunk_bytes))
            pcm = protocol.decode_pcm(message, self.hello.format)  # [S] float32
            self.charge(pcm.numel() * pcm.element_size())
            self.open_utterance = True
            return "audio", pcm
        msg = protocol.parse_json(message)
        kind = msg["type"]
        if kind == "hello":
            if self.hello is not None:
                raise ProtocolError("bad_hello", "a connection sends one hello")
            hello = protocol.parse_hello(msg, list(self.cfg.sample_rates), self.server.tok.num_quantizers)
            if not (self.authorized or self.server.gate.token_ok(msg.get("token"))):
                raise ProtocolError("unauthorized", "this server needs its token: header Authorization: Bearer TOKEN "
                                    'or "token" in the hello')
            self.hello = hello
            return "hello", hello
        if kind == "end":
            if self.hello is None:
                raise ProtocolError("end_before_hello", '{"type": "end"} arrived before the hello')
            if self.hello.mode == "speak":
                raise ProtocolError("unsupported_mode", "a speak connection sends speak messages, not utterances")
            self.open_utterance = False
            return "end", None
        if kind == "speak":
            return "speak", self.speech(msg)
        raise ProtocolError("unknown_type", f"unknown message type {kind!r} (client messages: hello, end, speak)")

    def speech(self, msg: Dict[str, Any]) -> Any:
        """A speak request's codes ``[n, T]`` (valid, between utterances, its audio charged to the budget)."""
        if self.hello is None:
            raise ProtocolError("speak_before_hello", '{"type": "speak"} arrived before the hello')
        if self.open_utterance:
            raise ProtocolError("bad_input", 'speak comes between utterances: send {"type": "end"} first')
        tok = self.server.tok
        codes = protocol.parse_codes(msg, tok.num_quantizers, tok.codebook_size)  # [n, T]
        seconds = codes.shape[-1] * tok.samples_per_token / tok.sample_rate
        if seconds > float(self.cfg.max_turn_seconds):
            raise ProtocolError("turn_too_long", f"{codes.shape[-1]} tokens are {seconds:.1f} s of audio "
                                f"(max_turn_seconds={self.cfg.max_turn_seconds})")
        self.charge(codes.shape[-1] * tok.samples_per_token * 4)  # the float32 reconstruction it will hold
        return codes

    def charge(self, nbytes: int) -> None:
        budget = self.server.budget
        if not budget.take(nbytes):
            raise ProtocolError("busy", f"the server holds too much audio (max_buffered_bytes={budget.limit}); "
                                "try again later", protocol.CLOSE_TRY_AGAIN)
        self.held += nbytes

    def release(self, nbytes: int) -> None:
        nbytes = min(nbytes, self.held)
        self.held -= nbytes
        self.server.budget.give(nbytes)

    async def receive(self) -> Any:
        """The next frame; a ``*_timeout`` ProtocolError when the client stays silent while nothing is pending."""
        while True:
            limit = self.cfg.hello_timeout if self.hello is None else self.cfg.idle_timeout
            try:  # cancelling recv loses nothing (websockets' asyncio API)
                return await asyncio.wait_for(self.ws.recv(), None if limit is None else float(limit))
            except asyncio.TimeoutError:
                if self.hello is None:
                    raise ProtocolError("hello_timeout", f"no hello within hello_timeout={limit} s") from None
                if not (self.working or self.queue.qsize()):
                    raise ProtocolError("idle_timeout", f"nothing received for idle_timeout={limit} s") from None

    async def read(self) -> None:
        try:
            while True:
                try:
                    item = self.classify(await self.receive())
                except (ProtocolError, LunaError) as e:
                    await self.queue.put(("error", e))  # after everything before it
                    return
                except ConnectionClosed:
                    raise
                except Exception as e:  # a bug in validation: the processor answers `internal` and logs it
                    await self.queue.put(("error", e))
                    return
                await self.queue.put(item)  # back-pressure: a full queue stops reading this socket
        except ConnectionClosed:
            self.gone = True
            self.work.cancel()  # the client is gone: drop its queued work (a job already running ends unused)

    # ---- processor: one job at a time through the scheduler, replies in order -------------------------------
    async def compute(self, seconds: float, fn: Callable, *args: Any, **batch: Any) -> Any:
        return await self.server.scheduler.run(self, seconds, fn, *args, **batch)

    async def push(self, session: Any, pcm: Any) -> Any:
        """One chunk: a turn only buffers it; a stream pushes it in jobs of at most ``job_seconds``."""
        if self.hello.mode == "turn":
            return session.push(pcm)  # no model work: append (and the max_turn_seconds check)
        rate = self.hello.sample_rate
        step = max(1, math.ceil(float(self.cfg.job_seconds) * rate))
        pieces = [pcm[i:i + step] for i in range(0, max(1, pcm.numel()), step)]
        return concat([await self.compute(p.numel() / rate, push_one, session, p, together=together(self.hello, p),
                                          many=push_streams) for p in pieces])  # batched with other connections'

    async def start(self, hello: protocol.Hello) -> Any:
        """A new session: no model work, so not behind other connections' jobs."""
        return await asyncio.to_thread(new_session, self.server.tok, hello, float(self.cfg.max_turn_seconds))

    async def speak(self, codes: Any) -> None:
        """Codes ``[n, T]`` → audio frames (at most one job of audio each, as each job ends), then ``done``."""
        tok = self.server.tok
        try:
            speech = await asyncio.to_thread(Speech, tok, codes, math.ceil(float(self.cfg.job_seconds) * tok.frame_rate))
            step, samples = speech.frames * tok.samples_per_token, 0
            for seconds, fn in speech.jobs():
                audio = await self.compute(seconds, fn)
                for a in range(0, audio.numel(), step):
                    await self.ws.send(protocol.audio_frame(samples + a, audio[a:a + step]))
                samples += audio.numel()
        finally:
            self.release(codes.shape[-1] * tok.samples_per_token * 4)
        await self.ws.send(json.dumps({"type": "done", "frames": codes.shape[-1], "samples": samples}))

    async def process(self) -> None:
        session, chunk, frames, samples = None, 0, 0, 0
        while True:
            kind, value = await self.queue.get()
            if kind == "error":
                raise value
            self.working = True
            if kind == "hello":
                session = await self.start(value)
                n = value.num_quantizers or self.server.tok.num_quantizers
                ready = {"type": "ready", "mode": value.mode, "audio": value.audio, **self.server.model_info(),
                         "num_quantizers": n, "latency_ms": session.latency_ms}
                await self.ws.send(json.dumps(ready))
                self.working = False
                continue
            if kind == "speak":
                await self.speak(value)
                self.working = False
                continue
            if kind == "audio":
                out = await self.push(session, value)
                if self.hello.mode == "stream":  # exactly one codes reply per chunk (t may be 0), in order
                    self.release(value.numel() * value.element_size())
                    await self.ws.send(protocol.codes_message(out.index, out.codes, chunk))
                chunk += 1
            else:  # end: the rest of the codes (all of them in a turn)
                length = getattr(session, "length", 0)  # a turn: its whole utterance (float32 samples held)
                out = await self.compute(length / self.hello.sample_rate, session.flush)
                self.release(4 * length)
                await self.ws.send(protocol.codes_message(out.index, out.codes))
            frames += out.codes.shape[-1]
            if out.audio is not None and out.audio.numel():
                await self.ws.send(protocol.audio_frame(out.audio_index, out.audio))
                samples += out.audio.numel()
            if kind == "end":
                await self.ws.send(json.dumps({"type": "done", "frames": frames, "samples": samples}))
                session = await self.start(self.hello)
                chunk, frames, samples = 0, 0, 0
            self.working = False
