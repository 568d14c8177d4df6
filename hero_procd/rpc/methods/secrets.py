"""secret.*: named values given to children as environment variables (`env_from_secrets`)."""

from __future__ import annotations

from typing import Any

from hero_procd.app import App
from hero_procd.errors import InvalidParams
from hero_procd.params import MAX_ENV_STRING, Params, env_string_size
from hero_procd.rpc.registry import rpc


@rpc("secret.set")
async def secret_set(app: App, p: Params) -> dict[str, Any]:
    """Create or replace a secret; the answer never repeats the value."""
    name = p.req_text("name", name_like=True)
    value = p.req_text("value")
    p.finish()
    size = env_string_size(name, value)  # a longer secret could never reach a child
    if size > MAX_ENV_STRING:
        raise InvalidParams(
            "value",
            f"too long to be an environment variable: NAME=value is {size} bytes "
            f"with its NUL, the kernel takes at most {MAX_ENV_STRING}",
        )
    await app.store.secrets.set(name, value)
    return {"name": name}


@rpc("secret.get")
async def secret_get(app: App, p: Params) -> dict[str, Any]:
    """A secret's value (the only method that returns one)."""
    name = p.req_text("name")
    p.finish()
    return {"name": name, "value": await app.store.secrets.get(name)}


@rpc("secret.list")
async def secret_list(app: App, p: Params) -> dict[str, Any]:
    """Secret names, never values."""
    p.finish()
    return {"secrets": await app.store.secrets.list()}


@rpc("secret.delete")
async def secret_delete(app: App, p: Params) -> dict[str, Any]:
    """Delete a secret."""
    name = p.req_text("name")
    p.finish()
    return {"deleted": await app.store.secrets.delete(name)}
