"""The dispatch table: every RPC method, registered by name with `@rpc("area.verb")`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from hero_procd.app import App
from hero_procd.params import Params

Handler = Callable[[App, Params], Awaitable[Any]]

METHODS: dict[str, Handler] = {}


def rpc(name: str) -> Callable[[Handler], Handler]:
    """Register a handler as the RPC method `name`; it validates params and calls `finish()`."""

    def register(fn: Handler) -> Handler:
        if name in METHODS:
            raise ValueError(f"RPC method {name} registered twice")
        METHODS[name] = fn
        return fn

    return register


def load_methods() -> dict[str, Handler]:
    """Import every methods module (they register on import) and return the table."""
    from hero_procd.rpc.methods import (  # noqa: F401
        actions,
        groups,
        jobs,
        nodes,
        runs,
        schedules,
        secrets,
        service_ops,
        services,
        stack,
        system,
    )

    return METHODS
