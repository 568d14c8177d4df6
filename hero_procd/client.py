"""JSON-RPC clients of hero-procd: `Client` (blocking) and `AsyncClient` (asyncio).

Both speak newline-delimited JSON-RPC 2.0 over the Unix socket and raise the
daemon's errors as the same exception classes (`hero_procd.errors`). This
module imports neither asyncio nor aiosqlite at import time, so the CLI
starts fast.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import select
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import orjson

from hero_procd.config import client_socket_path
from hero_procd.errors import HeroError, from_wire

if TYPE_CHECKING:
    import asyncio

MAX_RESPONSE = 256 * 1024 * 1024


class DaemonUnavailable(HeroError):
    """hero-procd is not reachable on its socket."""


class ProtocolError(HeroError):
    """The daemon's answer was not valid JSON-RPC."""


def _request(method: str, params: dict[str, Any] | None, req_id: int) -> bytes:
    req: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": req_id}
    if params is not None:
        req["params"] = params
    return orjson.dumps(req) + b"\n"


def _result(line: bytes, req_id: int) -> Any:
    try:
        answer = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError("answer is not JSON", {"detail": str(exc)}) from exc
    if not isinstance(answer, dict) or answer.get("id") != req_id:
        raise ProtocolError("answer does not match the request", {"id": req_id})
    if "error" in answer:
        err = answer["error"]
        raise from_wire(int(err.get("code", -32603)), str(err.get("message", "")), err.get("data"))
    return answer.get("result")


def _peer_closed(sock: socket.socket) -> bool:
    """Whether the other end has closed an idle connection (EOF waiting), without blocking."""
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return False
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def _unavailable(path: Path, exc: OSError) -> DaemonUnavailable:
    return DaemonUnavailable(
        f"cannot reach hero-procd at {path}: {exc.strerror or exc}", {"socket": str(path)}
    )


class Client:
    """A blocking client: `with Client() as c: c.call("system.ping")`."""

    def __init__(
        self, socket_path: str | os.PathLike[str] | None = None, timeout: float | None = 60.0
    ):
        self.socket_path = Path(socket_path) if socket_path else client_socket_path()
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._buf = bytearray()
        self._ids = itertools.count(1)

    def connect(self) -> None:
        """Open the connection (done by the first call if not done before)."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self.socket_path))
        except OSError as exc:
            sock.close()
            raise _unavailable(self.socket_path, exc) from exc
        self._sock = sock

    def call(self, method: str, params: dict[str, Any] | None = None, **kw: Any) -> Any:
        """Call `method` with `params` (or keywords); the result, or the daemon's error raised."""
        if self._sock is not None and _peer_closed(self._sock):
            # The daemon closed this connection while it was idle (its idle timeout, a
            # restart): open a new one. Checked before sending, so no call is ever sent twice.
            self.close()
        if self._sock is None:
            self.connect()
        assert self._sock is not None
        req_id = next(self._ids)
        try:
            try:
                self._sock.sendall(
                    _request(method, params if params is not None else (kw or None), req_id)
                )
            except (BrokenPipeError, ConnectionResetError) as exc:
                self._refused_while_sending(exc)
            line = self._read_line()
        except TimeoutError as exc:
            self.close()
            raise DaemonUnavailable(f"no answer from hero-procd within {self.timeout}s") from exc
        except OSError as exc:
            self.close()
            raise _unavailable(self.socket_path, exc) from exc
        return _result(line, req_id)

    def _refused_while_sending(self, exc: OSError) -> NoReturn:
        """The daemon closed while a request was still being sent: it may have refused it
        (a frame over its limit) and said why first; raise that answer, else `exc`."""
        try:
            line = self._read_line()
            answer = orjson.loads(line)
        except (OSError, orjson.JSONDecodeError, ProtocolError):
            raise exc from None
        finally:
            self.close()
        err = answer.get("error") if isinstance(answer, dict) else None
        if not isinstance(err, dict):
            raise exc
        raise from_wire(int(err.get("code", -32603)), str(err.get("message", "")), err.get("data"))

    def _read_line(self) -> bytes:
        assert self._sock is not None
        while True:
            nl = self._buf.find(b"\n")
            if nl != -1:
                line = bytes(self._buf[:nl])
                del self._buf[: nl + 1]
                return line
            chunk = self._sock.recv(1 << 20)
            if not chunk:
                raise ConnectionResetError("hero-procd closed the connection")
            self._buf += chunk
            if len(self._buf) > MAX_RESPONSE:
                raise ProtocolError("answer too large")

    def close(self) -> None:
        """Close the connection."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            self._buf.clear()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient:
    """An asyncio client: `async with AsyncClient() as c: await c.call("system.ping")`.

    One request at a time per client; open several clients for parallel calls.
    """

    def __init__(
        self, socket_path: str | os.PathLike[str] | None = None, timeout: float | None = 60.0
    ):
        self.socket_path = Path(socket_path) if socket_path else client_socket_path()
        self.timeout = timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._ids = itertools.count(1)
        self._lock: asyncio.Lock | None = None

    async def connect(self) -> None:
        """Open the connection (done by the first call if not done before)."""
        import asyncio

        try:
            self._reader, self._writer = await asyncio.open_unix_connection(
                str(self.socket_path), limit=MAX_RESPONSE
            )
        except OSError as exc:
            raise _unavailable(self.socket_path, exc) from exc
        self._lock = asyncio.Lock()

    async def call(self, method: str, params: dict[str, Any] | None = None, **kw: Any) -> Any:
        """Call `method`; the result, or the daemon's error raised."""
        import asyncio

        if self._reader is not None and self._reader.at_eof():
            await self.close()  # closed by the daemon while idle: reconnect, nothing was sent
        if self._writer is None:
            await self.connect()
        assert self._reader is not None and self._writer is not None and self._lock is not None
        req_id = next(self._ids)
        async with self._lock:
            try:
                self._writer.write(
                    _request(method, params if params is not None else (kw or None), req_id)
                )
                await self._writer.drain()
                line = await asyncio.wait_for(self._reader.readline(), self.timeout)
            except TimeoutError as exc:
                await self.close()
                raise DaemonUnavailable(
                    f"no answer from hero-procd within {self.timeout}s"
                ) from exc
            except OSError as exc:
                await self.close()
                raise _unavailable(self.socket_path, exc) from exc
        if not line:
            await self.close()
            raise DaemonUnavailable("hero-procd closed the connection")
        return _result(line, req_id)

    async def close(self) -> None:
        """Close the connection."""
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()
            self._writer = None
            self._reader = None

    async def __aenter__(self) -> AsyncClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
