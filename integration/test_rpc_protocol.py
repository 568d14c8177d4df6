"""The wire: NDJSON JSON-RPC and HTTP/1.1 on the real daemon's Unix socket."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from integration.daemon_proc import DaemonProcess
from integration.helpers import UnixHTTPConnection, daemon_running

FRAME_LIMIT = 65536
IO_TIMEOUT_S = 10.0


@pytest.fixture(scope="module")
def small() -> Iterator[DaemonProcess]:
    """One daemon for this module, started with a 64 KiB frame limit."""
    with daemon_running(env={"HERO_PROC_MAX_FRAME": str(FRAME_LIMIT)}) as proc:
        yield proc


class Raw:
    """A raw AF_UNIX stream connection that speaks bytes and reads lines or HTTP responses."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(IO_TIMEOUT_S)
        self.sock.connect(str(path))
        self.buf = bytearray()

    def send(self, data: bytes) -> None:
        """Write all of `data`."""
        self.sock.sendall(data)

    def _fill(self) -> bool:
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            return False
        self.buf += chunk
        return True

    def line(self) -> Any:
        """The next newline-terminated JSON answer, parsed."""
        while b"\n" not in self.buf:
            if not self._fill():
                raise AssertionError(f"connection closed; unread: {bytes(self.buf)!r}")
        raw, _, rest = bytes(self.buf).partition(b"\n")
        self.buf = bytearray(rest)
        return json.loads(raw)

    def until(self, marker: bytes) -> bytes:
        """Everything up to and including `marker`."""
        while marker not in self.buf:
            if not self._fill():
                raise AssertionError(f"connection closed; unread: {bytes(self.buf)!r}")
        head, _, rest = bytes(self.buf).partition(marker)
        self.buf = bytearray(rest)
        return head + marker

    def exactly(self, n: int) -> bytes:
        """The next `n` bytes."""
        while len(self.buf) < n:
            if not self._fill():
                raise AssertionError("connection closed mid-body")
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def http_response(self) -> tuple[int, dict[str, str], bytes]:
        """(status, headers, body) of the next HTTP response (Content-Length framed or empty)."""
        head = self.until(b"\r\n\r\n").decode("latin-1")
        status_line, *lines = head[:-4].split("\r\n")
        status = int(status_line.split(" ")[1])
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        body = self.exactly(int(headers.get("content-length", "0")))
        return status, headers, body

    def at_eof(self) -> bool:
        """True if the daemon closes the connection with nothing more sent."""
        if self.buf:
            return False
        try:
            return not self._fill()
        except ConnectionResetError:
            return True

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()


@pytest.fixture
def raw(small: DaemonProcess) -> Iterator[Raw]:
    """A raw connection to the module's daemon."""
    conn = Raw(small.socket_path)
    try:
        yield conn
    finally:
        conn.close()


def req(method: str, req_id: Any = None, params: Any = None, *, notify: bool = False) -> bytes:
    """One JSON-RPC request object as JSON bytes (no newline)."""
    doc: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        doc["params"] = params
    if not notify:
        doc["id"] = req_id
    return json.dumps(doc).encode()


def ping_ok(path: Path) -> None:
    """Assert a fresh connection to `path` gets a pong."""
    conn = Raw(path)
    try:
        conn.send(req("system.ping", "fresh") + b"\n")
        answer = conn.line()
    finally:
        conn.close()
    assert answer["id"] == "fresh"
    assert answer["result"]["pong"] is True


def assert_error(answer: Any, code: int, req_id: Any) -> dict[str, Any]:
    """Assert `answer` is a JSON-RPC error with `code` and `id`; its error object."""
    assert answer["jsonrpc"] == "2.0"
    assert "result" not in answer, answer
    assert answer["id"] == req_id, answer
    err: dict[str, Any] = answer["error"]
    assert err["code"] == code, answer
    assert isinstance(err["message"], str) and err["message"]
    return err


# -- newline-delimited JSON-RPC ---------------------------------------------------


