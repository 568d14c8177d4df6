"""Start the browser listener: parse its address, refuse a remote bind unless allowed, bind."""

from __future__ import annotations

import asyncio
import logging

from hero_procd.app import App
from hero_procd.config import Config
from hero_procd.paths import StartupError
from hero_procd.rpc.dispatch import Dispatcher
from hero_procd.web.app import Dashboard
from hero_procd.web.auth import AuthError, Guard, host_names, is_loopback, load_or_create_token
from hero_procd.web.http import HttpListener

log = logging.getLogger(__name__)


def parse_address(text: str) -> tuple[str, int]:
    """("host", port) from "HOST:PORT" or "[V6]:PORT"; ValueError if malformed."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"--http wants HOST:PORT (e.g. 127.0.0.1:8080), got {text!r}")
    if host.startswith("[") != host.endswith("]"):
        raise ValueError(f"--http: unbalanced brackets in {text!r}")
    return host, int(port)


async def start_web(app: App, dispatcher: Dispatcher, config: Config) -> HttpListener:
    """Bind the listener of `config.http` and serve the dashboard on it."""
    assert config.http is not None
    try:
        host, port = parse_address(config.http)
    except ValueError as exc:
        raise StartupError(str(exc)) from exc
    if not is_loopback(host.strip("[]")) and not config.http_allow_remote:
        raise StartupError(
            f"--http {config.http}: not a loopback address; the dashboard has no TLS, so "
            "binding it elsewhere needs --http-allow-remote (HERO_PROC_HTTP_ALLOW_REMOTE=1)"
        )
    try:
        token = await asyncio.to_thread(load_or_create_token, config.db_path)
    except AuthError as exc:
        raise StartupError(str(exc)) from exc
    guard = Guard(token, frozenset())  # its names once the port is known (0: any free one)
    dashboard = Dashboard(app, dispatcher, guard)
    await dashboard.load_static()
    listener = HttpListener(
        dashboard.handle,
        host,
        port,
        max_body=config.max_frame,
        idle_timeout_s=config.idle_timeout_s,
        frame_timeout_s=config.frame_timeout_s,
    )
    await listener.start()
    guard.names = host_names(host, listener.port, config.http_hosts)
    bare = host.strip("[]")
    shown = f"[{bare}]" if ":" in bare else bare
    if shown in ("0.0.0.0", "[::]"):
        shown = "127.0.0.1" if shown == "0.0.0.0" else "[::1]"
    app.http_url = f"http://{shown}:{listener.port}/"
    app.http_login_url = f"{app.http_url}login?token={token}"
    log.info("browser listener ready", extra={"url": app.http_url})
    return listener
