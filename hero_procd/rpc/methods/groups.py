"""group.*: per-group concurrency limits of the executor."""

from __future__ import annotations

from typing import Any

from hero_procd.app import App
from hero_procd.params import Params
from hero_procd.rpc.registry import rpc


@rpc("group.set")
async def group_set(app: App, p: Params) -> dict[str, Any]:
    """Set how many jobs of a group may run at once."""
    name = p.req_text("name", name_like=True)
    max_parallel = p.req_integer("max_parallel", minimum=1)
    p.finish()
    await app.store.groups.set(name, max_parallel)
    if app.executor is not None:
        app.executor.group_limits[name] = max_parallel
        app.executor.wake()
    return {"name": name, "max_parallel": max_parallel}


@rpc("group.list")
async def group_list(app: App, p: Params) -> dict[str, Any]:
    """Every group with its limit and how many of its jobs run now."""
    p.finish()
    entries = await app.store.groups.entries()
    running: dict[str, int] = {}
    if app.executor is not None:
        for rj in app.executor.running.values():
            if rj.claim.group is not None:
                running[rj.claim.group] = running.get(rj.claim.group, 0) + 1
    return {
        "groups": [
            {"name": n, "max_parallel": m, "running": running.get(n, 0), "stack": stack}
            for n, m, stack in entries
        ]
    }


@rpc("group.delete")
async def group_delete(app: App, p: Params) -> dict[str, Any]:
    """Remove a group's limit (its jobs then run under the global limit only)."""
    name = p.req_text("name")
    p.finish()
    deleted = await app.store.groups.delete(name)
    if app.executor is not None:
        app.executor.group_limits.pop(name, None)
        app.executor.wake()
    return {"deleted": deleted}
