"""The Unix socket: peer check, and two framings told apart by a connection's first bytes.

- newline-delimited JSON-RPC 2.0 (`nc -U`, `socat`, the client): one JSON text a line;
- HTTP/1.1 through h11 (`curl --unix-socket`): `POST /rpc`, `GET /openrpc.json`, `GET /health`.

Each connection is served by one task that answers its frames in order;
parallelism comes from connections. Reading pauses while a connection has
more than a few frames waiting, so a flooding peer cannot grow the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import logging
import os
import socket
import struct
from collections import deque
from pathlib import Path
from typing import Any

import h11
import orjson

from hero_procd.errors import INVALID_REQUEST
from hero_procd.rpc.dispatch import Dispatcher, error_response

log = logging.getLogger(__name__)

_CRED = struct.Struct("3i")
_MAX_QUEUED_FRAMES = 32
_HTTP_METHOD_START = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ")


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
        self._uid = os.getuid()

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

    # -- asyncio.Protocol -------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport
        self.server._connections.add(self)
        self.task = asyncio.get_running_loop().create_task(self._serve())

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server._connections.discard(self)
        self.writable.set()
        self.wakeup.set()

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def data_received(self, data: bytes) -> None:
        if self.mode is None:
            first = data.lstrip()[:1]
            if not first and not self.buffer:
                return
            self.mode = "http" if first and first[0] in _HTTP_METHOD_START else "json"
            if self.mode == "http":
                self.http = h11.Connection(h11.SERVER, max_incomplete_event_size=64 * 1024)
        if self.mode == "http":
            assert self.http is not None
            self.http.receive_data(data)
            self._pause_reading()  # the serving task resumes reading when it needs more
            self.wakeup.set()
            return
        self._split_lines(data)

    def eof_received(self) -> bool | None:
        if self.mode == "http" and self.http is not None:
            self.http.receive_data(b"")
        elif self.buffer.strip():
            self.frames.append(bytes(self.buffer))  # a last request without its newline
            self.buffer.clear()
        self.stopping = True
        self.wakeup.set()
        return True  # keep the write side open until our answers are out

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
            try:
                answer = await self.server.dispatcher.handle(frame)
            finally:
                self.idle.set()
            if answer is not None:
                self._write(answer + b"\n")
                if not self.writable.is_set():
                    await self.writable.wait()
            if len(self.frames) < _MAX_QUEUED_FRAMES // 2 and not self.stopping:
                self._resume_reading()

    # -- HTTP/1.1 -----------------------------------------------------------
    async def _next_http_event(self) -> Any:
        assert self.http is not None
        while True:
            event = self.http.next_event()
            if event is not h11.NEED_DATA:
                return event
            if self.closed or self.stopping:
                return h11.ConnectionClosed()
            self.wakeup.clear()
            self._resume_reading()
            await self.wakeup.wait()

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
                http.start_next_cycle()
            except h11.RemoteProtocolError as exc:
                if http.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    self._http_send(http, exc.error_status_hint, {"error": str(exc)})
                return

    async def _answer_http(self, http: h11.Connection, request: h11.Request) -> None:
        headers = {k.lower(): v for k, v in request.headers}
        length = int(headers.get(b"content-length", b"0") or 0)
        if length > self.server.max_frame:
            self._http_send(
                http, 413, {"error": "body too large", "limit_bytes": self.server.max_frame}
            )
            return
        if headers.get(b"expect", b"").lower() == b"100-continue":
            self._write(http.send(h11.InformationalResponse(status_code=100, headers=[])))
        body = bytearray()
        while True:
            event = await self._next_http_event()
            if isinstance(event, h11.Data):
                body += event.data
                if len(body) > self.server.max_frame:
                    self._http_send(http, 413, {"error": "body too large"})
                    return
            elif isinstance(event, h11.EndOfMessage):
                break
            else:
                return  # the peer went away mid-body
        target = request.target.split(b"?", 1)[0]
        method = request.method
        if target in (b"/rpc", b"/") and method == b"POST":
            self.idle.clear()
            try:
                answer = await self.server.dispatcher.handle(bytes(body))
            finally:
                self.idle.set()
            if answer is None:
                self._http_send_raw(http, 204, b"")
            else:
                self._http_send_raw(http, 200, answer)
        elif target == b"/openrpc.json" and method in (b"GET", b"HEAD"):
            self._http_send_raw(http, 200, orjson.dumps(self.server.dispatcher.app.openrpc))
        elif target == b"/health" and method in (b"GET", b"HEAD"):
            app = self.server.dispatcher.app
            self._http_send(http, 200, {"status": "ok", "version": app.version, "pid": app.pid})
        elif target in (b"/rpc", b"/", b"/openrpc.json", b"/health"):
            self._http_send(http, 405, {"error": "method not allowed"})
        else:
            self._http_send(
                http, 404, {"error": "not found", "paths": ["/rpc", "/openrpc.json", "/health"]}
            )

    def _http_send(self, http: h11.Connection, status: int, doc: Any) -> None:
        self._http_send_raw(http, status, orjson.dumps(doc))

    def _http_send_raw(self, http: h11.Connection, status: int, body: bytes) -> None:
        headers = [("content-type", "application/json"), ("content-length", str(len(body)))]
        if status == 204:
            headers = []
        out = http.send(h11.Response(status_code=status, headers=headers))
        if body:
            out += http.send(h11.Data(data=body))
        out += http.send(h11.EndOfMessage())
        self._write(out)

    # -- common ---------------------------------------------------------------
    async def _serve(self) -> None:
        assert self.transport is not None
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
            if self.mode == "http":
                await self._serve_http()
            elif self.mode == "json":
                await self._serve_json()
        except Exception:
            log.exception("connection failed")
        finally:
            self.close()

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
