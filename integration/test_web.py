"""The browser listener over real TCP: auth, CSRF, Host, /rpc, /metrics, /events, bind rules."""

from __future__ import annotations

import http.client
import os
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from hero_procd.web.auth import token_path
from integration.daemon_proc import DaemonProcess
from integration.helpers import define, finish, refused, sh, submit, wait_for
from integration.test_cli import hero_proc
from integration.web_helpers import SseStream, Web, web_daemon

PAGES = ["/", "/services", "/jobs", "/runs", "/schedules", "/secrets", "/metrics", "/events"]


@pytest.fixture(scope="module")
def web() -> Iterator[Web]:
    """One daemon with the listener for the module."""
    with web_daemon() as w:
        yield w


def _cookie(web: Web) -> str:
    status, headers, _ = web.request("GET", f"/login?token={web.token}")
    assert status == 200
    return headers["set-cookie"].split(";", 1)[0]


def _csrf(web: Web, cookie: str) -> str:
    status, _, body = web.request("GET", "/services", headers={"Cookie": cookie})
    assert status == 200
    marker = b'"X-Hero-CSRF": "'
    start = body.index(marker) + len(marker)
    return body[start : body.index(b'"', start)].decode()


@pytest.mark.parametrize("path", [*PAGES, "/static/style.css", "/jobs/1", "/nope"])
def test_without_the_token_every_path_is_401_and_nothing_else(web: Web, path: str) -> None:
    status, headers, body = web.request("GET", path)
    assert status == 401
    assert body == b"401 Unauthorized\n"
    assert "set-cookie" not in headers
    status, _, body = web.request("POST", "/rpc", body=b'{"jsonrpc":"2.0","method":"x","id":1}')
    assert (status, body) == (401, b"401 Unauthorized\n")


@pytest.mark.parametrize("auth", ["Bearer wrong", "Basic Zm9vOmJhcg==", "Bearer ", "bearer x" * 50])
def test_a_wrong_token_or_scheme_is_401(web: Web, auth: str) -> None:
    status, _, _ = web.request("GET", "/", headers={"Authorization": auth})
    assert status == 401


def test_login_with_a_wrong_token_sets_no_cookie(web: Web) -> None:
    for query in ("token=nope", "token=", "", f"token={web.token}x"):
        status, headers, _ = web.request("GET", f"/login?{query}")
        assert status == 401 and "set-cookie" not in headers, query


def test_login_sets_a_strict_httponly_cookie_that_is_not_the_token(web: Web) -> None:
    status, headers, body = web.request("GET", f"/login?token={web.token}")
    assert status == 200
    cookie = headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    assert web.token not in cookie
    assert headers["referrer-policy"] == "no-referrer"
    assert web.token.encode() not in body
    pair = cookie.split(";", 1)[0]
    for path in PAGES[:-2]:
        status, _, _ = web.request("GET", path, headers={"Cookie": pair})
        assert status == 200, path
    status, _, _ = web.request("GET", "/", headers={"Cookie": pair + "x"})
    assert status == 401


def test_every_page_answers_with_the_bearer_token(web: Web) -> None:
    for path in PAGES[:-1]:
        status, headers, _ = web.request("GET", path, bearer=True)
        assert status == 200, path
        assert headers["x-frame-options"] == "DENY"
        assert "script-src 'self'" in headers["content-security-policy"]


@pytest.mark.parametrize(
    "host", ["evil.example", "evil.example:80", "127.0.0.2", "localhost", "", "127.0.0.1:1"]
)
def test_a_foreign_host_header_is_refused_even_with_the_token(web: Web, host: str) -> None:
    """DNS rebinding: a hostile name pointing at 127.0.0.1 still carries its own Host."""
    status, _, _ = web.request("GET", "/", headers={"Host": host}, bearer=True)
    assert status in (400, 403), (host, status)
    status, headers, _ = web.request("GET", f"/login?token={web.token}", headers={"Host": host})
    assert status in (400, 403) and "set-cookie" not in headers


def test_the_listeners_own_names_are_accepted(web: Web) -> None:
    port = web.host.rsplit(":", 1)[1]
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST:{port}"):
        status, _, _ = web.request("GET", "/", headers={"Host": host}, bearer=True)
        assert status == 200, host


