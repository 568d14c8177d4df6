"""Front-door bounds on the real daemon (issue 9, finding 3): batch size, calls in flight,
connections, idle and partial-frame timeouts, and resources given back after load."""

from __future__ import annotations

import asyncio
import json
import resource
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hero_procd.client import AsyncClient, _peer_closed
from integration.daemon_proc import DaemonProcess
from integration.helpers import daemon_running, gate_script, open_fds, rss_bytes, sh, wait_for

IO_TIMEOUT_S = 20.0
MB = 1 << 20


def ping(req_id: Any = 1) -> bytes:
    """A system.ping request (no newline)."""
    return json.dumps(
        {"jsonrpc": "2.0", "method": "system.ping", "id": req_id}, separators=(",", ":")
    ).encode()


class Line:
    """A raw NDJSON connection."""

    def __init__(self, path: Path, timeout: float = IO_TIMEOUT_S) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self.buf = b""

    def send(self, data: bytes) -> None:
        """Write all of `data`."""
        self.sock.sendall(data)

    def raw_line(self) -> bytes:
        """The next answer line, unparsed."""
        while b"\n" not in self.buf:
            chunk = self.sock.recv(1 << 20)
            assert chunk, f"closed; unread {self.buf[:200]!r}"
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line

    def line(self) -> Any:
        """The next answer, parsed."""
        return json.loads(self.raw_line())

    def call(self, data: bytes) -> Any:
        """Send one frame, read one answer."""
        self.send(data + b"\n")
        return self.line()

    def closed_by_peer(self) -> bool:
        """True once the daemon has closed the connection (waits up to the socket timeout)."""
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.buf += chunk
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()


@pytest.fixture
def bounded() -> Iterator[DaemonProcess]:
    """A daemon with small bounds everywhere, so tests reach them quickly."""
    env = {
        "HERO_PROC_MAX_BATCH": "10",
        "HERO_PROC_MAX_INFLIGHT": "2",
        "HERO_PROC_MAX_CONNECTIONS": "5",
    }
    with daemon_running(env=env) as proc:
        yield proc


def test_batch_over_the_bound_is_one_error_naming_it(bounded: DaemonProcess) -> None:
    """A batch over max_batch gets one -32600 naming the bound; one at the bound is served."""
    conn = Line(bounded.socket_path)
    try:
        over = conn.call(b"[" + b",".join(ping(i) for i in range(11)) + b"]")
        assert isinstance(over, dict), "one error, not one per item"
        assert over["error"]["code"] == -32600 and over["id"] is None
        assert over["error"]["data"]["bound"] == "max_batch"
        assert over["error"]["data"]["limit"] == 10
        assert "max_batch" in over["error"]["data"]["problem"]
        at = conn.call(b"[" + b",".join(ping(i) for i in range(10)) + b"]")
        assert sorted(a["id"] for a in at) == list(range(10))
    finally:
        conn.close()


def test_batch_calls_in_flight_are_bounded(bounded: DaemonProcess, tmp_path: Path) -> None:
    """With max_inflight 2, three 1 s waits cannot all run at once: two rounds at least.

    (A lower bound on time only: it cannot pass by being slow.)
    """
    with bounded.client() as c:
        job = c.call("job.submit", {"command": sh(gate_script()), "cwd": str(tmp_path)})["id"]
        wait = [
            {"jsonrpc": "2.0", "method": "job.wait", "id": i, "params": {"id": job, "timeout_s": 1}}
            for i in range(3)
        ]
        conn = Line(bounded.socket_path)
        try:
            started = time.monotonic()
            answers = conn.call(json.dumps(wait).encode())
            elapsed = time.monotonic() - started
        finally:
            conn.close()
        (tmp_path / "gate").touch()
        assert sorted(a["id"] for a in answers) == [0, 1, 2]
        assert all(a["result"]["done"] is False for a in answers)
        assert elapsed >= 1.9, f"3 waits of 1 s took {elapsed:.2f} s: more than 2 ran at once"
        c.call("job.wait", {"id": job, "timeout_s": 20})