def test_single_call(raw: Raw) -> None:
    """One request, one answer with the same id."""
    raw.send(req("system.ping", 42) + b"\n")
    answer = raw.line()
    assert answer == {"jsonrpc": "2.0", "result": answer["result"], "id": 42}
    assert answer["result"]["pong"] is True
    assert isinstance(answer["result"]["version"], str)


def test_string_and_null_ids_are_echoed(raw: Raw) -> None:
    """Ids may be strings or null; each answer carries its request's id."""
    raw.send(req("system.ping", "abc") + b"\n" + req("system.ping", None) + b"\n")
    assert raw.line()["id"] == "abc"
    second = raw.line()
    assert second["id"] is None
    assert second["result"]["pong"] is True


def test_batch_with_notification_and_unknown_method(raw: Raw) -> None:
    """A batch answers each request with an id (in any order), nothing for notifications."""
    batch = [
        json.loads(req("system.ping", notify=True)),
        json.loads(req("no.such_method", 2)),
        json.loads(req("system.ping", 3)),
        json.loads(req("no.such_notification", notify=True)),
    ]
    raw.send(json.dumps(batch).encode() + b"\n")
    answers = raw.line()
    assert isinstance(answers, list)
    by_id = {a["id"]: a for a in answers}
    assert sorted(by_id) == [2, 3], answers
    assert_error(by_id[2], -32601, 2)
    assert by_id[3]["result"]["pong"] is True


def test_batch_of_notifications_only_gets_no_answer(raw: Raw) -> None:
    """A batch of only notifications is answered with nothing at all."""
    batch = [json.loads(req("system.ping", notify=True)) for _ in range(3)]
    raw.send(json.dumps(batch).encode() + b"\n" + req("system.ping", "after") + b"\n")
    # Answers come in request order: had the batch been answered, its line would come first.
    assert raw.line()["id"] == "after"


def test_single_notification_gets_no_answer(raw: Raw) -> None:
    """A notification, even of an unknown method, is never answered."""
    raw.send(req("system.ping", notify=True) + b"\n" + req("nope.nope", notify=True) + b"\n")
    raw.send(req("system.ping", 9) + b"\n")
    assert raw.line()["id"] == 9


def test_empty_batch(raw: Raw) -> None:
    """`[]` is an invalid request."""
    raw.send(b"[]\n")
    assert_error(raw.line(), -32600, None)


def test_garbage_then_connection_and_daemon_still_answer(raw: Raw, small: DaemonProcess) -> None:
    """Bytes that are not JSON get a parse error; the same connection and new ones keep working."""
    raw.send(b"\xff\xfe this is {not json\n")
    err = assert_error(raw.line(), -32700, None)
    assert "problem" in err["data"]
    raw.send(b'{"jsonrpc": "2.0", "method": \n')  # truncated JSON
    assert_error(raw.line(), -32700, None)
    raw.send(req("system.ping", 1) + b"\n")
    assert raw.line()["result"]["pong"] is True
    ping_ok(small.socket_path)


@pytest.mark.parametrize(
    ("frame", "req_id", "problem_word"),
    [
        (b"5", None, "object"),
        (b'"system.ping"', None, "object"),
        (b'{"jsonrpc": "1.0", "method": "system.ping", "id": 7}', 7, "jsonrpc"),
        (b'{"method": "system.ping", "id": 8}', 8, "jsonrpc"),
        (b'{"jsonrpc": "2.0", "method": 5, "id": 9}', 9, "method"),
        (b'{"jsonrpc": "2.0", "method": "system.ping", "id": [1]}', None, "id"),
        (b'{"jsonrpc": "2.0", "method": "system.ping", "id": {"a": 1}}', None, "id"),
        (b'{"jsonrpc": "2.0", "method": "system.ping", "id": true}', None, "id"),
        (b'{"jsonrpc": "2.0", "method": "system.ping", "params": 3, "id": 10}', 10, "params"),
    ],
)
def test_invalid_request(raw: Raw, frame: bytes, req_id: Any, problem_word: str) -> None:
    """Structurally wrong requests get -32600 naming the problem (id echoed only when valid)."""
    raw.send(frame + b"\n")
    err = assert_error(raw.line(), -32600, req_id)
    assert problem_word in err["data"]["problem"]


