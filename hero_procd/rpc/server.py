"""The Unix socket: peer check, and two framings told apart by a connection's first bytes.

- newline-delimited JSON-RPC 2.0 (`nc -U`, `socat`, the client): one JSON text a line;
- HTTP/1.1 through h11 (`curl --unix-socket`): `POST /rpc`, `GET /openrpc.json`, `GET /health`.

Each connection is served by one task that answers its frames in order;
parallelism comes from connections. Reading pauses while a connection has
more than a few frames waiting, so a flooding peer cannot grow the daemon.

Bounds (README "Limits"): at most `max_connections` connections (one more is
told it is refused, in its own framing, and closed); a connection with no call
in flight and nothing received for `idle_timeout_s` is closed, and so is one
whose frame (an NDJSON line, an HTTP request with its body) is not complete
`frame_timeout_s` after its first byte. Batches are bounded in the dispatcher.

HTTP follows RFC 9110/9112 where it concerns a JSON-RPC endpoint: h11 does the
parsing; we add what h11 leaves to the application (routing, 405 with Allow,
501 for unknown methods, HEAD, Date, Host syntax, absolute-form targets,
refusing Content-Length with Transfer-Encoding, ignoring a leading empty line).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import grp
import logging
import os
import re
import resource
import socket
import struct
import time
from collections import deque
from collections.abc import AsyncIterator
from email.utils import formatdate
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import h11
import orjson

from hero_procd.caller import PEER_GONE, hung_up
from hero_procd.errors import BUSY, INVALID_REQUEST
from hero_procd.metrics import CONTENT_TYPE as _METRICS_TYPE
from hero_procd.rpc.dispatch import Dispatcher, error_response

log = logging.getLogger(__name__)

_CRED = struct.Struct("3i")
METRICS_CTYPE = _METRICS_TYPE.encode()
_MAX_QUEUED_FRAMES = 32
_HTTP_METHOD_START = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_MAX_INCOMPLETE_HEAD = 64 * 1024
# After a frame or answer this large, glibc is asked to give freed heap back to
# the OS (malloc_trim), at most once per _TRIM_DELAY_S: without it RSS stayed
# ~35 MB above rest after large batches (freed, but kept in malloc's arenas).
_TRIM_AFTER_BYTES = 1 << 20
_TRIM_DELAY_S = 1.0
_TRIM_AFTER_CONNECTIONS = 64
# Connections over the bound wait this long at most for their first bytes (to be
# told why, in their framing); past this many of them at once, they are just closed.
_REFUSE_WAIT_S = 5.0
_MAX_REFUSING = 64
# Methods RFC 9110 (and RFC 5789, PATCH) define: others are 501, these 405 where not allowed.
_KNOWN_METHODS = frozenset(
    (b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"CONNECT", b"OPTIONS", b"TRACE", b"PATCH")
)
_ROUTES: dict[bytes, tuple[bytes, ...]] = {
    b"/rpc": (b"POST", b"OPTIONS"),
    b"/": (b"POST", b"OPTIONS"),
    b"/openrpc.json": (b"GET", b"HEAD", b"OPTIONS"),
    b"/health": (b"GET", b"HEAD", b"OPTIONS"),
    b"/metrics": (b"GET", b"HEAD", b"OPTIONS"),
}
_PATHS = ["/rpc", "/openrpc.json", "/health", "/metrics"]
# Host = uri-host [ ":" port ] (RFC 9110 7.2, RFC 3986 3.2.2): a reg-name or IPv4
# address, or an IP literal in brackets; empty is allowed (RFC 9112 3.2).
_HOST_RE = re.compile(
    rb"(?:\[[0-9A-Fa-f:.]+\]|\[v[0-9A-Fa-f]+\.[A-Za-z0-9._~!$&'()*+,;=:-]+\]"
    rb"|(?:[A-Za-z0-9._~!$&'()*+,;=-]|%[0-9A-Fa-f]{2})*)(?::[0-9]*)?"
)


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a Unix socket (SO_PEERCRED)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CRED.size)
    pid, uid, gid = _CRED.unpack(raw)
    return pid, uid, gid


def _supplementary_groups(pid: int) -> set[int]:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Groups:"):
                    return {int(g) for g in line.split()[1:]}
    except OSError:
        pass
    return set()


def _new_h11() -> h11.Connection:
    return h11.Connection(h11.SERVER, max_incomplete_event_size=_MAX_INCOMPLETE_HEAD)


class RpcServer:
    """Listens on the socket and serves connections until closed."""

    def __init__(
        self, dispatcher: Dispatcher, socket_path: Path, max_frame: int, group: str | None = None
    ) -> None:
        self.dispatcher = dispatcher
        self.socket_path = socket_path
        self.max_frame = max_frame
        self.group_gid = grp.getgrnam(group).gr_gid if group else None
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[Connection] = set()
        self._refusing: set[Connection] = set()
        self._uid = os.getuid()
        config = dispatcher.app.config
        self.max_connections = config.max_connections
        self.idle_timeout_s = config.idle_timeout_s
        self.frame_timeout_s = config.frame_timeout_s
        self._sweeper: asyncio.Task[None] | None = None
        self._trim: asyncio.TimerHandle | None = None
        self._peak_connections = 0  # since memory was last given back

    def give_back_memory(self) -> None:
        """Give freed memory back to the OS soon (once for a burst of large frames or closes)."""
        if _MALLOC_TRIM is None or self._trim is not None:
            return

        def trim() -> None:
            self._trim = None
            _MALLOC_TRIM(0)

        self._trim = asyncio.get_running_loop().call_later(_TRIM_DELAY_S, trim)

    async def start(self) -> None:
        """Bind the socket with mode 0600 (0660 and the group, if one is configured)."""
        self.socket_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        loop = asyncio.get_running_loop()
        # The umask makes the socket private from the moment it exists: no chmod race.
        old = os.umask(0o117 if self.group_gid is not None else 0o177)
        try:
            self._server = await loop.create_unix_server(
                lambda: Connection(self), path=str(self.socket_path), backlog=1024
            )
        finally:
            os.umask(old)
        if self.group_gid is not None:
            os.chown(self.socket_path, -1, self.group_gid)
            os.chmod(self.socket_path, 0o660)
        _raise_fd_limit(self.max_connections + _MAX_REFUSING + 256)
        self._sweeper = loop.create_task(self._sweep())

    async def _sweep(self) -> None:
        """Close idle connections and frames that take too long, a few times per timeout."""
        tick = min(max(min(self.idle_timeout_s, self.frame_timeout_s) / 4, 0.05), 1.0)
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            for conn in list(self._connections) + list(self._refusing):
                conn.check_deadlines(now)

    async def authorize(self, pid: int, uid: int, gid: int) -> bool:
        """True if the peer may talk to the daemon: our uid, root, or (if set) the socket group."""
        if uid in (self._uid, 0):
            return True
        if self.group_gid is None:
            return False
        if gid == self.group_gid:
            return True
        return self.group_gid in await asyncio.to_thread(_supplementary_groups, pid)

    async def close(self, grace_s: float) -> None:
        """Stop accepting, let in-flight requests finish (up to `grace_s`), close connections."""
        if self._server is not None:
            self._server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._trim is not None:
            self._trim.cancel()
        for conn in list(self._refusing):
            conn.close()
        conns = list(self._connections)
        for conn in conns:
            conn.stop_reading()
        waits = [c.idle.wait() for c in conns]
        if waits:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*waits), grace_s)
        for conn in conns:
            conn.close()
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()


def _raise_fd_limit(wanted: int) -> None:
    """Lift the soft RLIMIT_NOFILE towards `wanted` (the hard limit caps it).

    The usual soft limit of 1024 would make the connection bound unreachable:
    accept() would fail with EMFILE before `max_connections` is hit.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def _find_malloc_trim() -> Any:
    try:
        return ctypes.CDLL(None).malloc_trim  # glibc; absent on musl and elsewhere
    except (OSError, AttributeError):
        return None


