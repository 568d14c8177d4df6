"""service.*: long-running supervised processes."""

from __future__ import annotations

import contextlib
from typing import Any

from hero_procd.app import App
from hero_procd.errors import InvalidParams, InvalidState, NotFound
from hero_procd.model import find_cycle, parse_service_spec
from hero_procd.params import Params
from hero_procd.rpc.registry import rpc
from hero_procd.store.logs import to_wire
from hero_procd.store.services import EVENTS_KEPT

MAX_PAGE = 10_000


@rpc("service.define")
async def service_define(app: App, p: Params) -> dict[str, Any]:
    """Create or redefine a service (a running one picks the new spec up at its next start)."""
    name = p.req_text("name", name_like=True)
    node = p.text("node")
    spec = parse_service_spec(p)
    p.finish()
    if node is not None and not 0 < len(node) <= 255:
        raise InvalidParams("node", "must be a node name (1 to 255 characters)")
    app.check_limits(spec)
    # Through the service's owner (serialised with its other verbs); the cycle check
    # reads the other definitions in the same unit as the write. Another node's service
    # is only written: its own daemon supervises it.
    if app.supervisor is not None and node in (None, app.config.node):
        service = await app.supervisor.define(name, spec)
    else:
        service = await app.store.services.define(name, spec, find_cycle, node)
    return service.to_dict()


async def check_own_node(app: App, name: str) -> None:
    """Refuse a verb on another node's service (NotFound for an unknown one)."""
    service = await app.store.services.get(name)
    if service.node is not None and service.node != app.config.node:
        raise InvalidState(
            "the service belongs to another node: call that node's daemon",
            {"name": name, "node": service.node},
        )


@rpc("service.get")
async def service_get(app: App, p: Params) -> dict[str, Any]:
    """One service: its definition, live state, last exit and dropped log lines."""
    name = p.req_text("name")
    p.finish()
    service = (await app.store.services.get(name)).to_dict()
    last = await app.store.services.events(name, 1)
    service["last_exit"] = last[0] if last else None
    service["dropped_log_lines"] = await app.store.logs.dropped("service", name)
    return service


@rpc("service.list")
async def service_list(app: App, p: Params) -> dict[str, Any]:
    """Every service, by name."""
    p.finish()
    return {"services": [s.to_dict() for s in await app.store.services.list()]}


@rpc("service.delete")
async def service_delete(app: App, p: Params) -> dict[str, Any]:
    """Stop a service (and what requires it), then delete it; `deleted` is 0 if there was none."""
    name = p.req_text("name")
    p.finish()
    with contextlib.suppress(NotFound):
        await check_own_node(app, name)
    if app.supervisor is not None:
        # The owner stops it, writes out its last lines, then deletes row, lines, history.
        return {"deleted": await app.supervisor.delete_service(name)}
    deleted = await app.store.services.delete(name)
    return {"deleted": deleted["services"]}


async def _status_after(app: App, name: str) -> dict[str, Any]:
    # Every state change is committed before the supervisor moves on: no barrier needed.
    return await app.store.services.status(name)


@rpc("service.start")
async def service_start(app: App, p: Params) -> dict[str, Any]:
    """Start a service (what it requires first); with `wait_s`, wait until it is running."""
    name = p.req_text("name")
    wait_s = p.number("wait_s", default=0.0, minimum=0) or 0.0
    p.finish()
    await check_own_node(app, name)
    await app.services.start_service(name, wait_s=min(wait_s, 600.0))
    return await _status_after(app, name)


@rpc("service.stop")
async def service_stop(app: App, p: Params) -> dict[str, Any]:
    """Stop a service (the services that require it first); returns once it has stopped."""
    name = p.req_text("name")
    p.finish()
    await check_own_node(app, name)
    await app.services.stop_service(name)
    return await _status_after(app, name)


@rpc("service.restart")
async def service_restart(app: App, p: Params) -> dict[str, Any]:
    """Stop a service's process and start it again."""
    name = p.req_text("name")
    wait_s = p.number("wait_s", default=0.0, minimum=0) or 0.0
    p.finish()
    await check_own_node(app, name)
    await app.services.restart_service(name, wait_s=min(wait_s, 600.0))
    return await _status_after(app, name)


@rpc("service.events")
async def service_events(app: App, p: Params) -> dict[str, Any]:
    """The service's exit history (last 100 kept), newest first."""
    name = p.req_text("name")
    limit = p.integer("limit", default=EVENTS_KEPT, minimum=1, maximum=EVENTS_KEPT) or EVENTS_KEPT
    p.finish()
    await app.store.services.get(name)  # NotFound for an unknown name
    return {"events": await app.store.services.events(name, limit)}


@rpc("service.logs")
async def service_logs(app: App, p: Params) -> dict[str, Any]:
    """A page of a service's output lines after `after_seq`."""
    name = p.req_text("name")
    after_seq = p.integer("after_seq", default=0, minimum=0) or 0
    limit = p.integer("limit", default=1000, minimum=1, maximum=MAX_PAGE) or 1000
    since = p.number("since", minimum=0)
    tail = p.integer("tail", minimum=0)
    p.finish()
    service = await app.store.services.get(name)
    lines, next_seq = await app.store.logs.page(
        "service", name, after_seq, limit, since=since, tail=tail
    )
    return {
        "lines": to_wire(lines),
        "next_seq": next_seq,
        "state": service.state,
    }


@rpc("service.status")
async def service_status(app: App, p: Params) -> dict[str, Any]:
    """The live status of one service."""
    name = p.req_text("name")
    p.finish()
    if app.supervisor is not None:
        app.supervisor.watched()
    return await app.store.services.status(name)


@rpc("service.status_all")
async def service_status_all(app: App, p: Params) -> dict[str, Any]:
    """The live status of every service, from one read."""
    p.finish()
    if app.supervisor is not None:
        app.supervisor.watched()
    dead = frozenset(await app.store.nodes.dead_names(app.config.node_timeout_s))
    return {"services": await app.store.services.status_all(dead)}