def test_batch_item_that_is_not_an_object(raw: Raw) -> None:
    """A non-object inside a batch gets its own -32600; the valid items are still served."""
    raw.send(b"[1, " + req("system.ping", "ok") + b"]\n")
    answers = raw.line()
    assert len(answers) == 2
    errors = [a for a in answers if "error" in a]
    results = [a for a in answers if "result" in a]
    assert len(errors) == 1 and errors[0]["error"]["code"] == -32600
    assert results[0]["id"] == "ok"


def test_wrong_typed_param(raw: Raw) -> None:
    """`job.get` with a string id: -32602 naming the field."""
    raw.send(req("job.get", 1, {"id": "x"}) + b"\n")
    err = assert_error(raw.line(), -32602, 1)
    assert err["data"]["field"] == "id"
    assert "integer" in err["data"]["problem"]


def test_missing_required_param(raw: Raw) -> None:
    """`job.get` without an id: -32602 naming the field."""
    raw.send(req("job.get", 1, {}) + b"\n")
    err = assert_error(raw.line(), -32602, 1)
    assert err["data"]["field"] == "id"


def test_positional_params_rejected(raw: Raw) -> None:
    """Params by position are refused with -32602."""
    raw.send(req("job.get", 2, [1]) + b"\n")
    err = assert_error(raw.line(), -32602, 2)
    assert "array" in err["data"]["problem"] or "object" in err["data"]["problem"]


def test_unknown_field_named(raw: Raw) -> None:
    """A field no method reads is refused, by name."""
    raw.send(req("system.ping", 3, {"bogus_field": 1}) + b"\n")
    err = assert_error(raw.line(), -32602, 3)
    assert err["data"]["field"] == "bogus_field"
    raw.send(req("job.submit", 4, {"command": ["/bin/true"], "comand": ["x"]}) + b"\n")
    err = assert_error(raw.line(), -32602, 4)
    assert err["data"]["field"] == "comand"


def test_pipelined_requests_answered_in_order(raw: Raw) -> None:
    """Many requests in one write are all answered, in request order."""
    methods = ["system.ping", "system.info", "job.list", "service.status_all", "rpc.discover"]
    frames = [req(methods[i % len(methods)], i) for i in range(40)]
    raw.send(b"\n".join(frames) + b"\n")
    ids = [raw.line()["id"] for _ in frames]
    assert ids == list(range(40))


def test_request_split_across_writes(raw: Raw, small: DaemonProcess) -> None:
    """A request cut into pieces (even inside a UTF-8 character) is read whole."""
    frame = req("job.submit", "split", {"command": ["/bin/echo", "h\u00e9llo w\u00f6rld"]}) + b"\n"
    frame = json.dumps(json.loads(frame), ensure_ascii=False).encode() + b"\n"
    cut = frame.index("\u00e9".encode()) + 1  # between the two bytes of the é
    pieces = [frame[:5], frame[5:cut], frame[cut : cut + 3], frame[cut + 3 :]]
    for piece in pieces:
        raw.send(piece)
        time.sleep(0.02)  # make separate reads likely; correctness does not depend on it
    answer = raw.line()
    assert answer["id"] == "split", answer
    job_id = answer["result"]["id"]
    raw.send(req("job.get", "get", {"id": job_id}) + b"\n")
    assert raw.line()["result"]["command"] == ["/bin/echo", "h\u00e9llo w\u00f6rld"]


def test_last_request_without_newline_answered_at_eof(small: DaemonProcess) -> None:
    """A final request without its newline is still answered when the client shuts down writing."""
    conn = Raw(small.socket_path)
    try:
        conn.send(req("system.ping", "eof"))
        conn.sock.shutdown(socket.SHUT_WR)
        assert conn.line()["id"] == "eof"
        assert conn.at_eof()
    finally:
        conn.close()


