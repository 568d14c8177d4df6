"""action.*: named, reusable command definitions."""

from __future__ import annotations

from typing import Any

from hero_procd.app import App
from hero_procd.errors import InvalidParams
from hero_procd.model import parse_command_spec
from hero_procd.params import Params
from hero_procd.rpc.registry import rpc


@rpc("action.set")
async def action_set(app: App, p: Params) -> dict[str, Any]:
    """Create or replace an action by name."""
    name = p.req_text("name", name_like=True)
    spec = parse_command_spec(p, require_command=True)
    tags = p.text_list("tags") or []
    node = p.text("node")
    p.finish()
    if node is not None and not 0 < len(node) <= 255:
        raise InvalidParams("node", "must be a node name (1 to 255 characters)")
    app.check_limits(spec.limits())
    return (await app.store.actions.upsert(name, spec, tags, node)).to_dict()


@rpc("action.get")
async def action_get(app: App, p: Params) -> dict[str, Any]:
    """One action by name."""
    name = p.req_text("name")
    p.finish()
    return (await app.store.actions.get(name)).to_dict()


@rpc("action.list")
async def action_list(app: App, p: Params) -> dict[str, Any]:
    """Every action, or those with a tag."""
    tag = p.text("tag")
    p.finish()
    return {"actions": [a.to_dict() for a in await app.store.actions.list(tag)]}


@rpc("action.delete")
async def action_delete(app: App, p: Params) -> dict[str, Any]:
    """Delete an action; `deleted` is 0 if there was none."""
    name = p.req_text("name")
    p.finish()
    return {"deleted": await app.store.actions.delete(name)}
