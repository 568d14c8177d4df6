"""Health checks of services: exec, tcp, http and unix, each bounded by its timeout.

An exec check runs as the leader of a new session, so it and everything it
starts share one process group; that whole group is killed when the check
ends — passed, failed, timed out, or cancelled because its service stops —
so a check never leaves a process behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import urllib.parse
from typing import Any

log = logging.getLogger(__name__)


async def run_check(check: dict[str, Any], env: dict[str, str] | None = None) -> bool:
    """Run one health check; True if it passed within its timeout.

    `env` is an exec check's environment: it carries the daemon's instance mark,
    so that the recovery of a daemon killed by -9 finds a check left running.
    """
    timeout = float(check.get("timeout_s", 5.0))
    try:
        return await asyncio.wait_for(_run(check, env), timeout)
    except (TimeoutError, OSError):
        return False


async def _run(check: dict[str, Any], env: dict[str, str] | None) -> bool:
    if "exec" in check:
        return await _exec_ok(list(check["exec"]), env)
    if "tcp" in check:
        host, _, port = str(check["tcp"]).rpartition(":")
        _, writer = await asyncio.open_connection(host or "127.0.0.1", int(port))
        writer.close()
        return True
    if "unix" in check:
        _, writer = await asyncio.open_unix_connection(str(check["unix"]))
        writer.close()
        return True
    if "http" in check:
        return await _http_ok(str(check["http"]))
    return False


async def _exec_ok(argv: list[str], env: dict[str, str] | None = None) -> bool:
    """Run argv in a session of its own; exit 0 passes. Its group never outlives the check."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        start_new_session=True,
        env=env,
    )
    try:
        return await proc.wait() == 0
    finally:
        # The leader is the group: kill the group (a `sleep &` it left, a timed-out
        # leader) even when the leader has exited, and even on cancellation.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        if proc.returncode is None:
            await proc.wait()  # killed just now: immediate


async def _http_ok(url: str) -> bool:
    """GET the url; a 2xx or 3xx status passes."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        return False
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port or 80)
    try:
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        request = f"GET {path} HTTP/1.0\r\nHost: {parts.netloc}\r\nUser-Agent: hero-procd\r\n\r\n"
        writer.write(request.encode())
        await writer.drain()
        status_line = await reader.readline()
        fields = status_line.split()
        return len(fields) >= 2 and fields[1][:1] in (b"2", b"3")
    finally:
        writer.close()
