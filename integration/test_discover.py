"""The OpenRPC document and the health check, served by the real daemon on its socket."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from hero_procd import __version__
from hero_procd.errors import InvalidParams
from integration.daemon_proc import DaemonProcess
from integration.helpers import UnixHTTPConnection

DOC_PATH = Path(__file__).resolve().parents[1] / "rpc_schema" / "openrpc.json"


def get(conn: UnixHTTPConnection, target: str) -> tuple[int, str, Any]:
    """(status, content type, decoded JSON body) of one GET on an open connection."""
    conn.request("GET", target)
    response = conn.getresponse()
    body = response.read()
    return response.status, response.getheader("content-type", ""), json.loads(body)


def shipped_document() -> Any:
    """rpc_schema/openrpc.json as a JSON value."""
    return json.loads(DOC_PATH.read_bytes())


def test_rpc_discover_returns_the_shipped_document(daemon: DaemonProcess) -> None:
    """rpc.discover answers with rpc_schema/openrpc.json."""
    with daemon.client() as client:
        doc = client.call("rpc.discover")
    assert doc == shipped_document()
    assert doc["openrpc"] == "1.2.6"
    assert {m["name"] for m in doc["methods"]} >= {"rpc.discover", "system.ping"}


def test_rpc_discover_refuses_params(daemon: DaemonProcess) -> None:
    """rpc.discover takes no params: an unknown one is -32602 naming it."""
    with daemon.client() as client, pytest.raises(InvalidParams) as caught:
        client.call("rpc.discover", {"verbose": True})
    assert caught.value.field == "verbose"
    assert caught.value.problem == "unknown field"


def test_http_serves_the_document_and_health_on_one_connection(daemon: DaemonProcess) -> None:
    """GET /openrpc.json and GET /health over HTTP/1.1 on the Unix socket."""
    conn = UnixHTTPConnection(daemon.socket_path)
    try:
        status, content_type, doc = get(conn, "/openrpc.json")
        assert (status, content_type) == (200, "application/json")
        assert doc == shipped_document()

        # The same (kept-alive) connection answers the next request.
        status, content_type, health = get(conn, "/health")
        assert (status, content_type) == (200, "application/json")
        assert daemon.proc is not None
        assert health == {"status": "ok", "version": __version__, "pid": daemon.proc.pid}
    finally:
        conn.close()


def test_http_rpc_discover_matches_get(daemon: DaemonProcess) -> None:
    """POST /rpc with rpc.discover answers the same document."""
    conn = UnixHTTPConnection(daemon.socket_path)
    try:
        request = {"jsonrpc": "2.0", "method": "rpc.discover", "id": 7}
        conn.request(
            "POST", "/rpc", body=json.dumps(request), headers={"content-type": "application/json"}
        )
        response = conn.getresponse()
        answer = json.loads(response.read())
        assert response.status == 200
        assert answer == {"jsonrpc": "2.0", "result": shipped_document(), "id": 7}
    finally:
        conn.close()
