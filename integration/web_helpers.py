"""The browser listener in tests: a daemon with --http, plain HTTP requests to it, SSE reads."""

from __future__ import annotations

import contextlib
import http.client
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from integration.daemon_proc import DaemonProcess
from integration.helpers import daemon_running

CHROMIUM = Path(os.environ.get("HERO_PROC_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-quic",
    "--disable-sync",
]


@dataclass
class Web:
    """A daemon's listener: where it is and its token."""

    daemon: DaemonProcess
    url: str
    login_url: str
    token: str

    @property
    def host(self) -> str:
        """host:port of the listener, as a Host header names it."""
        return urlsplit(self.url).netloc

    def request(
        self,
        method: str,
        path: str,
        *,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
        bearer: bool = False,
        timeout: float = 30.0,
    ) -> tuple[int, dict[str, str], bytes]:
        """One request on a fresh connection: (status, headers lower-cased, body)."""
        parts = urlsplit(self.url)
        conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=timeout)
        try:
            sent = {"Host": self.host, **(headers or {})}
            if bearer:
                sent["Authorization"] = f"Bearer {self.token}"
            conn.request(method, path, body=body, headers=sent)
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()


@contextlib.contextmanager
def web_daemon(
    extra_args: list[str] | None = None, env: dict[str, str] | None = None
) -> Iterator[Web]:
    """A daemon with the browser listener on a free loopback port."""
    args = ["--http", "127.0.0.1:0", *(extra_args or [])]
    with daemon_running(extra_args=args, env=env) as proc, proc.client() as c:
        ui: dict[str, Any] = c.call("system.ui")
        login = str(ui["login_url"])
        yield Web(proc, str(ui["url"]), login, login.split("token=", 1)[1])


class SseStream:
    """An SSE stream opened with the token, read event by event."""

    def __init__(
        self, web: Web, path: str, timeout: float = 30.0, headers: dict[str, str] | None = None
    ) -> None:
        parts = urlsplit(web.url)
        self.conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=timeout)
        headers = {"Host": web.host, "Authorization": f"Bearer {web.token}", **(headers or {})}
        self.conn.request("GET", path, headers=headers)
        self.resp = self.conn.getresponse()
        assert self.resp.status == 200, self.resp.status
        assert self.resp.getheader("content-type") == "text/event-stream"
        self.buf = b""

    def next(self) -> tuple[str, str]:
        """The next named event (event, data); raises TimeoutError past the timeout."""
        while True:
            while b"\n\n" in self.buf:
                block, self.buf = self.buf.split(b"\n\n", 1)
                name, lines = "", []
                for line in block.decode().splitlines():
                    if line.startswith("event: "):
                        name = line[7:]
                    elif line.startswith("data: "):
                        lines.append(line[6:])
                if name:
                    return name, "\n".join(lines)
            data = self.resp.read1(65536)  # chunked framing undone by http.client
            if not data:
                raise EOFError("the event stream ended")
            self.buf += data

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()
