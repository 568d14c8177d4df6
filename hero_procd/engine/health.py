"""Health checks of services: exec, tcp, http and unix, each bounded by its timeout.

An exec check runs in a cell of its own (engine/contain.py: a cgroup, or its
process group as the leader of a new session); the whole cell is killed when
the check ends — passed, failed, timed out, or cancelled because its service
stops — so a check never leaves a process behind, setsid escapees included
where the cell is a cgroup.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import urllib.parse
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from hero_procd.engine import procs
from hero_procd.engine.contain import Containment

log = logging.getLogger(__name__)


@dataclass
class CheckRunner:
    """What an exec check needs: the daemon's containment, its spawner pool, a label."""

    containment: Containment
    spawner: Executor | None
    label: str


async def run_check(check: dict[str, Any], env: dict[str, str], runner: CheckRunner) -> bool:
    """Run one health check; True if it passed within its timeout.

    `env` is an exec check's environment: it carries the daemon's instance mark,
    so that the recovery of a daemon killed by -9 finds a check left running.
    """
    timeout = float(check.get("timeout_s", 5.0))
    try:
        return await asyncio.wait_for(_run(check, env, runner), timeout)
    except (TimeoutError, OSError):
        return False


async def _run(check: dict[str, Any], env: dict[str, str], runner: CheckRunner) -> bool:
    if "exec" in check:
        return await _exec_ok(list(check["exec"]), env, runner)
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


async def _exec_ok(argv: list[str], env: dict[str, str], runner: CheckRunner) -> bool:
    """Run argv in a cell of its own; exit 0 passes. Its cell never outlives the check."""
    loop = asyncio.get_running_loop()
    cell = runner.containment.cell(runner.label)
    try:
        child = await loop.run_in_executor(
            runner.spawner, functools.partial(cell.spawn, argv, env, None, capture=False)
        )
    except BaseException:
        await asyncio.shield(cell.release())
        raise
    reaped = False
    try:
        code, _ = await procs.wait_child(child)
        reaped = True
        return code == 0
    finally:
        # Whatever it left (a `sleep &`, a setsid daemon), and the leader itself when
        # the check timed out or was cancelled: killed, reaped, the cell removed.
        cell.kill()
        if not reaped:
            with contextlib.suppress(OSError):
                await asyncio.shield(procs.wait_child(child))
        await asyncio.shield(cell.release())


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
