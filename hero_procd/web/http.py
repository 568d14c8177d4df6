"""The browser listener's HTTP/1.1 server on TCP: h11 framing, one task per connection.

The daemon already speaks HTTP/1.1 with h11 on its Unix socket
(hero_procd/rpc/server.py); this is the same parser on a TCP socket, with
what a browser needs and the RPC socket does not: responses of any content
type, cookies, and long-lived streamed responses (Server-Sent Events). It
stays small on purpose: routing and auth live in `hero_procd.web.app`; a web
framework (and its second event-loop integration) would have added more
code than it saved.

Bounds: at most `max_connections` connections (past that a new one takes
the place of the one that has waited longest for its next request (or for
the rest of one), or is
closed at once if every connection is busy, so that peers which connect
and send nothing, before any auth, cannot keep the dashboard from anyone),
a request head of 64 KiB, a body of `max_body` bytes, `idle_timeout_s`
without a request on a kept-alive connection, and `frame_timeout_s` for a
whole request (head and body) from its first byte, as on the RPC socket: a
peer dribbling a byte now and then cannot hold a connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from urllib.parse import parse_qsl, unquote, urlsplit

import h11

from hero_procd.caller import PEER_GONE, watch_hang_up

log = logging.getLogger(__name__)

_MAX_HEAD = 64 * 1024
_READ_SIZE = 64 * 1024


@dataclass
class Request:
    """One HTTP request, read whole (bodies are bounded)."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[bytes, bytes]
    body: bytes = b""


@dataclass
class Response:
    """A complete response."""

    status: int
    body: bytes = b""
    content_type: str = "text/html; charset=utf-8"
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


@dataclass
class Streamed:
    """A response whose body is produced over time (Server-Sent Events)."""

    body: AsyncIterator[bytes]
    content_type: str = "text/event-stream"
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


Handler = Callable[[Request], Awaitable[Response | Streamed]]


@dataclass
class _Deadline:
    """When the request being read must be complete (set at its first byte)."""

    ends_at: float | None = None


