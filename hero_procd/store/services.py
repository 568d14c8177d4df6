"""ServicesApi: definitions and live state of supervised services."""

from __future__ import annotations

import builtins
from typing import Any

import orjson

from hero_procd.errors import NotFound
from hero_procd.model import now
from hero_procd.store.pool import Pool
from hero_procd.store.queries import Q
from hero_procd.store.records import Service, status_from_row


class ServicesApi:
    """Reads and writes of the `services` table."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    async def define(self, name: str, spec: dict[str, Any]) -> Service:
        """Create or redefine a service; a running one keeps its live state."""
        params = {"name": name, "spec": orjson.dumps(spec).decode(), "now": now()}
        async with (
            self.pool.transaction() as conn,
            conn.execute(Q["service_upsert"], params) as cur,
        ):
            row = await cur.fetchone()
        assert row is not None
        return Service.from_row(row)

    async def get(self, name: str) -> Service:
        """The service `name`, or NotFound."""
        row = await self.pool.fetch_one(Q["service_get"], (name,))
        if row is None:
            raise NotFound("service not found", {"name": name})
        return Service.from_row(row)

    async def list(self) -> list[Service]:
        """Every service, by name."""
        return [Service.from_row(r) for r in await self.pool.fetch_all(Q["service_list"])]

    async def delete(self, name: str) -> int:
        """Delete the service `name`; the rows deleted (0 or 1)."""
        async with (
            self.pool.transaction() as conn,
            conn.execute(Q["service_delete"], (name,)) as cur,
        ):
            return cur.rowcount

    async def status_all(self) -> builtins.list[dict[str, Any]]:
        """The live status of every service, from one read."""
        rows = await self.pool.fetch_all(Q["service_status_all"])
        ts = now()
        return [status_from_row(r, ts) for r in rows]

    async def status(self, name: str) -> dict[str, Any]:
        """The live status of one service, or NotFound."""
        row = await self.pool.fetch_one(Q["service_status_one"], (name,))
        if row is None:
            raise NotFound("service not found", {"name": name})
        return status_from_row(row, now())