def test_a_cookie_post_needs_the_csrf_header(web: Web) -> None:
    with web.daemon.client() as c:
        define(c, "csrf-svc", ["sleep", "300"])
    cookie = _cookie(web)
    csrf = _csrf(web, cookie)
    for headers in (
        {"Cookie": cookie},
        {"Cookie": cookie, "X-Hero-CSRF": "wrong"},
        {"Cookie": cookie, "X-Hero-CSRF": ""},
    ):
        status, _, body = web.request("POST", "/services/csrf-svc/start", headers=headers)
        assert status == 403, headers
        rpc = b'{"jsonrpc":"2.0","method":"service.start","params":{"name":"csrf-svc"},"id":1}'
        status, _, _ = web.request("POST", "/rpc", headers=headers, body=rpc)
        assert status == 403
    with web.daemon.client() as c:
        assert c.call("service.status", name="csrf-svc")["state"] == "stopped"
    # A cross-site origin is refused even with the header.
    status, _, _ = web.request(
        "POST",
        "/services/csrf-svc/start",
        headers={"Cookie": cookie, "X-Hero-CSRF": csrf, "Origin": "http://evil.example"},
    )
    assert status == 403
    status, _, body = web.request(
        "POST", "/services/csrf-svc/start", headers={"Cookie": cookie, "X-Hero-CSRF": csrf}
    )
    assert status == 200 and b"done" in body
    with web.daemon.client() as c:
        wait_for(
            lambda: c.call("service.status", name="csrf-svc")["state"] == "running" or None,
            "csrf-svc running",
        )
        c.call("service.stop", name="csrf-svc")


def test_rpc_on_the_listener_is_the_same_json_rpc(web: Web) -> None:
    body = orjson.dumps(
        [
            {"jsonrpc": "2.0", "method": "system.ping", "id": 1},
            {"jsonrpc": "2.0", "method": "no.such", "id": 2},
            {"jsonrpc": "2.0", "method": "job.get", "params": {"id": "x"}, "id": 3},
        ]
    )
    status, headers, answer = web.request("POST", "/rpc", body=body, bearer=True)
    assert status == 200 and headers["content-type"] == "application/json"
    by_id = {a["id"]: a for a in orjson.loads(answer)}
    assert by_id[1]["result"]["pong"] is True
    assert by_id[2]["error"]["code"] == -32601
    assert by_id[3]["error"]["code"] == -32602
    status, _, answer = web.request("POST", "/rpc", body=b"{oops", bearer=True)
    assert orjson.loads(answer)["error"]["code"] == -32700


def test_bad_paths_and_ids_get_a_page_not_a_crash(web: Web) -> None:
    for path in (
        "/jobs/0", "/jobs/abc", "/jobs/99999999", "/jobs/-1", "/runs/x", "/services/none",
        "/a/b/c", "/schedules/x", "/secrets/x", "/static/nope.js", "/static/../app.py",
        "/jobs/" + "9" * 30,
    ):  # fmt: skip
        status, _, _ = web.request("GET", path, bearer=True)
        assert status == 404, path
    status, _, body = web.request("GET", "/services/%00", bearer=True)
    assert status == 400 and b"invalid" in body.lower()  # the name's own check, as over RPC
    status, _, _ = web.request("DELETE", "/", bearer=True)
    assert status == 405
    status, _, _ = web.request("GET", "/", bearer=True)
    assert status == 200


def _metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_metrics_agree_with_the_rpc_answers(web: Web) -> None:
    with web.daemon.client() as c:
        define(c, "m-ok", ["sleep", "300"])
        c.call("service.start", name="m-ok")
        ok = [submit(c, command=sh("echo out; echo err >&2")) for _ in range(3)]
        bad = submit(c, command=["false"])
        missing = submit(c, command=["/nonexistent/program"])
        for job_id in [*ok, bad, missing]:
            finish(c, job_id)
        wait_for(
            lambda: c.call("service.status", name="m-ok")["state"] == "running" or None, "m-ok"
        )
        c.call("service.restart", name="m-ok", wait_s=30)
        wait_for(
            lambda: c.call("service.status", name="m-ok")["state"] == "running" or None, "m-ok"
        )
        status, headers, body = web.request("GET", "/metrics", bearer=True)
        assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
        m = _metrics(body.decode())
        # Read after the scrape: nothing changes on an idle daemon in between.
        jobs = [j["status"] for j in c.call("job.list", limit=1000)["jobs"]]
        services = c.call("service.status_all")["services"]
        info = c.call("system.info")
    for state in ("succeeded", "failed", "queued", "running"):
        assert m[("hero_proc_jobs", (("status", state),))] == jobs.count(state), state
    for state in ("running", "stopped"):
        want = sum(1 for s in services if s["state"] == state)
        assert m[("hero_proc_services", (("state", state),))] == want
    for s in services:
        assert m[("hero_proc_service_restarts_total", (("service", s["name"]),))] == s["restarts"]
        manual = m[("hero_proc_service_manual_restarts_total", (("service", s["name"]),))]
        assert manual == s["manual_restarts"]
    assert m[("hero_proc_service_manual_restarts_total", (("service", "m-ok"),))] == 1
    assert m[("hero_proc_log_lines_dropped_total", ())] == info["dropped_log_lines_total"]
    assert m[("hero_proc_spawn_failures_total", ())] >= 1
    assert m[("hero_proc_spawns_total", ())] >= 4
    assert m[("hero_proc_log_lines_stored_total", ())] >= 6
    assert m[("hero_proc_db_bytes", ())] == os.stat(web.daemon.db_path).st_size
    assert m[("hero_proc_rpc_calls_total", (("method", "job.submit"), ("outcome", "ok")))] >= 5
    count = m[("hero_proc_rpc_duration_seconds_count", (("method", "job.submit"),))]
    assert count >= 5
    ended = sum(v for (name, _), v in m.items() if name == "hero_proc_job_duration_seconds_count")
    assert ended >= 5


