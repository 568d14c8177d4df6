"""node.*: the daemons sharing this daemon's database (on SQLite, this one only)."""

from __future__ import annotations

from typing import Any

from hero_procd.app import App
from hero_procd.params import Params
from hero_procd.rpc.registry import rpc


@rpc("node.list")
async def node_list(app: App, p: Params) -> dict[str, Any]:
    """Every node: name, version, heartbeat age, whether it is alive, jobs it runs."""
    p.finish()
    nodes = await app.store.nodes.list(app.config.node_timeout_s)
    return {
        "self": app.config.node,
        "node_timeout_s": app.config.node_timeout_s,
        "nodes": [n.to_dict() for n in nodes],
    }
