"""Attacks on 'a wait ends with its asker': other framings, pipelining, batches, races.

Every case ends with the `hero_proc_job_waiters` gauge back at 0.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
from functools import partial
from urllib.parse import urlsplit

import orjson
import pytest

from integration.daemon_proc import DaemonProcess
from integration.helpers import finish, submit, wait_for, wait_running
from integration.test_wait_disconnect import _send, _waiters
from integration.web_helpers import web_daemon


def _frame(method: str, params: dict[str, object], ident: int = 1) -> dict[str, object]:
    return {"jsonrpc": "2.0", "id": ident, "method": method, "params": params}


def _http_post(body: bytes, host: str, extra: str = "") -> bytes:
    return (
        f"POST /rpc HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"{extra}Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def _status(daemon: DaemonProcess, job: int) -> str:
    with daemon.client() as c:
        return str(c.call("job.get", id=job)["status"])


def _cancelled(daemon: DaemonProcess, job: int) -> bool | None:
    return _status(daemon, job) == "cancelled" or None


def test_http_framing_wait_ends_when_the_client_is_killed(daemon: DaemonProcess) -> None:
    # curl --unix-socket S -d '{…job.wait…}' http://x/rpc, then curl killed.
    with daemon.client() as c:
        job = submit(c, command=["sleep", "300"])
        wait_running(c, job)
        socks = []
        for _ in range(5):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(str(daemon.socket_path))
            wait = orjson.dumps(_frame("job.wait", {"id": job, "timeout_s": 3600}))
            s.sendall(_http_post(wait, "x"))
            socks.append(s)
        try:
            wait_for(lambda: _waiters(daemon) >= 5 or None, "5 http waiters registered")
        finally:
            for s in socks:
                s.close()
        wait_for(lambda: _waiters(daemon) == 0 or None, "no http waiter left", timeout_s=30)
        c.call("job.cancel", id=job)
        finish(c, job)


def test_pipelined_frames_after_a_long_wait_still_run_when_the_client_closes(
    daemon: DaemonProcess,
) -> None:
    # [job.wait A (an hour), job.cancel B] on one connection, then the client closes:
    # the wait ends with its asker and the cancel behind it is still carried out.
    rng = random.Random()
    with daemon.client() as c:
        for _ in range(3):
            a = submit(c, command=["sleep", "300"])
            b = submit(c, command=["sleep", "300"])
            wait_running(c, a)
            wait_running(c, b)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(str(daemon.socket_path))
            s.sendall(
                orjson.dumps(_frame("job.wait", {"id": a, "timeout_s": 3600}, 1)) + b"\n"
                + orjson.dumps(_frame("job.cancel", {"id": b}, 2)) + b"\n"
            )  # fmt: skip
            wait_for(lambda: _waiters(daemon) == 1 or None, "the waiter registered")
            time.sleep(rng.uniform(0, 0.2))
            s.close()
            wait_for(lambda: _waiters(daemon) == 0 or None, "no waiter left", timeout_s=30)
            wait_for(partial(_cancelled, daemon, b), "B cancelled")
            c.call("job.cancel", id=a)
            finish(c, a)


def test_pipelined_half_close_answers_every_frame(daemon: DaemonProcess) -> None:
    with daemon.client() as c:
        job = submit(c, command=["sleep", "300"])
        wait_running(c, job)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(str(daemon.socket_path))
        try:
            s.sendall(
                orjson.dumps(_frame("job.wait", {"id": job, "timeout_s": 3600}, 1)) + b"\n"
                + orjson.dumps(_frame("system.ping", {}, 2)) + b"\n"
            )  # fmt: skip
            s.shutdown(socket.SHUT_WR)
            wait_for(lambda: _waiters(daemon) == 1 or None, "the waiter registered")
            c.call("job.cancel", id=job)
            s.settimeout(30)
            f = s.makefile("rb")
            first, second = orjson.loads(f.readline()), orjson.loads(f.readline())
            assert first["id"] == 1 and first["result"]["status"] == "cancelled", first
            assert second["id"] == 2 and "result" in second, second
        finally:
            s.close()
        assert _waiters(daemon) == 0


def test_a_batch_wait_and_cancel_from_a_client_that_leaves_still_cancels(
    daemon: DaemonProcess,
) -> None:
    rng = random.Random()
    with daemon.client() as c:
        for _ in range(5):
            a = submit(c, command=["sleep", "300"])
            b = submit(c, command=["sleep", "300"])
            wait_running(c, a)
            wait_running(c, b)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(str(daemon.socket_path))
            batch = [
                _frame("job.wait", {"id": a, "timeout_s": 3600}, 1),
                _frame("job.cancel", {"id": b}, 2),
            ]
            s.sendall(orjson.dumps(batch) + b"\n")
            time.sleep(rng.uniform(0, 0.05))
            s.close()
            wait_for(partial(_cancelled, daemon, b), "B cancelled")
            wait_for(lambda: _waiters(daemon) == 0 or None, "no waiter left", timeout_s=30)
            c.call("job.cancel", id=a)
            finish(c, a)


def test_disconnect_as_the_job_ends_leaves_no_waiter_and_no_error(daemon: DaemonProcess) -> None:
    rng = random.Random()
    with daemon.client() as c:
        for _ in range(20):
            job = submit(c, command=["sleep", f"{rng.uniform(0.05, 0.3):.3f}"])
            s = _send(daemon, "job.wait", {"id": job, "timeout_s": 3600})
            time.sleep(rng.uniform(0.0, 0.4))
            s.close()
            finish(c, job)
        wait_for(lambda: _waiters(daemon) == 0 or None, "no waiter left", timeout_s=30)
    log = daemon.log()
    assert log, "the daemon's log was read"
    assert "Traceback" not in log and "connection failed" not in log, log[-3000:]


def test_web_rpc_wait_ends_when_the_client_leaves() -> None:
    with web_daemon() as web, web.daemon.client() as c:
        job = submit(c, command=["sleep", "300"])
        wait_running(c, job)
        parts = urlsplit(web.url)
        body = orjson.dumps(_frame("job.wait", {"id": job, "timeout_s": 3600}))
        socks = []
        for _ in range(5):
            s = socket.create_connection((parts.hostname or "", parts.port or 0))
            s.sendall(_http_post(body, web.host, f"Authorization: Bearer {web.token}\r\n"))
            socks.append(s)
        try:
            wait_for(lambda: _waiters(web.daemon) >= 5 or None, "5 web waiters registered")
        finally:
            for s in socks:
                s.close()
        wait_for(lambda: _waiters(web.daemon) == 0 or None, "no web waiter left", timeout_s=30)
        # A client that stays still gets its answer.
        s = socket.create_connection((parts.hostname or "", parts.port or 0))
        try:
            body = orjson.dumps(_frame("job.wait", {"id": job, "timeout_s": 60}))
            s.sendall(_http_post(body, web.host, f"Authorization: Bearer {web.token}\r\n"))
            wait_for(lambda: _waiters(web.daemon) == 1 or None, "the kept waiter registered")
            c.call("job.cancel", id=job)
            s.settimeout(30)
            data = b""
            while b"cancelled" not in data:
                chunk = s.recv(65536)
                assert chunk, data
                data += chunk
            assert data.startswith(b"HTTP/1.1 200"), data
        finally:
            s.close()
        finish(c, job)
        log = web.daemon.log()
        assert log, "the daemon's log was read"
        assert "Traceback" not in log and "connection failed" not in log, log[-3000:]


def test_a_killed_curl_leaves_no_waiter(daemon: DaemonProcess) -> None:
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("no curl on this machine")
    rng = random.Random()
    with daemon.client() as c:
        job = submit(c, command=["sleep", "300"])
        wait_running(c, job)
        body = orjson.dumps(_frame("job.wait", {"id": job, "timeout_s": 3600}))
        argv = [curl, "-s", "--unix-socket", str(daemon.socket_path), "-H",
                "Content-Type: application/json", "--data-binary", body.decode(),
                "http://localhost/rpc"]  # fmt: skip
        procs = [subprocess.Popen(argv, stdout=subprocess.DEVNULL) for _ in range(3)]
        try:
            wait_for(lambda: _waiters(daemon) >= 3 or None, "3 curl waiters registered")
            time.sleep(rng.uniform(0, 0.3))
        finally:
            for p in procs:
                p.kill()
                p.wait()
        wait_for(lambda: _waiters(daemon) == 0 or None, "no curl waiter left", timeout_s=30)
        c.call("job.cancel", id=job)
        finish(c, job)
    log = daemon.log()
    assert log, "the daemon's log was read"
    assert "Traceback" not in log and "connection failed" not in log, log[-3000:]