def test_metrics_count_rpc_errors_by_code(web: Web) -> None:
    with web.daemon.client() as c:
        for _ in range(3):
            with pytest.raises(Exception):  # noqa: B017 (the client's own error class)
                c.call("job.get", id=987654)
    _, _, body = web.request("GET", "/metrics", bearer=True)
    m = _metrics(body.decode())
    assert m[("hero_proc_rpc_calls_total", (("method", "job.get"), ("outcome", "-32001")))] >= 3


def test_metrics_on_the_unix_socket(web: Web) -> None:
    from integration.helpers import UnixHTTPConnection

    conn = UnixHTTPConnection(web.daemon.socket_path)
    try:
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        body = resp.read().decode()
    finally:
        conn.close()
    assert resp.status == 200
    assert resp.getheader("content-type", "").startswith("text/plain; version=0.0.4")
    names = {f.name for f in text_string_to_metric_families(body)}
    assert {"hero_proc_jobs", "hero_proc_services", "hero_proc_wal_bytes"} <= names


def test_events_stream_state_changes_and_log_lines(web: Web) -> None:
    with web.daemon.client() as c:
        define(c, "ev-svc", ["sleep", "300"])
        gate = web.daemon.workdir / "ev-gate"
        script = f"echo one; while [ ! -e {gate} ]; do sleep 0.05; done; echo two"
        job_id = submit(c, command=sh(script))
        wait_for(lambda: "one" in str(c.call("job.logs", id=job_id)) or None, "first line")
        stream = SseStream(web, f"/events?topics=services,jobs&log=job:{job_id}&after=0")
        try:
            # Subscribed before the backlog is read: the backlog proves the subscription.
            name, data = stream.next()
            assert name == "log" and "one" in data and "two" not in data
            c.call("service.start", name="ev-svc")
            gate.touch()
            seen: dict[str, str] = {}
            while not ("services" in seen and "two" in seen.get("log", "")):
                name, data = stream.next()
                seen[name] = seen.get(name, "") + data
            assert ">one<" not in seen["log"]  # each line once: the live lines skip the backlog
        finally:
            stream.close()
            c.call("service.stop", name="ev-svc")


def test_a_reconnecting_stream_resumes_after_its_last_event_id(web: Web) -> None:
    with web.daemon.client() as c:
        job_id = submit(c, command=sh("echo a; echo b; echo c"))
        finish(c, job_id)
    stream = SseStream(web, f"/events?log=job:{job_id}&after=0", headers={"Last-Event-ID": "1"})
    try:
        name, data = stream.next()
    finally:
        stream.close()
    assert name == "log"
    assert 'data-seq="1"' not in data and 'data-seq="2"' in data and 'data-seq="3"' in data


def test_streams_closed_by_their_peer_do_not_disturb_a_new_one(web: Web) -> None:
    """Streams closed at once (the server sees their EOF) leave the feed working."""
    for _ in range(5):
        stream = SseStream(web, "/events?topics=jobs")
        stream.close()
    with web.daemon.client() as c:
        submit(c, command=["true"])
    stream = SseStream(web, "/events?topics=jobs")
    try:
        with web.daemon.client() as c:
            finish(c, submit(c, command=["true"]))
        assert stream.next()[0] == "jobs"
    finally:
        stream.close()


def test_remote_bind_is_refused_unless_allowed(workdir: Path) -> None:
    proc = DaemonProcess(workdir, extra_args=["--http", "0.0.0.0:0"])
    reason, _ = refused(proc.argv)
    assert "not a loopback address" in reason and "--http-allow-remote" in reason
    bad = DaemonProcess(workdir, extra_args=["--http", "nonsense"])
    reason, _ = refused(bad.argv)
    assert "HOST:PORT" in reason


