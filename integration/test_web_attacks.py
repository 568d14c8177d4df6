"""A hostile look at the browser listener: the real daemon over real TCP.

Each test is one attack: slow or oversized requests, Host and token tricks,
cross-origin posts, event streams opened by the hundred or never read,
markup smuggled in through names and output, RPC method names invented to
blow up the metrics' labels. What they check is what the attacker must not
get: a held connection, a request served, memory or descriptors kept.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import os
import socket
import struct
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from integration.daemon_proc import DaemonProcess
from integration.helpers import define, finish, submit, wait_for
from integration.web_helpers import SseStream, Web, web_daemon


@pytest.fixture(scope="module")
def web() -> Iterator[Web]:
    """One daemon with the listener for the module."""
    with web_daemon() as w:
        yield w


def _pid(web: Web) -> int:
    assert web.daemon.proc is not None
    return web.daemon.proc.pid


def _fds(web: Web) -> int:
    return len(os.listdir(f"/proc/{_pid(web)}/fd"))


def _rss(web: Web) -> int:
    for line in Path(f"/proc/{_pid(web)}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _connect(web: Web, timeout: float = 30.0) -> socket.socket:
    host, port = web.host.rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=timeout)


def _settle_fds(web: Web, baseline: int, what: str) -> None:
    """Wait until the daemon holds no more descriptors than at `baseline` (+2 slack for
    a reader or a WAL file opened meanwhile)."""
    wait_for(lambda: True if _fds(web) <= baseline + 2 else None, what)


# -- slow and oversized requests ------------------------------------------------------


def test_a_request_head_dribbled_a_byte_at_a_time_is_cut_off() -> None:
    """Slowloris: one byte per half second never lets a per-read timeout fire; the
    request as a whole must still come within the frame timeout."""
    with web_daemon(env={"HERO_PROC_FRAME_TIMEOUT_S": "2"}) as web:
        head = f"GET / HTTP/1.1\r\nHost: {web.host}\r\nX-Slow: {'a' * 200}".encode()
        with _connect(web) as slow:
            began = time.monotonic()
            closed_after = None
            for byte in head:
                try:
                    slow.sendall(bytes([byte]))
                except (BrokenPipeError, ConnectionResetError):
                    closed_after = time.monotonic() - began
                    break
                time.sleep(0.5)
                if time.monotonic() - began > 20:
                    break
            assert closed_after is not None, "a dribbled head held its connection for 20 s"
            assert closed_after < 10
        status, _, _ = web.request("GET", "/", bearer=True)
        assert status == 200


def test_an_oversized_head_is_refused_and_the_listener_serves_on(web: Web) -> None:
    with _connect(web) as conn:
        conn.sendall(f"GET / HTTP/1.1\r\nHost: {web.host}\r\nX-Big: ".encode())
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            conn.sendall(b"a" * 200_000)
        answer = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := conn.recv(65536):
                answer += chunk
    assert answer == b"" or answer.startswith(b"HTTP/1.1 431") or b" 400 " in answer[:20]
    assert web.request("GET", "/", bearer=True)[0] == 200


# -- Host, token, cookie, CSRF --------------------------------------------------------


def _hosts(web: Web) -> list[str]:
    port = web.host.rsplit(":", 1)[1]
    return [
        f"127.0.0.1.:{port}",  # trailing dot: another name to a resolver
        f"localhost.:{port}",
        f"127.0.0.1:{port}.",
        f"127.0.0.1:0{port}",
        f"127.0.0.1:{port}:{port}",
        f"127.1:{port}",
        f"0x7f.0.0.1:{port}",
        f"2130706433:{port}",
        f"evil.example@127.0.0.1:{port}",
        f"127.0.0.1:{port}@evil.example",
        f"[::ffff:127.0.0.1]:{port}",
        f"evil.example:{port}",
        f"127.0.0.1 :{port}",
        "127.0.0.1",
        "localhost",
        f"::1:{port}",
    ]


def test_host_header_tricks_are_refused(web: Web) -> None:
    for host in _hosts(web):
        status, headers, _ = web.request("GET", "/", headers={"Host": host}, bearer=True)
        assert status in (400, 403), (host, status)
        status, headers, _ = web.request("GET", f"/login?token={web.token}", headers={"Host": host})
        assert status in (400, 403) and "set-cookie" not in headers, host


def test_ipv6_literals_and_case_of_the_listeners_own_names(web: Web) -> None:
    port = web.host.rsplit(":", 1)[1]
    for host in (f"[::1]:{port}", f"LocalHost:{port}", f"[0:0:0:0:0:0:0:1]:{port}"):
        status, _, _ = web.request("GET", "/", headers={"Host": host}, bearer=True)
        # [::1] names the loopback listener; the long form of it is not a name we list.
        assert status == (403 if host.startswith("[0:") else 200), host


def _cookie(web: Web) -> str:
    status, headers, _ = web.request("GET", f"/login?token={web.token}")
    assert status == 200
    return headers["set-cookie"].split(";", 1)[0]


def test_the_token_or_cookie_in_the_wrong_place_is_401(web: Web) -> None:
    cookie_value = _cookie(web).split("=", 1)[1]
    for path, headers in (
        (f"/?token={web.token}", {}),
        (f"/services?token={web.token}", {}),
        ("/", {"Cookie": f"hero_session={web.token}"}),
        ("/", {"Cookie": f"HERO_SESSION={cookie_value}"}),
        ("/", {"Cookie": f"hero_session={cookie_value[:-1]}0"}),
        ("/", {"Cookie": f"other={cookie_value}"}),
        ("/", {"Authorization": f"Bearer {cookie_value}"}),
        ("/", {"Authorization": f"Token {web.token}"}),
        ("/", {"Authorization": web.token}),
        ("/", {"X-Hero-CSRF": web.token}),
        ("/", {"Authorization": "Bearer wrong", "Cookie": f"hero_session={cookie_value}"}),
        ("/login", {"Cookie": f"hero_session={cookie_value}"}),  # login wants the token
    ):
        status, answer, _ = web.request("GET", path, headers=headers)
        assert status == 401, (path, headers)
        assert "set-cookie" not in answer


def test_cross_origin_posts_are_refused_whatever_they_carry(web: Web) -> None:
    with web.daemon.client() as c:
        define(c, "xorigin", ["sleep", "300"])
    cookie = _cookie(web)
    _, _, page = web.request("GET", "/services", headers={"Cookie": cookie})
    marker = b'"X-Hero-CSRF": "'
    start = page.index(marker) + len(marker)
    csrf = page[start : page.index(b'"', start)].decode()
    port = web.host.rsplit(":", 1)[1]
    for origin in (
        "null",
        "http://evil.example",
        f"http://127.0.0.1:{port}.evil.example",
        f"http://evil.example/127.0.0.1:{port}",
        f"http://127.0.0.2:{port}",
    ):
        for path, body in (
            ("/services/xorigin/start", b""),
            ("/rpc", b'{"jsonrpc":"2.0","method":"service.start","params":{"name":"xorigin"}}'),
        ):
            for auth in ({"Cookie": cookie, "X-Hero-CSRF": csrf}, {"Cookie": cookie}):
                status, _, _ = web.request(
                    "POST", path, body=body, headers={**auth, "Origin": origin}
                )
                assert status == 403, (origin, path, auth)
    # A form post (what a cross-site page can send without a preflight) with the cookie.
    status, _, _ = web.request(
        "POST",
        "/services/xorigin/start",
        body=b"x=1",
        headers={"Cookie": cookie, "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert status == 403
    with web.daemon.client() as c:
        assert c.call("service.status", name="xorigin")["state"] == "stopped"
        c.call("service.delete", name="xorigin")


def test_static_files_cannot_be_walked_out_of(web: Web) -> None:
    for path in (
        "/static/../app.py",
        "/static/..%2fapp.py",
        "/static/%2e%2e/%2e%2e/pyproject.toml",
        "/static/..%5c..%5capp.py",
        "/static//etc/passwd",
        "/static/style.css/..",
        "/static/style.css%00.js",
        "/static/LICENSES.txt",
        "/static/",
        "/static",
    ):
        status, _, body = web.request("GET", path, bearer=True)
        assert status in (400, 404), path
        assert b"import " not in body and b"root:" not in body
    status, headers, _ = web.request("GET", "/static/style.css", bearer=True)
    assert status == 200 and headers["content-type"].startswith("text/css")


def test_connections_that_send_nothing_cannot_lock_the_dashboard_out(web: Web) -> None:
    """Any local user can connect, before any auth: connections that send nothing, half
    a head, or a head and part of its body (each kind past the listener's 256 together,
    the last alone) must not keep a request with the token out."""
    held: list[socket.socket] = []
    try:
        slow_body = (
            f"POST /rpc HTTP/1.1\r\nHost: {web.host}\r\nContent-Length: 1000\r\n\r\n{{"
        ).encode()
        half_head = f"GET / HTTP/1.1\r\nHost: {web.host}\r\nX-Hang".encode()
        for i in range(560):
            conn = _connect(web)
            if i < 150:
                conn.sendall(half_head if i % 2 else b"")
            else:  # a whole head, and a body that never comes: enough to fill the cap
                conn.sendall(slow_body)
            held.append(conn)
        for _ in range(5):
            status, _, _ = web.request("GET", "/", bearer=True, timeout=10)
            assert status == 200
        # An open stream is busy, not waiting: it is never the one closed for a newcomer.
        stream = SseStream(web, "/events?topics=jobs")
        try:
            for _ in range(300):
                conn = _connect(web)
                held.append(conn)
            with web.daemon.client() as c:
                finish(c, submit(c, command=["true"]))
            assert stream.next()[0] == "jobs"
        finally:
            stream.close()
        assert _fds(web) < 256 + 64  # the cap holds: the held ones were closed, not kept
    finally:
        for conn in held:
            conn.close()


# -- event streams: many, abandoned, never read --------------------------------------


def test_many_event_streams_opened_and_dropped_leak_no_descriptors(web: Web) -> None:
    """Streams closed politely, reset (RST), or dropped before their answer leave no fd,
    task or subscription behind: the descriptors come back to where they were."""
    streams = [SseStream(web, "/events?topics=jobs") for _ in range(3)]
    for s in streams:
        s.close()
    _settle_fds(web, 10_000, "warm-up")
    baseline = _fds(web)
    for rnd in range(3):
        streams = [
            SseStream(web, f"/events?topics=jobs,services&log=job:{i + 1}") for i in range(40)
        ]
        assert _fds(web) >= baseline + 30
        for i, stream in enumerate(streams):
            if (i + rnd) % 2:
                sock = stream.conn.sock
                assert sock is not None
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            stream.close()
        raw = []
        for _ in range(20):  # asked for, and gone before reading a byte of the answer
            conn = _connect(web)
            conn.sendall(
                f"GET /events?topics=jobs HTTP/1.1\r\nHost: {web.host}\r\n"
                f"Authorization: Bearer {web.token}\r\n\r\n".encode()
            )
            raw.append(conn)
        for conn in raw:
            conn.close()
        _settle_fds(web, baseline, f"the daemon's descriptors back to {baseline} (round {rnd})")
    # The feed still fans out to a new stream.
    stream = SseStream(web, "/events?topics=jobs")
    try:
        with web.daemon.client() as c:
            finish(c, submit(c, command=["true"]))
        assert stream.next()[0] == "jobs"
    finally:
        stream.close()


def _flood_growth(stalled: int) -> int:
    """How much the daemon's RSS grows while a job writes 6000 lines of 16 KiB (of '"',
    six times longer escaped), with `stalled` streams tailing them that read nothing.
    The daemon must then still answer, and stop at once."""
    with web_daemon() as web:
        flood = [
            sys.executable,
            "-c",
            "import sys, time\n"
            "line = '\"' * 16000 + '\\n'\n"
            "for _ in range(6000): sys.stdout.write(line)\n"
            "sys.stdout.flush(); time.sleep(300)",
        ]
        conns = [_connect(web) for _ in range(stalled)]
        for conn in conns:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        before = _rss(web)
        try:
            with web.daemon.client() as c:
                job = submit(c, command=flood)
                for conn in conns:
                    conn.sendall(
                        f"GET /events?log=job:{job} HTTP/1.1\r\nHost: {web.host}\r\n"
                        f"Authorization: Bearer {web.token}\r\n\r\n".encode()
                    )

                def flooded() -> bool | None:
                    got = c.call("job.logs", id=job, after_seq=5999, limit=1)
                    return True if got["lines"] else None

                wait_for(flooded, "the job's 6000 lines stored", timeout_s=120)
                grown = _rss(web) - before
                assert c.call("system.ping")["pong"] is True
                # Half of them go away (reset) while their streams wait on a full buffer:
                # their descriptors are let go; the others stay open through the stop.
                held = _fds(web)
                for conn in conns[: stalled // 2]:
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    conn.close()
                wait_for(
                    lambda: True if _fds(web) <= held - stalled // 2 else None,
                    "the descriptors of the reset streams let go",
                )
                c.call("job.cancel", id=job)
            assert web.request("GET", "/", bearer=True)[0] == 200
        finally:
            began = time.monotonic()
            assert web.daemon.stop() == 0
            assert time.monotonic() - began < 15
            for conn in conns:
                conn.close()
    return grown


def test_a_stream_that_never_reads_holds_bounded_memory_and_no_stop() -> None:
    """Backpressure: what waits for a stream that reads nothing stays bounded (the stream
    is told to reload its tail instead); measured against the same flood with no stream,
    in the same run. Eight such streams: what one would hold unbounded (~100 MiB before)
    stands well clear of the noise of the flood itself (tens of MiB)."""
    alone = _flood_growth(stalled=0)
    stalled = _flood_growth(stalled=8)
    print(f"RSS growth: {alone >> 20} MiB alone, {stalled >> 20} MiB with 8 stalled streams")
    assert stalled - alone < 160 * 1024 * 1024, (stalled >> 20, alone >> 20)


# -- markup smuggled in ---------------------------------------------------------------

PAYLOAD = "<img src=x onerror=alert(1)>\"'><script>alert(2)</script>&amp;"


def test_markup_in_output_commands_and_keys_is_escaped_everywhere(web: Web) -> None:
    with web.daemon.client() as c:
        job = submit(
            c,
            command=["printf", "%s\\n%s\\n", PAYLOAD, "data: event: x"],
            tags=["xss"],
        )
        finish(c, job)
        run = c.call(
            "run.submit",
            jobs=[{"key": "a", "command": ["echo", PAYLOAD]}, {"key": "b", "command": ["true"],
                  "depends_on": ["a"]}],
        )["id"]  # fmt: skip
        finish(c, c.call("run.get", id=run)["jobs"][0]["id"])
    for path in (f"/jobs/{job}", "/jobs", "/jobs?tag=xss", f"/runs/{run}", "/"):
        status, _, body = web.request("GET", path, bearer=True)
        assert status == 200, path
        assert b"<script>alert" not in body and b"<img src=x" not in body, path
    status, _, body = web.request("GET", f"/jobs/{job}", bearer=True)
    assert b"&lt;img src=x onerror=alert(1)&gt;" in body
    # Reflected: a query value in the jobs filter and a path in the error page.
    status, _, body = web.request("GET", "/jobs?tag=%3Cscript%3Ealert(3)%3C/script%3E", bearer=True)
    assert b"<script>alert(3)" not in body
    status, _, body = web.request("GET", "/nope%3Cscript%3Ealert(4)%3C/script%3E", bearer=True)
    assert status == 404 and b"<script>alert(4)" not in body
    # Over SSE, a line cannot end its event early nor start one of its own.
    stream = SseStream(web, f"/events?log=job:{job}")
    try:
        name, data = stream.next()
    finally:
        stream.close()
    assert name == "log" and "\n" not in data
    assert "<img" not in data and "&lt;img" in data


# -- metrics ---------------------------------------------------------------------------


def test_invented_rpc_method_names_add_no_metric_series(web: Web) -> None:
    batch = [{"jsonrpc": "2.0", "method": f"evil.m{i}-{'x' * 50}", "id": i} for i in range(300)]
    status, _, answer = web.request("POST", "/rpc", body=orjson.dumps(batch), bearer=True)
    assert status == 200
    assert {a["error"]["code"] for a in orjson.loads(answer)} == {-32601}
    with web.daemon.client() as c:
        for i in range(20):
            with pytest.raises(Exception):  # noqa: B017 - any error: the name is unknown
                c.call(f"sock.evil{i}")
    status, _, text = web.request("GET", "/metrics", bearer=True)
    assert status == 200
    assert b"evil" not in text
    methods = set()
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            if "method" in sample.labels:
                methods.add(sample.labels["method"])
    from hero_procd.rpc.registry import load_methods

    assert methods <= set(load_methods())


def _scrape(web: Web) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, _, body = web.request("GET", "/metrics", bearer=True)
    assert status == 200
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_metrics_under_load_parse_only_grow_and_add_up_to_the_rpc_answers() -> None:
    """Scraped while clients call and jobs run: every scrape parses, counters never go
    back, and once the load is over every figure is exactly what the RPC says."""
    pings = ("hero_proc_rpc_calls_total", (("method", "system.ping"), ("outcome", "ok")))
    spawns = ("hero_proc_spawns_total", ())
    jobs_total = 200
    with web_daemon() as web:
        before = _scrape(web)
        stop = threading.Event()
        seen: list[tuple[float, float, float]] = []
        errors: list[BaseException] = []

        def scraper() -> None:
            try:
                while not stop.is_set():
                    m = _scrape(web)
                    ended = sum(
                        v for (n, _), v in m.items() if n == "hero_proc_job_duration_seconds_count"
                    )
                    seen.append((m.get(pings, 0.0), m.get(spawns, 0.0), ended))
            except BaseException as exc:  # reported below, in the test's thread
                errors.append(exc)

        def pinger(over_http: bool) -> None:
            try:
                if over_http:
                    body = b'{"jsonrpc":"2.0","method":"system.ping","id":1}'
                    for _ in range(100):
                        assert web.request("POST", "/rpc", body=body, bearer=True)[0] == 200
                else:
                    with web.daemon.client() as c:
                        for _ in range(100):
                            c.call("system.ping")
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=scraper)]
        threads += [threading.Thread(target=pinger, args=(n == 0,)) for n in range(4)]
        for t in threads:
            t.start()
        try:
            with web.daemon.client() as c:
                ids = c.call(
                    "job.submit_batch", jobs=[{"command": ["true"]} for _ in range(jobs_total)]
                )["submitted"]
                for job_id in ids:
                    finish(c, job_id)
        finally:
            for t in threads[1:]:
                t.join(120)
            stop.set()
            threads[0].join(120)
        assert not errors, errors
        assert len(seen) >= 2
        for earlier, later in itertools.pairwise(seen):
            assert all(b >= a for a, b in zip(earlier, later, strict=True)), (earlier, later)
        after = _scrape(web)
        with web.daemon.client() as c:
            listed = c.call("job.list", limit=1000)["jobs"]
        assert after[pings] - before.get(pings, 0.0) == 400
        assert after[spawns] - before.get(spawns, 0.0) == jobs_total
        assert after[("hero_proc_jobs", (("status", "succeeded"),))] == len(listed) == jobs_total
        ended = sum(v for (n, _), v in after.items() if n == "hero_proc_job_duration_seconds_count")
        assert ended == jobs_total


def test_an_ipv6_loopback_listener_answers_its_names_and_refuses_others(
    workdir: Path, started: list[DaemonProcess]
) -> None:
    proc = DaemonProcess(workdir, extra_args=["--http", "[::1]:0"])
    started.append(proc.start())
    with proc.client() as c:
        ui = c.call("system.ui")
    assert ui["url"].startswith("http://[::1]:")
    port = int(ui["url"].rsplit(":", 1)[1].strip("/"))
    token = ui["login_url"].split("token=", 1)[1]

    def get(host: str) -> int:
        conn = http.client.HTTPConnection("::1", port, timeout=30)
        try:
            conn.request("GET", "/", headers={"Host": host, "Authorization": f"Bearer {token}"})
            return conn.getresponse().status
        finally:
            conn.close()

    for host in (f"[::1]:{port}", f"localhost:{port}", f"[::1]:{port}".upper()):
        assert get(host) == 200, host
    for host in (f"[::1]:{port + 1}", f"::1:{port}", f"[::1].:{port}", f"[::2]:{port}", "[::1]"):
        assert get(host) in (400, 403), host
    assert proc.stop() == 0