_MALLOC_TRIM = _find_malloc_trim()


def _http_date() -> str:
    return formatdate(usegmt=True)


class Connection(asyncio.Protocol):
    """One client connection, in whichever framing its first bytes announce."""

    def __init__(self, server: RpcServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.mode: str | None = None  # "json" or "http", decided by the first bytes
        self.buffer = bytearray()
        self.frames: deque[bytes] = deque()
        self.http: h11.Connection | None = None
        self.wakeup = asyncio.Event()
        self.writable = asyncio.Event()
        self.writable.set()
        self.idle = asyncio.Event()
        self.idle.set()
        self.closed = False
        self.reading_paused = False
        self.stopping = False
        self.task: asyncio.Task[None] | None = None
        self.refused = False  # over max_connections: told so, then closed
        self.opened = time.monotonic()
        self.last_active = self.opened
        self.frame_started: float | None = None  # first byte of a frame not yet complete
        self.http_method: bytes | None = None  # of the request being answered
        self.gone = asyncio.Event()  # set when the connection is lost: waits end (caller.py)

    # -- asyncio.Protocol -------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport
        server = self.server
        if len(server._connections) >= server.max_connections:
            if len(server._refusing) >= _MAX_REFUSING:
                transport.close()  # a flood: no word, just the close
                return
            self.refused = True
            server._refusing.add(self)
        else:
            server._connections.add(self)
            server._peak_connections = max(server._peak_connections, len(server._connections))
        self.task = asyncio.get_running_loop().create_task(self._serve())

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.gone.set()
        server = self.server
        server._connections.discard(self)
        server._refusing.discard(self)
        if server._peak_connections >= _TRIM_AFTER_CONNECTIONS:
            # A burst of connections is ending: what they held is worth giving back.
            server._peak_connections = len(server._connections)
            server.give_back_memory()
        self.writable.set()
        self.wakeup.set()

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.last_active = time.monotonic()  # the peer reads: it is not idle
        self.writable.set()

    def data_received(self, data: bytes) -> None:
        self.last_active = time.monotonic()
        if self.mode is None:
            first = data.lstrip()[:1]
            if not first and not self.buffer:
                return
            self.mode = "http" if first and first[0] in _HTTP_METHOD_START else "json"
            if self.mode == "http":
                self.http = _new_h11()
        if self.mode == "http":
            assert self.http is not None
            if self.frame_started is None:
                self.frame_started = self.last_active
            if self.http.their_state is h11.IDLE and not self.http.trailing_data[0]:
                # RFC 9112 2.2: empty lines before a request line are ignored.
                data = data.lstrip(b"\r\n")
                if not data:
                    return
            self.http.receive_data(data)
            self._pause_reading()  # the serving task resumes reading when it needs more
            self.wakeup.set()
            return
        self._split_lines(data)

    def check_deadlines(self, now: float) -> None:
        """Close the connection if it idled, or a frame dragged, past its timeout (sweeper)."""
        if self.closed:
            return
        server = self.server
        if self.refused:
            if now - self.opened > min(_REFUSE_WAIT_S, server.frame_timeout_s):
                self.abort()
            return
        if not self.writable.is_set() and now - self.last_active > server.idle_timeout_s:
            self.abort()  # the peer stopped reading our answers
            return
        if not self.idle.is_set():
            if self.reading_paused and not self.gone.is_set() and self._peer_closed():
                # Not reading (HTTP, or frames queued): no EOF is seen; the socket's
                # state tells that the asker of the call in flight is gone (caller.py).
                self.gone.set()
            return  # a call is in flight: its own timeouts apply
        if self.frame_started is not None and now - self.frame_started > server.frame_timeout_s:
            log.info("closing a connection whose frame is incomplete after its timeout")
            self._timed_out_answer()
            self.abort()
        elif now - self.last_active > server.idle_timeout_s:
            self.abort()

    def _timed_out_answer(self) -> None:
        limit = self.server.frame_timeout_s
        if self.mode == "http" and self.http is not None:
            if self.http.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                with contextlib.suppress(h11.LocalProtocolError):
                    self._http_send(
                        self.http,
                        408,
                        {"error": "request not complete in time", "limit_s": limit},
                        close=True,
                    )
        elif self.mode == "json":
            problem = f"frame not complete {limit:g} s after its first byte (frame_timeout_s)"
            self._write(
                orjson.dumps(
                    error_response(
                        INVALID_REQUEST,
                        "Invalid Request",
                        {"problem": problem, "bound": "frame_timeout_s", "limit": limit},
                    )
                )
                + b"\n"
            )

    def eof_received(self) -> bool | None:
        if self.mode == "http" and self.http is not None:
            self.http.receive_data(b"")
        elif self.buffer.strip():
            self.frames.append(bytes(self.buffer))  # a last request without its newline
            self.buffer.clear()
        self.stopping = True
        if self._peer_closed():
            self.gone.set()  # not a half-close: nobody will read an answer (caller.py)
        self.wakeup.set()
        return True  # keep the write side open until our answers are out

    def _peer_closed(self) -> bool:
        """True if the peer closed its socket, not only its write side (caller.hung_up)."""
        sock = self.transport.get_extra_info("socket") if self.transport is not None else None
        return sock is not None and hung_up(sock)

    # -- newline-delimited JSON -------------------------------------------
    def _split_lines(self, data: bytes) -> None:
        start = len(self.buffer)
        self.buffer += data
        newline = self.buffer.find(b"\n", start)
        last = 0
        while newline != -1:
            if newline - last > self.server.max_frame:
                self._refuse_oversized()
                return
            frame = bytes(self.buffer[last:newline])
            last = newline + 1
            if frame.strip():
                self.frames.append(frame)
            newline = self.buffer.find(b"\n", last)
        if last:
            del self.buffer[:last]
        if not self.buffer.strip():
            self.frame_started = None
        elif last or self.frame_started is None:
            self.frame_started = self.last_active  # a new frame began in this chunk
        if len(self.buffer) > self.server.max_frame:
            self._refuse_oversized()
            return
        if len(self.frames) >= _MAX_QUEUED_FRAMES:
            self._pause_reading()
        self.wakeup.set()

    def _refuse_oversized(self) -> None:
        self.buffer.clear()
        self.frames.append(b"")  # marker: frame too large; answered, then the connection closes
        self.stopping = True
        self._pause_reading()
        self.wakeup.set()

    async def _serve_json(self) -> None:
        while True:
            if not self.frames:
                if self.stopping or self.closed:
                    return
                self._resume_reading()
                self.wakeup.clear()
                await self.wakeup.wait()
                continue
            frame = self.frames.popleft()
            if frame == b"":
                self._write(
                    orjson.dumps(
                        error_response(
                            INVALID_REQUEST,
                            "Invalid Request",
                            {"problem": "frame too large", "limit_bytes": self.server.max_frame},
                        )
                    )
                    + b"\n"
                )
                return
            self.idle.clear()
            size = len(frame)
            try:
                wrote = False
                async for piece in self.server.dispatcher.stream(frame):
                    self._write(piece)
                    wrote = True
                    size += len(piece)
                    if not self.writable.is_set():
                        await self.writable.wait()  # the peer reads slower than we answer
                if wrote:
                    self._write(b"\n")
            finally:
                self.idle.set()
                self.last_active = time.monotonic()
            del frame
            if size > _TRIM_AFTER_BYTES:
                self.server.give_back_memory()
            if not self.writable.is_set():
                await self.writable.wait()
            if len(self.frames) < _MAX_QUEUED_FRAMES // 2 and not self.stopping:
                self._resume_reading()

    # -- HTTP/1.1 -----------------------------------------------------------
    async def _next_http_event(self) -> Any:
        while True:
            assert self.http is not None
            event = self.http.next_event()
            if event is not h11.NEED_DATA:
                return event
            if self.closed or self.stopping:
                return h11.ConnectionClosed()
            self.wakeup.clear()
            self._resume_reading()
            await self.wakeup.wait()

    def _next_http_cycle(self) -> h11.Connection:
        """A fresh parser for the next request, fed what the last one left unread.

        Instead of h11's start_next_cycle, so that empty lines between two
        requests are ignored too (RFC 9112 2.2), with no parsing of our own.
        """
        assert self.http is not None
        leftover, closed = self.http.trailing_data
        self.http = _new_h11()
        self.http_method = None
        leftover = leftover.lstrip(b"\r\n")
        if leftover:
            self.http.receive_data(leftover)
        if closed:
            self.http.receive_data(b"")
        self.frame_started = self.last_active if leftover else None
        return self.http

    async def _serve_http(self) -> None:
        http = self.http
        assert http is not None
        while not self.closed:
            try:
                event = await self._next_http_event()
                if isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                    return
                if not isinstance(event, h11.Request):
                    continue
                await self._answer_http(http, event)
                if http.our_state is not h11.DONE or http.their_state is not h11.DONE:
                    return  # closing, or the peer is still mid-body after an early answer
                http = self._next_http_cycle()
            except h11.RemoteProtocolError as exc:
                status = exc.error_status_hint
                if status == 501:
                    # h11 says 501 only for a Transfer-Encoding other than a lone
                    # "chunked". RFC 9112 6.3: chunked not last is an unknowable
                    # length, 400 and close; we treat every such framing alike.
                    status = 400
                if http.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    self._http_send(http, status, {"error": str(exc)}, close=True)
                return

    def _refuse_http(self, http: h11.Connection, status: int, doc: Any) -> None:
        """Answer before the body is read, and close: the body's bytes are never looked at."""
        self._http_send(http, status, doc, close=True)

    async def _answer_http(self, http: h11.Connection, request: h11.Request) -> None:
        # h11 gives header names lower-cased.
        headers: dict[bytes, bytes] = {}
        for name, value in request.headers:
            headers.setdefault(name, value)
        if b"transfer-encoding" in headers and b"content-length" in headers:
            # RFC 9112 6.1: a request with both may be an attempt at request smuggling.
            self._refuse_http(
                http, 400, {"error": "both Content-Length and Transfer-Encoding: ambiguous framing"}
            )
            return
        method = self.http_method = request.method
        if method not in _KNOWN_METHODS:
            self._refuse_http(http, 501, {"error": "method not implemented"})
            return
        path = self._http_path(http, request, headers.get(b"host"))
        if path is None:
            return
        length = int(headers.get(b"content-length", b"0") or 0)
        if length > self.server.max_frame:
            self._refuse_http(
                http, 413, {"error": "body too large", "limit_bytes": self.server.max_frame}
            )
            return
        if http.they_are_waiting_for_100_continue:
            # h11 says so only for HTTP/1.1 (RFC 9110 10.1.1: never a 1xx to HTTP/1.0).
            self._write(http.send(h11.InformationalResponse(status_code=100, headers=[])))
        body = bytearray()
        while True:
            event = await self._next_http_event()
            if isinstance(event, h11.Data):
                body += event.data
                if len(body) > self.server.max_frame:
                    self._refuse_http(http, 413, {"error": "body too large"})
                    return
            elif isinstance(event, h11.EndOfMessage):
                break
            else:
                return  # the peer went away mid-body
        self.frame_started = None
        allowed = _ROUTES.get(path)
        if path == b"*" and method == b"OPTIONS":
            allowed = tuple(sorted({m for ms in _ROUTES.values() for m in ms}))
        if allowed is None:
            self._http_send(http, 404, {"error": "not found", "paths": _PATHS})
        elif method not in allowed:
            self._http_send(
                http, 405, {"error": "method not allowed"}, extra=[(b"allow", b", ".join(allowed))]
            )
        elif method == b"OPTIONS":
            self._http_send_raw(http, 204, b"", extra=[(b"allow", b", ".join(allowed))])
        elif method == b"POST":
            await self._http_rpc(http, bytes(body))
        elif path == b"/openrpc.json":
            self._http_send_raw(http, 200, orjson.dumps(self.server.dispatcher.app.openrpc))
        elif path == b"/metrics":  # Prometheus text (hero_procd/metrics.py)
            app = self.server.dispatcher.app
            self._http_send_raw(http, 200, await app.metrics.render(app), ctype=METRICS_CTYPE)
        else:
            app = self.server.dispatcher.app
            self._http_send(http, 200, {"status": "ok", "version": app.version, "pid": app.pid})

    def _http_path(
        self, http: h11.Connection, request: h11.Request, host: bytes | None
    ) -> bytes | None:
        """The request's path (query dropped), or None after answering 400."""
        target = request.target
        if target[:1] == b"/" or (target == b"*" and request.method == b"OPTIONS"):
            authority = host
            path = target.split(b"?", 1)[0]
        else:
            # RFC 9112 3.2.2: absolute-form; its authority stands in for Host.
            try:
                parts = urlsplit(target)
            except ValueError:
                parts = None
            if parts is None or parts.scheme.lower() not in (b"http", b"https") or parts.fragment:
                self._refuse_http(http, 400, {"error": "bad request target"})
                return None
            authority = parts.netloc
            path = parts.path or b"/"
        if authority is not None and (b"@" in authority or _HOST_RE.fullmatch(authority) is None):
            self._refuse_http(http, 400, {"error": "invalid Host"})
            return None
        return path

    async def _http_rpc(self, http: h11.Connection, body: bytes) -> None:
        """POST /rpc: one answer with Content-Length, or a large batch's answer streamed."""
        self.idle.clear()
        try:
            pieces: AsyncIterator[bytes] = self.server.dispatcher.stream(body)
            first = await anext(pieces, None)
            if first is None:
                self._http_send_raw(http, 204, b"")
                return
            second = await anext(pieces, None)
            if second is None:
                self._http_send_raw(http, 200, first)
                if len(first) + len(body) > _TRIM_AFTER_BYTES:
                    self.server.give_back_memory()
                return
            self.server.give_back_memory()  # a streamed answer: more than a window's worth
            # No Content-Length: h11 frames it chunked (HTTP/1.1) or by close (1.0).
            head = [(b"content-type", b"application/json"), (b"date", _http_date().encode())]
            self._write(http.send(h11.Response(status_code=200, headers=head)))
            self._write(http.send(h11.Data(data=first)) + http.send(h11.Data(data=second)))
            async for piece in pieces:
                if not self.writable.is_set():
                    await self.writable.wait()
                if self.closed:
                    return
                self._write(http.send(h11.Data(data=piece)))
            self._write(http.send(h11.EndOfMessage()))
        finally:
            self.idle.set()
            self.last_active = time.monotonic()

    def _http_send(
        self,
        http: h11.Connection,
        status: int,
        doc: Any,
        *,
        close: bool = False,
        extra: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        self._http_send_raw(http, status, orjson.dumps(doc), close=close, extra=extra)

    def _http_send_raw(
        self,
        http: h11.Connection,
        status: int,
        body: bytes,
        *,
        close: bool = False,
        extra: list[tuple[bytes, bytes]] | None = None,
        ctype: bytes = b"application/json",
    ) -> None:
        headers: list[tuple[bytes, bytes]] = [(b"date", _http_date().encode())]
        if status != 204:
            headers += [
                (b"content-type", ctype),
                (b"content-length", b"%d" % len(body)),
            ]
        if close:
            headers.append((b"connection", b"close"))
        headers += extra or []
        out = http.send(h11.Response(status_code=status, headers=headers))
        if body and self.http_method != b"HEAD":
            # A response to HEAD has no body (RFC 9110 9.3.2); its headers,
            # Content-Length included, are those a GET would get.
            out += http.send(h11.Data(data=body))
        out += http.send(h11.EndOfMessage())
        self._write(out)

    # -- common ---------------------------------------------------------------
    async def _serve(self) -> None:
        assert self.transport is not None
        PEER_GONE.set(self.gone)  # this task's context: every call served on this connection
        try:
            sock = self.transport.get_extra_info("socket")
            pid, uid, gid = peer_credentials(sock)
            if not await self.server.authorize(pid, uid, gid):
                log.warning("refused peer", extra={"peer_pid": pid, "peer_uid": uid})
                self.close()
                return
            while self.mode is None and not self.closed and not self.stopping:
                self.wakeup.clear()
                await self.wakeup.wait()
            if self.refused:
                self._refuse_busy()
                return
            if self.mode == "http":
                await self._serve_http()
            elif self.mode == "json":
                await self._serve_json()
        except Exception:
            log.exception("connection failed")
        finally:
            self.close()

    def _refuse_busy(self) -> None:
        """Tell a connection over `max_connections` so, in its framing (it is closed after)."""
        limit = self.server.max_connections
        problem = f"over the bound of {limit} open connections (max_connections)"
        data = {"problem": problem, "bound": "max_connections", "limit": limit}
        if self.mode == "http" and self.http is not None:
            with contextlib.suppress(h11.ProtocolError):
                self.http.next_event()  # lets h11 see the request line, to answer in its version
            with contextlib.suppress(h11.ProtocolError):
                self._http_send(
                    self.http, 503, {"error": problem, **data}, close=True,
                    extra=[(b"retry-after", b"1")],
                )  # fmt: skip
        elif self.mode == "json":
            self._write(orjson.dumps(error_response(BUSY, "Busy", data)) + b"\n")

    def _write(self, data: bytes | None) -> None:
        if data and self.transport is not None and not self.closed:
            self.transport.write(data)

    def _pause_reading(self) -> None:
        if not self.reading_paused and self.transport is not None and not self.closed:
            self.reading_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if (
            self.reading_paused
            and self.transport is not None
            and not self.closed
            and not self.stopping
        ):
            self.reading_paused = False
            self.transport.resume_reading()

    def stop_reading(self) -> None:
        """Take no new request; the one in flight still gets its answer."""
        self.stopping = True
        self._pause_reading()
        self.wakeup.set()

    def close(self) -> None:
        """Close the connection once what is written has been sent."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def abort(self) -> None:
        """Close now, dropping what the peer has not read (a timeout: it may never read)."""
        if self.transport is not None:
            self.transport.abort()