class HttpListener:
    """Accepts TCP connections on host:port and answers them with `handler`."""

    def __init__(
        self,
        handler: Handler,
        host: str,
        port: int,
        *,
        max_body: int,
        max_connections: int = 256,
        idle_timeout_s: float = 300.0,
        frame_timeout_s: float = 30.0,
    ) -> None:
        self.handler = handler
        self.host = host
        self.port = port
        self.max_body = max_body
        self.max_connections = max_connections
        self.idle_timeout_s = idle_timeout_s
        self.frame_timeout_s = frame_timeout_s
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        # Connections between requests (or reading one), with since when.
        self._waiting: dict[asyncio.StreamWriter, float] = {}

    async def start(self) -> None:
        """Bind; `port` then holds the bound port (0 asks the kernel for a free one)."""
        self._server = await asyncio.start_server(
            self._accept, self.host.strip("[]"), self.port, backlog=128
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        """Stop accepting, close every connection (event streams included)."""
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._writers) >= self.max_connections:
            if not self._waiting:
                writer.close()
                return
            oldest = min(self._waiting, key=self._waiting.__getitem__)
            del self._waiting[oldest]
            oldest.close()  # its task sees the connection end, and ends
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass
        except h11.ProtocolError as exc:
            log.debug("http protocol error", extra={"error": str(exc)})
        except Exception:
            log.exception("http connection failed")
        finally:
            self._tasks.discard(task)
            self._writers.discard(writer)
            self._waiting.pop(writer, None)
            writer.close()

    async def _next_event(
        self, conn: h11.Connection, reader: asyncio.StreamReader, request: _Deadline
    ) -> object:
        """The next h11 event: between requests a connection may idle for `idle_timeout_s`;
        once a request has begun, all of it must come within `frame_timeout_s`."""
        loop = asyncio.get_running_loop()
        while True:
            event = conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            between = conn.their_state is h11.IDLE and not conn.trailing_data[0]
            if between:
                timeout_s = self.idle_timeout_s
            else:
                if request.ends_at is None:
                    request.ends_at = loop.time() + self.frame_timeout_s
                timeout_s = request.ends_at - loop.time()
                if timeout_s <= 0:
                    raise TimeoutError
            data = await asyncio.wait_for(reader.read(_READ_SIZE), timeout_s)
            conn.receive_data(data)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=_MAX_HEAD)
        loop = asyncio.get_running_loop()
        gone = asyncio.Event()  # the peer hung up mid-call: a wait ends (caller.py)
        PEER_GONE.set(gone)  # this connection's task: every call served on it
        while True:
            request_time = _Deadline()
            self._waiting[writer] = loop.time()
            try:
                event = await self._next_event(conn, reader, request_time)
            except h11.RemoteProtocolError as exc:
                if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    await self._send(
                        conn,
                        writer,
                        Response(exc.error_status_hint, b"bad request\n", "text/plain"),
                    )
                return
            if isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                return
            if not isinstance(event, h11.Request):
                continue
            headers: dict[bytes, bytes] = {}
            for name, value in event.headers:
                headers.setdefault(name, value)
            body = bytearray()
            too_large = int(headers.get(b"content-length", b"0") or 0) > self.max_body
            while not too_large:
                part = await self._next_event(conn, reader, request_time)
                if isinstance(part, h11.Data):
                    body += part.data
                    too_large = len(body) > self.max_body
                elif isinstance(part, h11.EndOfMessage):
                    break
                else:
                    return
            if too_large:
                resp = Response(413, b"body too large\n", "text/plain")
                await self._send(conn, writer, resp, close=True)
                return
            # Read whole: from here on it is busy, never closed for a newcomer. Not before:
            # a peer sending a slow body (auth is checked only once it is read) is not busy.
            self._waiting.pop(writer, None)
            target = urlsplit(event.target.decode("latin-1"))
            request = Request(
                method=event.method.decode("ascii"),
                path=unquote(target.path) or "/",
                query=dict(parse_qsl(target.query)),
                headers=headers,
                body=bytes(body),
            )
            watch = asyncio.ensure_future(watch_hang_up(writer.get_extra_info("socket"), gone))
            try:
                answer = await self.handler(request)
            finally:
                watch.cancel()
            if isinstance(answer, Streamed):
                await self._stream(conn, reader, writer, answer)
                return
            await self._send(conn, writer, answer, head=request.method == "HEAD")
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                return
            conn.start_next_cycle()

    async def _send(
        self,
        conn: h11.Connection,
        writer: asyncio.StreamWriter,
        resp: Response,
        *,
        close: bool = False,
        head: bool = False,
    ) -> None:
        headers = [
            (b"date", formatdate(usegmt=True).encode()),
            (b"content-type", resp.content_type.encode()),
            (b"content-length", b"%d" % len(resp.body)),
            *_SECURITY_HEADERS,
            *resp.headers,
        ]
        if close:
            headers.append((b"connection", b"close"))
        out = conn.send(h11.Response(status_code=resp.status, headers=headers)) or b""
        if resp.body and not head:
            out += conn.send(h11.Data(data=resp.body)) or b""
        out += conn.send(h11.EndOfMessage()) or b""
        writer.write(out)
        await writer.drain()

    async def _stream(
        self,
        conn: h11.Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        answer: Streamed,
    ) -> None:
        """Write the stream until it ends or the peer goes away (seen at once: EOF)."""
        headers = [
            (b"date", formatdate(usegmt=True).encode()),
            (b"content-type", answer.content_type.encode()),
            (b"cache-control", b"no-store"),
            *_SECURITY_HEADERS,
            *answer.headers,
        ]
        writer.write(conn.send(h11.Response(status_code=200, headers=headers)) or b"")

        async def pump() -> None:
            async for piece in answer.body:
                writer.write(conn.send(h11.Data(data=piece)) or b"")
                await writer.drain()

        pumping = asyncio.ensure_future(pump())
        gone = asyncio.ensure_future(reader.read(_READ_SIZE))  # a browser sends nothing more
        try:
            await asyncio.wait({pumping, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (pumping, gone):
                task.cancel()
            await asyncio.gather(pumping, gone, return_exceptions=True)
            with contextlib.suppress(Exception):
                await answer.body.aclose()  # type: ignore[attr-defined]


# Sent with every answer of the listener: no framing by other sites, no sniffing,
# no token-bearing URL in a Referer, scripts and styles from this origin only.
_SECURITY_HEADERS: list[tuple[bytes, bytes]] = [
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (
        b"content-security-policy",
        b"default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        b"img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    ),
]
