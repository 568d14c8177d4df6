"""HTTP on the daemon's socket held against RFC 9110/9112, one test per point (issue 9, finding 8).

Also: JSON-RPC ids that are any JSON number come back as written (finding 9),
and the OpenRPC document lists required params first (finding 10).
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import pytest

from integration.daemon_proc import DaemonProcess
from integration.helpers import daemon_running

IO_TIMEOUT_S = 10.0
PING = b'{"jsonrpc":"2.0","method":"system.ping","id":1}'


@pytest.fixture(scope="module")
def d() -> Iterator[DaemonProcess]:
    """One daemon for this module."""
    with daemon_running() as proc:
        yield proc


class Wire:
    """A raw AF_UNIX connection: bytes out, HTTP responses (Content-Length or none) in."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(IO_TIMEOUT_S)
        self.sock.connect(str(path))
        self.buf = b""

    def send(self, data: bytes) -> None:
        """Write all of `data`."""
        self.sock.sendall(data)

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        self.buf += chunk
        return bool(chunk)

    def response(self, *, head: bool = False) -> tuple[int, dict[str, str], bytes]:
        """(status, headers, body) of the next response; no body is read for a HEAD."""
        while b"\r\n\r\n" not in self.buf:
            assert self._fill(), f"closed before a response; got {self.buf!r}"
        raw_head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        status_line, *lines = raw_head.decode("latin-1").split("\r\n")
        headers: dict[str, str] = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = 0 if head else int(headers.get("content-length", "0"))
        while len(self.buf) < length:
            assert self._fill(), "closed mid-body"
        body, self.buf = self.buf[:length], self.buf[length:]
        return int(status_line.split(" ")[1]), headers, body

    def closed_by_peer(self) -> bool:
        """True if the daemon closes the connection without sending anything more."""
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
def w(d: DaemonProcess) -> Iterator[Wire]:
    """A raw connection to the module's daemon."""
    conn = Wire(d.socket_path)
    try:
        yield conn
    finally:
        conn.close()


def post(target: bytes, body: bytes, extra: bytes = b"", version: bytes = b"1.1") -> bytes:
    """A POST request with a Content-Length body."""
    return (
        b"POST %s HTTP/%s\r\nHost: x\r\nContent-Type: application/json\r\n%s"
        b"Content-Length: %d\r\n\r\n%s" % (target, version, extra, len(body), body)
    )


def still_serves(d: DaemonProcess) -> None:
    """A new connection to the daemon still gets an answer."""
    conn = Wire(d.socket_path)
    try:
        conn.send(post(b"/rpc", PING))
        status, _, body = conn.response()
        assert status == 200 and json.loads(body)["result"]["pong"] is True
    finally:
        conn.close()


# -- RFC 9110 -------------------------------------------------------------------------------