def test_remote_bind_with_the_flag(workdir: Path, started: list[DaemonProcess]) -> None:
    proc = DaemonProcess(workdir, extra_args=["--http", "0.0.0.0:0", "--http-allow-remote"])
    started.append(proc.start())
    with proc.client() as c:
        ui = c.call("system.ui")
    assert ui["enabled"] and ui["url"].startswith("http://127.0.0.1:")
    assert proc.stop() == 0


def test_the_token_file_is_private_and_survives_restarts(
    workdir: Path, started: list[DaemonProcess]
) -> None:
    proc = DaemonProcess(workdir, extra_args=["--http", "127.0.0.1:0"])
    started.append(proc.start())
    with proc.client() as c:
        first = c.call("system.ui")["login_url"]
    assert proc.stop() == 0
    path = token_path(proc.db_path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert path.read_text().strip() in first
    started.append(proc.start())
    with proc.client() as c:
        second = c.call("system.ui")["login_url"]
    assert proc.stop() == 0
    assert first.split("token=")[1] == second.split("token=")[1]
    os.chmod(path, 0o644)
    reason, _ = refused(proc.argv)
    assert "readable by others" in reason


def test_open_streams_do_not_hold_up_a_stop(workdir: Path, started: list[DaemonProcess]) -> None:
    proc = DaemonProcess(workdir, extra_args=["--http", "127.0.0.1:0"])
    started.append(proc.start())
    with proc.client() as c:
        ui = c.call("system.ui")
    web = Web(proc, ui["url"], ui["login_url"], ui["login_url"].split("token=")[1])
    streams = [SseStream(web, "/events?topics=jobs,services") for _ in range(5)]
    try:
        began = time.monotonic()
        assert proc.stop() == 0
        assert time.monotonic() - began < 10  # well under the shutdown grace (10 s)
        for stream in streams:
            with pytest.raises((EOFError, ConnectionError, http.client.IncompleteRead)):
                while True:
                    stream.next()
    finally:
        for stream in streams:
            stream.close()


def test_a_port_in_use_is_a_start_up_failure_and_the_env_var_works(
    workdir: Path, started: list[DaemonProcess]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = DaemonProcess(workdir, extra_args=["--http", f"127.0.0.1:{port}"])
        reason, _ = refused(proc.argv)
        assert "browser listener" in reason and "in use" in reason
    proc = DaemonProcess(workdir, env={"HERO_PROC_HTTP": "127.0.0.1:0"})
    started.append(proc.start())
    with proc.client() as c:
        assert c.call("system.ui")["enabled"] is True
    assert proc.stop() == 0


def test_the_listener_bounds_bodies_and_slow_requests() -> None:
    env = {"HERO_PROC_FRAME_TIMEOUT_S": "1", "HERO_PROC_MAX_FRAME": "4096"}
    with web_daemon(env=env) as web:
        status, _, _ = web.request("POST", "/rpc", body=b"x" * 5000, bearer=True)
        assert status == 413
        host, port = web.host.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=20) as slow:
            slow.sendall(b"GET / HTTP/1.1\r\nHost: ")  # and then nothing more
            began = time.monotonic()
            assert slow.recv(100) == b""  # closed by the listener
            assert time.monotonic() - began < 15
        status, _, _ = web.request("GET", "/", bearer=True)
        assert status == 200


def test_the_listener_is_off_by_default(workdir: Path, started: list[DaemonProcess]) -> None:
    proc = DaemonProcess(workdir)
    started.append(proc.start())
    with proc.client() as c:
        assert c.call("system.ui") == {"enabled": False, "url": None, "login_url": None}
    off = hero_proc(proc.socket_path, "ui")
    assert off.returncode == 1 and "--http" in off.stderr and off.stdout == ""
    assert proc.stop() == 0
    assert not token_path(proc.db_path).exists()


def test_hero_proc_ui_prints_the_login_url(web: Web) -> None:
    out = hero_proc(web.daemon.socket_path, "ui")
    assert out.returncode == 0 and out.stdout.strip() == web.login_url
    as_json = orjson.loads(hero_proc(web.daemon.socket_path, "ui", "--json").stdout)
    assert as_json == {"enabled": True, "url": web.url, "login_url": web.login_url}
    status, _, _ = web.request("GET", "/login?" + out.stdout.strip().split("?", 1)[1])
    assert status == 200