def test_connections_over_the_bound_are_refused_cleanly(bounded: DaemonProcess) -> None:
    """Over max_connections a peer is told so in its framing (NDJSON or HTTP), then closed."""
    held = [Line(bounded.socket_path) for _ in range(5)]
    try:
        for conn in held:
            assert conn.call(ping())["result"]["pong"] is True
        extra = Line(bounded.socket_path)
        try:
            answer = extra.call(ping("x"))
            assert answer["error"]["code"] == -32003
            assert answer["error"]["data"]["bound"] == "max_connections"
            assert answer["error"]["data"]["limit"] == 5
            assert extra.closed_by_peer()
        finally:
            extra.close()
        web = Line(bounded.socket_path)
        try:
            web.send(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            head = web.raw_line()
            assert head.startswith(b"HTTP/1.1 503"), head
            assert web.closed_by_peer()
            assert b"max_connections" in web.buf
        finally:
            web.close()
        held.pop().close()

        def fresh_ping() -> bool | None:
            conn = Line(bounded.socket_path)
            try:
                answer = conn.call(ping("again"))
            finally:
                conn.close()
            return True if "result" in answer else None

        wait_for(fresh_ping, "a connection once one is free")
        for conn in held:  # the held ones were never disturbed
            assert conn.call(ping())["result"]["pong"] is True
    finally:
        for conn in held:
            conn.close()


@pytest.fixture
def timeouts() -> Iterator[DaemonProcess]:
    """A daemon that closes idle connections after 1 s and slow frames after 1 s."""
    env = {"HERO_PROC_IDLE_TIMEOUT_S": "1", "HERO_PROC_FRAME_TIMEOUT_S": "1"}
    with daemon_running(env=env) as proc:
        yield proc


def test_idle_connection_is_closed(timeouts: DaemonProcess) -> None:
    """A connection with nothing to do is closed after idle_timeout_s (NDJSON and HTTP)."""
    conn = Line(timeouts.socket_path)
    try:
        assert conn.call(ping())["result"]["pong"] is True
        assert conn.closed_by_peer(), "an idle connection was held"
    finally:
        conn.close()
    silent = Line(timeouts.socket_path)  # never says a word
    try:
        assert silent.closed_by_peer()
    finally:
        silent.close()


def test_call_in_flight_outlives_the_idle_timeout(timeouts: DaemonProcess, tmp_path: Path) -> None:
    """A long call (job.wait of 3 s, idle timeout 1 s) is answered: only idleness is cut."""
    with timeouts.client() as c:
        job = c.call("job.submit", {"command": sh(gate_script()), "cwd": str(tmp_path)})["id"]
    conn = Line(timeouts.socket_path)
    try:
        body = {
            "jsonrpc": "2.0",
            "method": "job.wait",
            "id": 1,
            "params": {"id": job, "timeout_s": 3},
        }
        answer = conn.call(json.dumps(body).encode())
        assert answer["result"]["done"] is False
    finally:
        conn.close()
        (tmp_path / "gate").touch()


def _trickle(conn: Line, pieces: list[bytes]) -> bool:
    """Send `pieces` one every 0.2 s (a slow-loris peer); True if the daemon closed meanwhile."""
    try:
        for piece in pieces:
            conn.send(piece)
            time.sleep(0.2)
    except (BrokenPipeError, ConnectionResetError):
        return True
    return False


def test_slow_loris_ndjson_frame_is_cut(timeouts: DaemonProcess) -> None:
    """A line that keeps arriving byte by byte is cut frame_timeout_s after its first byte."""
    conn = Line(timeouts.socket_path)
    try:
        frame = ping() * 20  # 100+ trickled bytes: ~20 s, far past the 1 s timeout
        _trickle(conn, [frame[i : i + 1] for i in range(len(frame))])
        assert conn.closed_by_peer()
        assert b"frame_timeout_s" in conn.buf
    finally:
        conn.close()


def test_slow_loris_http_request_is_cut_with_408(timeouts: DaemonProcess) -> None:
    """HTTP headers that keep trickling get 408 and a close after frame_timeout_s."""
    conn = Line(timeouts.socket_path)
    try:
        head = b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: a\r\n" * 20
        _trickle(conn, [head[i : i + 6] for i in range(0, len(head), 6)])
        assert conn.closed_by_peer()
        assert conn.buf.startswith(b"HTTP/1.1 408"), conn.buf[:100]
    finally:
        conn.close()


# -- load, and what is given back ------------------------------------------------------------


@pytest.fixture(scope="module")
def roomy() -> Iterator[DaemonProcess]:
    """A daemon with the default bounds."""
    with daemon_running() as proc:
        yield proc


def _pid(d: DaemonProcess) -> int:
    assert d.proc is not None
    return d.proc.pid


def test_huge_batch_frame_is_refused_without_freezing_others(roomy: DaemonProcess) -> None:
    """310,000 pings in one frame: one -32600 at once, and another connection stays served."""
    frame = b"[" + b",".join(ping(i) for i in range(310_000)) + b"]\n"
    assert len(frame) < 16 * MB
    result: dict[str, Any] = {}

    def flood() -> None:
        conn = Line(roomy.socket_path, timeout=60)
        try:
            started = time.monotonic()
            conn.send(frame)
            result["answer"] = conn.line()
            result["took"] = time.monotonic() - started
        finally:
            conn.close()

    other = Line(roomy.socket_path)
    worst = 0.0
    thread = threading.Thread(target=flood)
    thread.start()
    try:
        while thread.is_alive():
            started = time.monotonic()
            assert other.call(ping("other"))["result"]["pong"] is True
            worst = max(worst, time.monotonic() - started)
            time.sleep(0.01)
    finally:
        thread.join(60)
        other.close()
    answer = result["answer"]
    assert answer["error"]["code"] == -32600 and answer["error"]["data"]["bound"] == "max_batch"
    assert result["took"] < 15, f"refusing the frame took {result['took']:.1f} s"
    assert worst < 5, f"a ping on another connection waited {worst:.1f} s"


def _settles(probe: Any, limit: int, what: str) -> int:
    """Poll `probe()` until it is at most `limit` (deadline 30 s); its last value."""
    last = [0]

    def ok() -> bool | None:
        last[0] = probe()
        return True if last[0] <= limit else None

    try:
        wait_for(ok, what, timeout_s=30)
    except AssertionError:
        raise AssertionError(f"{what}: {last[0]} > {limit}") from None
    return last[0]


def test_large_batch_answers_are_streamed_and_memory_given_back(roomy: DaemonProcess) -> None:
    """Batches of 1,000 rpc.discover (~110 MB of answer each) never sit whole in memory.

    Peak RSS stays far under one answer's size, and RSS comes back near rest after.
    """
    pid = _pid(roomy)
    base = rss_bytes(pid)
    batch = json.dumps(
        [{"jsonrpc": "2.0", "method": "rpc.discover", "id": i} for i in range(1000)]
    ).encode()
    peak = base
    answer_bytes = 0
    for _ in range(3):
        conn = Line(roomy.socket_path, timeout=120)
        try:
            conn.send(batch + b"\n")
            got = 0
            while True:  # read to the newline, sampling the daemon's RSS as it answers
                chunk = conn.sock.recv(1 << 20)
                assert chunk, "closed mid-answer"
                got += len(chunk)
                peak = max(peak, rss_bytes(pid))
                if chunk.endswith(b"\n"):
                    break
            answer_bytes = got
        finally:
            conn.close()
    assert answer_bytes > 50 * MB
    assert peak - base < answer_bytes / 2, (
        f"peak RSS grew {(peak - base) / MB:.0f} MB for a {answer_bytes / MB:.0f} MB answer"
    )
    _settles(lambda: rss_bytes(pid), base + 25 * MB, "RSS back near rest after large batches")


def test_a_thousand_connections_give_back_fds_and_memory(roomy: DaemonProcess) -> None:
    """1,000 connections at once are served; once closed, fds and RSS return near baseline."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(2048, hard), hard))
    pid = _pid(roomy)
    warm = [Line(roomy.socket_path) for _ in range(20)]
    for conn in warm:
        conn.call(ping())
        conn.close()
    base_fds = _settles(lambda: open_fds(pid), open_fds(pid), "warm-up connections closed")
    base_rss = rss_bytes(pid)
    conns: list[Line] = []
    try:
        for _ in range(1000):
            conns.append(Line(roomy.socket_path))
        for i, conn in enumerate(conns):
            conn.send(ping(i) + b"\n")
        for i, conn in enumerate(conns):
            assert conn.line()["id"] == i
        assert open_fds(pid) >= base_fds + 990  # (a warm-up close may still have been in flight)
    finally:
        for conn in conns:
            conn.close()
    _settles(lambda: open_fds(pid), base_fds + 5, "the daemon's fds back to baseline")
    _settles(lambda: rss_bytes(pid), base_rss + 30 * MB, "the daemon's RSS back near baseline")


def test_clients_reconnect_after_an_idle_close(workdir: Path) -> None:
    """The daemon closes idle connections; the client opens a new one before its next call
    (checked before sending, so no call is sent twice)."""
    env = {"HERO_PROC_IDLE_TIMEOUT_S": "0.3"}
    with daemon_running(workdir, env=env) as proc, proc.client() as c:
        assert c.call("system.ping") is not None
        sock = c._sock
        assert sock is not None
        wait_for(lambda: True if _peer_closed(sock) else None, "the idle connection to close")
        assert c.call("system.ping") is not None

        async def twice() -> None:
            async with AsyncClient(proc.socket_path) as ac:
                await ac.call("system.ping")
                reader = ac._reader
                assert reader is not None
                # The daemon closes it: EOF is all that can arrive (the read ends at once).
                assert await asyncio.wait_for(reader.read(1), 10) == b""
                assert reader.at_eof()
                await ac.call("system.ping")

        asyncio.run(twice())