def test_head_gets_the_get_headers_and_no_body(w: Wire) -> None:
    """RFC 9110 9.3.2: HEAD is answered like GET, without content; the connection goes on."""
    w.send(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    status, get_headers, _ = w.response()
    assert status == 200
    w.send(b"HEAD /health HTTP/1.1\r\nHost: x\r\n\r\n")
    status, headers, _ = w.response(head=True)
    assert status == 200
    assert headers["content-length"] == get_headers["content-length"]
    assert headers["content-type"] == "application/json"
    # No body came: the next bytes are the next response's status line.
    w.send(b"HEAD /openrpc.json HTTP/1.1\r\nHost: x\r\n\r\n")
    status, _, _ = w.response(head=True)
    assert status == 200
    w.send(post(b"/rpc", PING))
    status, _, body = w.response()
    assert status == 200 and json.loads(body)["id"] == 1


def test_head_logs_no_traceback(w: Wire, d: DaemonProcess) -> None:
    """HEAD is routine: nothing goes wrong in the daemon."""
    before = len(d.log())
    w.send(b"HEAD /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert w.response(head=True)[0] == 200
    added = d.log()[before:]
    assert "Traceback" not in added and "connection failed" not in added, added


def test_405_names_the_allowed_methods(w: Wire) -> None:
    """RFC 9110 15.5.6: a 405 carries Allow with the target's methods."""
    w.send(b"GET /rpc HTTP/1.1\r\nHost: x\r\n\r\n")
    status, headers, _ = w.response()
    assert status == 405
    allowed = {m.strip() for m in headers["allow"].split(",")}
    assert "POST" in allowed and "GET" not in allowed
    w.send(b"DELETE /health HTTP/1.1\r\nHost: x\r\n\r\n")
    status, headers, _ = w.response()
    assert status == 405
    assert {"GET", "HEAD"} <= {m.strip() for m in headers["allow"].split(",")}


def test_unknown_method_is_501(w: Wire, d: DaemonProcess) -> None:
    """RFC 9110 9.1: a method the server does not recognize is 501, not 405."""
    w.send(b"BREW /rpc HTTP/1.1\r\nHost: x\r\n\r\n")
    status, _, _ = w.response()
    assert status == 501
    still_serves(d)


def test_every_response_has_a_date(w: Wire) -> None:
    """RFC 9110 6.6.1: an origin server with a clock sends Date, in IMF-fixdate."""
    for request in (
        b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n",
        post(b"/rpc", PING),
        post(b"/rpc", b'{"jsonrpc":"2.0","method":"system.ping"}'),  # 204
    ):
        w.send(request)
        status, headers, _ = w.response()
        assert "date" in headers, (status, headers)
        assert headers["date"].endswith(" GMT")
        assert parsedate_to_datetime(headers["date"]).tzinfo is not None


def test_invalid_host_is_400(d: DaemonProcess) -> None:
    """RFC 9112 3.2: a Host that is not uri-host[:port] is 400 (and the body is not run)."""
    for host in (b"a b", b"x/y", b"x:80:80", b"user@x", b"[::1"):
        conn = Wire(d.socket_path)
        try:
            conn.send(
                b"POST /rpc HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n\r\n%s"
                % (host, len(PING), PING)
            )
            status, headers, _ = conn.response()
            assert status == 400, host
            assert headers.get("connection") == "close"
        finally:
            conn.close()
    for host in (b"localhost", b"x:8080", b"127.0.0.1", b"[::1]:80", b""):
        conn = Wire(d.socket_path)
        try:
            conn.send(
                b"POST /rpc HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n\r\n%s"
                % (host, len(PING), PING)
            )
            assert conn.response()[0] == 200, host
        finally:
            conn.close()


def test_missing_or_doubled_host_is_400(d: DaemonProcess) -> None:
    """RFC 9112 3.2: an HTTP/1.1 request without Host, or with two, is 400."""
    for head in (
        b"GET /health HTTP/1.1\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    ):
        conn = Wire(d.socket_path)
        try:
            conn.send(head)
            assert conn.response()[0] == 400, head
        finally:
            conn.close()


# -- RFC 9112 -------------------------------------------------------------------------------


def test_absolute_form_target_is_served(w: Wire) -> None:
    """RFC 9112 3.2.2: a server accepts the absolute form (`POST http://x/rpc`)."""
    w.send(post(b"http://x/rpc", PING))
    status, _, body = w.response()
    assert status == 200 and json.loads(body)["result"]["pong"] is True
    w.send(b"GET http://localhost:80/health?x=1 HTTP/1.1\r\nHost: localhost\r\n\r\n")
    status, _, body = w.response()
    assert status == 200 and json.loads(body)["status"] == "ok"


def _hidden_submit(tag: str) -> bytes:
    return json.dumps(
        {"jsonrpc": "2.0", "method": "job.submit", "id": 9,
         "params": {"command": ["/bin/true"], "tags": [tag]}}
    ).encode()  # fmt: skip


def _jobs_tagged(d: DaemonProcess, tag: str) -> int:
    with d.client() as c:
        page = c.call("job.list", tag=tag)
    return len(page["jobs"])


AMBIGUOUS = [
    b"Content-Length: %(n)d\r\nTransfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: chunked\r\nContent-Length: %(n)d\r\n",
    b"Content-Length: 0\r\nTransfer-Encoding: chunked\r\n",
    b"Content-Length: %(n)d\r\nTransfer-Encoding: CHUNKED\r\n",
    b"Content-Length: %(n)d\r\nContent-Length: 3\r\n",
    b"Content-Length: %(n)d, 3\r\n",
    b"Content-Length: +%(n)d\r\n",
    b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: chunked, identity\r\n",
    b"Transfer-Encoding: identity\r\nContent-Length: %(n)d\r\n",
    b"Transfer-Encoding:\tchunked\r\nContent-Length: %(n)d\r\n",
    b"Transfer-Encoding : chunked\r\n",
]


@pytest.mark.parametrize("framing", AMBIGUOUS)
def test_ambiguous_framing_is_400_and_closed(d: DaemonProcess, framing: bytes) -> None:
    """RFC 9112 6.1/6.3: Content-Length with Transfer-Encoding (and kin) is 400, then close.

    The body hides a second request; it must never run.
    """
    tag = f"smuggled{AMBIGUOUS.index(framing)}"
    hidden = post(b"/rpc", _hidden_submit(tag))
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(PING), PING)
    conn = Wire(d.socket_path)
    try:
        conn.send(
            b"POST /rpc HTTP/1.1\r\nHost: x\r\n"
            + framing % {b"n": len(chunked)}
            + b"\r\n"
            + chunked
            + hidden
        )
        status, headers, _ = conn.response()
        assert status == 400, (framing, status)
        assert headers.get("connection") == "close"
        assert conn.closed_by_peer(), "the connection must close after ambiguous framing"
    finally:
        conn.close()
    assert _jobs_tagged(d, tag) == 0, "a request hidden in the body ran"


def test_chunked_not_last_is_400(d: DaemonProcess) -> None:
    """RFC 9112 6.3: `Transfer-Encoding: chunked, gzip` (chunked not final) is 400, then close."""
    conn = Wire(d.socket_path)
    try:
        conn.send(
            b"POST /rpc HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"
            b"%x\r\n%s\r\n0\r\n\r\n" % (len(PING), PING)
        )
        status, _, _ = conn.response()
        assert status == 400
        assert conn.closed_by_peer()
    finally:
        conn.close()
    still_serves(d)


def test_http_1_0_expect_100_gets_no_1xx(d: DaemonProcess) -> None:
    """RFC 9110 10.1.1: no 100 (Continue) to an HTTP/1.0 client, even if it asks."""
    conn = Wire(d.socket_path)
    try:
        conn.send(
            b"POST /rpc HTTP/1.0\r\nHost: x\r\nExpect: 100-continue\r\n"
            b"Content-Length: %d\r\n\r\n" % len(PING)
        )
        conn.sock.settimeout(0.5)
        try:
            early = conn.sock.recv(100)  # nothing may come before the body is sent
        except TimeoutError:
            early = b""
        assert early == b"", early
        conn.sock.settimeout(IO_TIMEOUT_S)
        conn.send(PING)
        status, _, body = conn.response()
        assert status == 200 and json.loads(body)["id"] == 1
        assert not conn.buf.startswith(b"HTTP/1.1 100")
    finally:
        conn.close()


def test_http_1_1_expect_100_still_gets_100(d: DaemonProcess) -> None:
    """The HTTP/1.1 counterpart: 100 before the body, then the answer."""
    conn = Wire(d.socket_path)
    try:
        conn.send(
            b"POST /rpc HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
            b"Content-Length: %d\r\n\r\n" % len(PING)
        )
        assert conn.response()[0] == 100
        conn.send(PING)
        assert conn.response()[0] == 200
    finally:
        conn.close()


def test_leading_empty_lines_are_ignored(w: Wire) -> None:
    """RFC 9112 2.2: empty lines before a request line are ignored (also between requests)."""
    w.send(b"\r\n" + post(b"/rpc", PING))
    status, _, body = w.response()
    assert status == 200 and json.loads(body)["id"] == 1
    w.send(b"\r\n\r\nGET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert w.response()[0] == 200


# -- JSON-RPC ids and the OpenRPC document --------------------------------------------------


@pytest.mark.parametrize(
    "raw_id", [b"1.5", b"1e3", b"-2.50E-3", b"0.1", b"18446744073709551616", b"1E400", b"7"]
)
def test_any_number_id_is_echoed_as_written(d: DaemonProcess, raw_id: bytes) -> None:
    """JSON-RPC 2.0: an id may be any number; the answer carries the same value back."""
    conn = Wire(d.socket_path)
    try:
        conn.send(b'{"jsonrpc":"2.0","method":"system.ping","id":%s}\n' % raw_id)
        while b"\n" not in conn.buf:
            assert conn._fill()
        line = conn.buf.split(b"\n", 1)[0]
    finally:
        conn.close()
    assert b'"id":%s' % raw_id in line, line
    assert b'"result"' in line
    assert json.loads(line)["id"] == json.loads(raw_id)


def test_number_ids_in_a_batch_and_in_errors(w: Wire) -> None:
    """Number ids survive a batch and an invalid request, over HTTP too."""
    body = (
        b'[{"jsonrpc":"2.0","method":"system.ping","id":2.25},'
        b'{"jsonrpc":"2.0","method":"no.such","id":3e2},'
        b'{"jsonrpc":"1.0","method":"system.ping","id":4.75}]'
    )
    w.send(post(b"/rpc", body))
    status, _, answer = w.response()
    assert status == 200
    assert b'"id":2.25' in answer and b'"id":3e2' in answer and b'"id":4.75' in answer
    by_id = {a["id"]: a for a in json.loads(answer)}
    assert by_id[2.25]["result"]["pong"] is True
    assert by_id[300.0]["error"]["code"] == -32601
    assert by_id[4.75]["error"]["code"] == -32600


def _required_first(method: dict[str, Any], components: dict[str, Any]) -> bool:
    flags = []
    for param in method["params"]:
        if "$ref" in param:
            param = components[param["$ref"].rsplit("/", 1)[-1]]
        flags.append(bool(param.get("required", False)))
    return flags == sorted(flags, reverse=True)


def test_openrpc_lists_required_params_first(w: Wire) -> None:
    """OpenRPC 1.2.6: required params come before optional ones (run.submit's `jobs`)."""
    w.send(b"GET /openrpc.json HTTP/1.1\r\nHost: x\r\n\r\n")
    status, _, body = w.response()
    assert status == 200
    doc = json.loads(body)
    components = doc.get("components", {}).get("contentDescriptors", {})
    wrong = [m["name"] for m in doc["methods"] if not _required_first(m, components)]
    assert wrong == []
    submit = next(m for m in doc["methods"] if m["name"] == "run.submit")
    assert submit["params"][0]["name"] == "jobs"
