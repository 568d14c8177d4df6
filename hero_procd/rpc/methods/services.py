"""service.*: long-running supervised processes (definitions and live status)."""

from __future__ import annotations

from typing import Any

from hero_procd.app import App
from hero_procd.model import parse_service_spec
from hero_procd.params import Params
from hero_procd.rpc.registry import rpc


@rpc("service.define")
async def service_define(app: App, p: Params) -> dict[str, Any]:
    """Create or redefine a service (its live state is kept)."""
    name = p.req_text("name", name_like=True)
    spec = parse_service_spec(p)
    p.finish()
    return (await app.store.services.define(name, spec)).to_dict()


@rpc("service.get")
async def service_get(app: App, p: Params) -> dict[str, Any]:
    """One service: its definition and live state."""
    name = p.req_text("name")
    p.finish()
    return (await app.store.services.get(name)).to_dict()


@rpc("service.list")
async def service_list(app: App, p: Params) -> dict[str, Any]:
    """Every service, by name."""
    p.finish()
    return {"services": [s.to_dict() for s in await app.store.services.list()]}


@rpc("service.delete")
async def service_delete(app: App, p: Params) -> dict[str, Any]:
    """Delete a service; `deleted` is 0 if there was none."""
    name = p.req_text("name")
    p.finish()
    return {"deleted": await app.store.services.delete(name)}


@rpc("service.status")
async def service_status(app: App, p: Params) -> dict[str, Any]:
    """The live status of one service."""
    name = p.req_text("name")
    p.finish()
    return await app.store.services.status(name)


@rpc("service.status_all")
async def service_status_all(app: App, p: Params) -> dict[str, Any]:
    """The live status of every service, from one read."""
    p.finish()
    return {"services": await app.store.services.status_all()}
