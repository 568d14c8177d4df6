"""system.* and rpc.discover."""

from __future__ import annotations

import gc
from typing import Any

from hero_procd import gcpause
from hero_procd.app import App
from hero_procd.errors import InvalidParams, InvalidState
from hero_procd.params import Params
from hero_procd.rpc.registry import rpc


@rpc("system.ping")
async def ping(app: App, p: Params) -> dict[str, Any]:
    """Liveness: answers without touching the database."""
    p.finish()
    return {"pong": True, "version": app.version}


@rpc("system.info")
async def info(app: App, p: Params) -> dict[str, Any]:
    """Version, pid, uptime, paths, table counts and daemon counters."""
    p.finish()
    counts = await app.store.counts()
    return {
        "version": app.version,
        "pid": app.pid,
        "uptime_s": app.uptime_s(),
        "started_at": app.started_at,
        "socket": str(app.config.socket_path),
        "db": app.config.db_shown,
        "backend": app.store.backend,
        "node": app.config.node,
        "secrets_key_file": str(box.source) if (box := app.store.secrets.box) else None,
        "counts": counts,
        "requests": app.stats.requests,
        "dropped_log_lines": app.stats.dropped_log_lines,
        "dropped_log_lines_total": await app.store.logs.dropped_total(),
        "jobs_running": len(app.executor.running) if app.executor else 0,
        "max_parallel": app.config.max_parallel,
        "flusher_pending": app.executor.flusher.pending() if app.executor else 0,
        # Off only while big requests are handled (hero_procd/gcpause.py): a pause left
        # behind would let memory grow without bound, so it is visible here.
        "gc": {"enabled": gc.isenabled(), "paused_by": gcpause.holders()},
        "log_lines_trimmed": app.stats.log_lines_trimmed,
        "retention": app.janitor.settings() if app.janitor else None,
        "last_retention": app.janitor.last if app.janitor else None,
        # cgroup2 | process-group, the controllers usable for limits, the cells' subtree.
        **(app.containment.info() if app.containment else {"containment": None}),
        "watchdog": app.watchdog.info() if app.watchdog else None,
    }


@rpc("system.retention_run")
async def retention_run(app: App, p: Params) -> dict[str, Any]:
    """Run one retention pass now: old finished jobs, log caps, incremental vacuum."""
    p.finish()
    if app.janitor is None:
        raise InvalidState("the janitor is not running")
    return await app.janitor.run_once()


@rpc("system.wipe_all")
async def wipe_all(app: App, p: Params) -> dict[str, Any]:
    """Delete every action, job, run, service, log line and schedule in one transaction."""
    confirm = p.boolean("confirm")
    p.finish()
    if confirm is not True:
        raise InvalidParams("confirm", "must be true to wipe everything")
    try:
        if app.supervisor is not None:
            # Refuses service verbs until reopen(): none may spawn before the rows go.
            await app.supervisor.halt_all(forget=True)
        if app.executor is None:
            return {"deleted": await app.store.wipe_all(), "stopped_jobs": 0}
        try:
            # Inside the try: whatever stop_all_jobs raises, its pause on claiming is undone.
            stopped = await app.executor.stop_all_jobs()
            deleted = await app.store.wipe_all()
        finally:
            app.executor.resume()
        return {"deleted": deleted, "stopped_jobs": stopped}
    finally:
        if app.supervisor is not None:
            app.supervisor.reopen()


@rpc("system.ui")
async def ui(app: App, p: Params) -> dict[str, Any]:
    """The browser listener's URL and the URL that logs in with its token (null when off)."""
    p.finish()
    return {
        "enabled": app.http_url is not None,
        "url": app.http_url,
        "login_url": app.http_login_url,
    }


@rpc("rpc.discover")
async def discover(app: App, p: Params) -> dict[str, Any]:
    """The OpenRPC document describing every method."""
    p.finish()
    return app.openrpc