def test_oversized_frame_closes_connection(small: DaemonProcess) -> None:
    """A line growing past the limit gets -32600 'frame too large', then the connection closes."""
    conn = Raw(small.socket_path)
    try:
        conn.send(req("system.ping", "before") + b"\n")
        assert conn.line()["id"] == "before"
        big = b'{"jsonrpc": "2.0", "method": "system.ping", "id": 1, "pad": "' + b"x" * (
            16 * FRAME_LIMIT
        )
        # The daemon may close before taking all of it; its answer is still readable.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            conn.send(big + b'"}\n' + req("system.ping", "after") + b"\n")
        err = assert_error(conn.line(), -32600, None)
        assert err["data"]["problem"] == "frame too large"
        assert err["data"]["limit_bytes"] == FRAME_LIMIT
        assert conn.at_eof()
    finally:
        conn.close()
    ping_ok(small.socket_path)


def test_oversized_complete_line_in_one_write_is_refused(small: DaemonProcess) -> None:
    """A complete line over the limit is refused too, however the bytes arrive."""
    conn = Raw(small.socket_path)
    try:
        frame = req("job.submit", 1, {"command": ["/bin/echo", "x" * (FRAME_LIMIT + 1000)]})
        conn.send(frame + b"\n")
        err = assert_error(conn.line(), -32600, None)
        assert err["data"]["problem"] == "frame too large"
        assert conn.at_eof()
    finally:
        conn.close()
    ping_ok(small.socket_path)


def test_frame_just_under_limit_is_served(raw: Raw) -> None:
    """A frame close to (but under) the limit is an ordinary request."""
    pad = "y" * (FRAME_LIMIT - 1000)
    raw.send(req("job.submit", "big", {"command": ["/bin/echo", pad]}) + b"\n")
    answer = raw.line()
    assert answer["result"]["status"] == "queued", answer


# -- HTTP/1.1 ---------------------------------------------------------------------


@pytest.fixture
def web(small: DaemonProcess) -> Iterator[UnixHTTPConnection]:
    """An HTTP connection to the module's daemon."""
    conn = UnixHTTPConnection(small.socket_path, IO_TIMEOUT_S)
    try:
        yield conn
    finally:
        conn.close()


def post_rpc(conn: UnixHTTPConnection, body: bytes) -> tuple[int, bytes]:
    """POST `body` to /rpc; (status, body)."""
    conn.request("POST", "/rpc", body=body, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    return resp.status, resp.read()


def test_http_post_rpc(web: UnixHTTPConnection) -> None:
    """POST /rpc with a JSON-RPC body answers 200 with the JSON-RPC response."""
    status, body = post_rpc(web, req("system.ping", 1))
    assert status == 200
    assert json.loads(body)["result"]["pong"] is True


def test_http_keep_alive(web: UnixHTTPConnection) -> None:
    """Two requests travel on one HTTP connection."""
    status, body = post_rpc(web, req("system.ping", 1))
    assert status == 200 and json.loads(body)["id"] == 1
    first_sock = web.sock
    assert first_sock is not None
    status, body = post_rpc(web, req("system.info", 2))
    assert status == 200 and json.loads(body)["result"]["counts"]["schedules"] >= 0
    assert web.sock is first_sock, "the daemon closed a keep-alive connection"
    web.request("GET", "/health")
    resp = web.getresponse()
    assert resp.status == 200 and json.loads(resp.read())["status"] == "ok"
    assert web.sock is first_sock


def test_http_batch_and_errors_are_200(web: UnixHTTPConnection) -> None:
    """A batch POST answers 200 with a JSON array; JSON-RPC errors travel in a 200 too."""
    batch = b"[" + req("system.ping", 1) + b"," + req("no.such", 2) + b"]"
    status, body = post_rpc(web, batch)
    assert status == 200
    by_id = {a["id"]: a for a in json.loads(body)}
    assert by_id[1]["result"]["pong"] is True
    assert by_id[2]["error"]["code"] == -32601
    status, body = post_rpc(web, b"{nope")
    assert status == 200
    assert json.loads(body)["error"]["code"] == -32700


def test_http_notification_only_is_204(web: UnixHTTPConnection) -> None:
    """A POST holding only notifications answers 204 with no body; the connection stays usable."""
    web.request("POST", "/rpc", body=req("system.ping", notify=True))
    resp = web.getresponse()
    assert resp.status == 204
    assert resp.read() == b""
    status, _ = post_rpc(web, req("system.ping", 5))
    assert status == 200


def test_http_expect_100_continue(small: DaemonProcess) -> None:
    """With `Expect: 100-continue` the daemon says 100 before the body is sent, then answers."""
    body = json.dumps(
        {"jsonrpc": "2.0", "method": "job.submit", "id": 77,
         "params": {"command": ["/bin/echo", "z" * 4000]}}
    ).encode()  # fmt: skip
    assert len(body) > 1024
    conn = Raw(small.socket_path)
    try:
        conn.send(
            b"POST /rpc HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body)
        )
        interim = conn.until(b"\r\n\r\n")
        assert interim.startswith(b"HTTP/1.1 100"), interim
        conn.send(body)
        status, _, answer = conn.http_response()
        assert status == 200
        assert json.loads(answer)["result"]["status"] == "queued"
    finally:
        conn.close()


def test_http_health_and_openrpc(web: UnixHTTPConnection, small: DaemonProcess) -> None:
    """GET /health says ok with the daemon's pid; GET /openrpc.json is what rpc.discover returns."""
    web.request("GET", "/health")
    resp = web.getresponse()
    assert resp.status == 200
    assert resp.getheader("content-type") == "application/json"
    health = json.loads(resp.read())
    assert health["status"] == "ok"
    assert small.proc is not None and health["pid"] == small.proc.pid
    web.request("GET", "/openrpc.json")
    resp = web.getresponse()
    assert resp.status == 200
    doc = json.loads(resp.read())
    assert isinstance(doc["openrpc"], str) and isinstance(doc["methods"], list)
    status, body = post_rpc(web, req("rpc.discover", 1))
    assert status == 200
    assert json.loads(body)["result"] == doc, "GET /openrpc.json and rpc.discover differ"


def test_http_unknown_path_404_and_wrong_method_405(web: UnixHTTPConnection) -> None:
    """An unknown path is 404; a known path with the wrong method is 405."""
    web.request("GET", "/nope")
    resp = web.getresponse()
    assert resp.status == 404
    assert json.loads(resp.read())["error"] == "not found"
    web.request("GET", "/rpc")
    resp = web.getresponse()
    assert resp.status == 405
    resp.read()


def test_http_malformed_request_is_400(small: DaemonProcess) -> None:
    """A request h11 cannot parse is answered 400."""
    conn = Raw(small.socket_path)
    try:
        conn.send(b"GET /health HTTP/1.1\r\nthis is no header\r\n\r\n")
        status, _, _ = conn.http_response()
        assert status == 400
    finally:
        conn.close()
    ping_ok(small.socket_path)


def test_http_body_over_limit_is_413(small: DaemonProcess) -> None:
    """A Content-Length over the frame limit is refused with 413 before the body is read."""
    conn = Raw(small.socket_path)
    try:
        conn.send(
            b"POST /rpc HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (FRAME_LIMIT + 1)
        )
        status, _, body = conn.http_response()
        assert status == 413
        assert json.loads(body)["limit_bytes"] == FRAME_LIMIT
        assert conn.at_eof(), "the body was not read: the connection must close"
    finally:
        conn.close()
    ping_ok(small.socket_path)


def test_http_413_is_no_daemon_error(small: DaemonProcess) -> None:
    """Refusing an oversized body is routine: the daemon logs no failure or traceback for it."""
    before = len(small.log())
    conn = Raw(small.socket_path)
    try:
        conn.send(b"POST /rpc HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (10**9))
        status, _, _ = conn.http_response()
        assert status == 413
        assert conn.at_eof()
    finally:
        conn.close()
    ping_ok(small.socket_path)
    added = small.log()[before:]
    assert "Traceback" not in added and "connection failed" not in added, added


def test_http_chunked_body_over_limit_is_413(small: DaemonProcess) -> None:
    """A chunked body growing past the limit is refused with 413 too."""
    conn = Raw(small.socket_path)
    try:
        conn.send(b"POST /rpc HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        piece = b"a" * 16384
        # Refused mid-body, the daemon may close early: the 413 is already on its way.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            for _ in range(2 * FRAME_LIMIT // len(piece)):
                conn.send(b"%x\r\n%s\r\n" % (len(piece), piece))
        status, _, _ = conn.http_response()
        assert status == 413
    finally:
        conn.close()
    ping_ok(small.socket_path)


def test_curl_posts_rpc(small: DaemonProcess) -> None:
    """curl --unix-socket POSTs a JSON-RPC request (here with Expect: 100-continue too)."""
    curl = shutil.which("curl")
    assert curl is not None, "curl must be installed for this test"
    body = json.dumps(
        {"jsonrpc": "2.0", "method": "job.submit", "id": "c1",
         "params": {"command": ["/bin/echo", "q" * 3000], "tags": ["curl"]}}
    )  # fmt: skip
    out = subprocess.run(
        [curl, "-sS", "--fail", "--max-time", "20", "--unix-socket", str(small.socket_path),
         "-H", "Content-Type: application/json", "-H", "Expect: 100-continue",
         "http://x/rpc", "-d", body],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    answer = json.loads(out.stdout)
    assert answer["id"] == "c1"
    job_id = answer["result"]["id"]
    with small.client() as c:
        job = c.call("job.get", id=job_id)
    assert job["tags"] == ["curl"]
    assert job["command"][1] == "q" * 3000


# -- the socket file and peer credentials --------------------------------------------


def test_socket_mode_is_0600(daemon: DaemonProcess) -> None:
    """The socket is private to the daemon's user as soon as it exists."""
    mode = os.stat(daemon.socket_path).st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o600


_PEER_SNIPPET = r"""
import json, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(10)
out = {"connected": False, "got": "", "eof": False}
try:
    s.connect(sys.argv[1])
    out["connected"] = True
    s.sendall(b'{"jsonrpc":"2.0","method":"system.ping","id":1}\n')
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            out["eof"] = True
            break
        data += chunk
    out["got"] = data.decode("latin-1")
except (BrokenPipeError, ConnectionResetError):
    out["eof"] = True  # closed before (or while) we wrote: no answer either
except Exception as exc:
    out["error"] = repr(exc)
print(json.dumps(out))
"""


def _interpreter_for(uid: int) -> str:
    """A Python interpreter that `uid` can run (the venv's may sit under a private /root)."""
    candidates = ["/usr/bin/python3", "/usr/local/bin/python3", "/bin/python3"]
    for path in candidates:
        if not os.access(path, os.X_OK):
            continue
        probe = subprocess.run(
            [path, "-I", "-c", "pass"], user=uid, group=uid, extra_groups=[],
            capture_output=True, timeout=30, check=False,
        )  # fmt: skip
        if probe.returncode == 0:
            return path
    raise AssertionError(f"no Python interpreter usable by uid {uid} among {candidates}")


def test_peer_of_another_uid_is_refused(daemon: DaemonProcess, workdir: Path) -> None:
    """A client of another uid is disconnected unanswered; root still gets answers."""
    assert os.getuid() == 0, "this test drops privileges and must run as root"
    nobody = 65534
    os.chmod(workdir, 0o711)
    os.chmod(daemon.socket_path, 0o666)
    out = subprocess.run(
        [_interpreter_for(nobody), "-I", "-c", _PEER_SNIPPET, str(daemon.socket_path)],
        user=nobody, group=nobody, extra_groups=[],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout)
    assert seen["connected"] is True, seen
    assert "error" not in seen, seen
    assert seen["got"] == "", f"the daemon answered a foreign uid: {seen}"
    assert seen["eof"] is True
    assert "refused peer" in daemon.log()
    with daemon.client() as c:
        assert c.call("system.ping")["pong"] is True
