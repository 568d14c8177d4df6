"""GroupsApi: per-group concurrency limits of the executor."""

from __future__ import annotations

from hero_procd.store.pool import DbPool
from hero_procd.store.queries import Q


class GroupsApi:
    """Reads and writes of the `groups` table."""

    def __init__(self, pool: DbPool) -> None:
        self.pool = pool

    async def set(self, name: str, max_parallel: int) -> None:
        """Create or change a group's limit."""
        await self.pool.write(lambda c: c.execute(Q["group_set"], (name, max_parallel)))

    async def all(self) -> dict[str, int]:
        """Every group's limit."""
        rows = await self.pool.fetch_all(Q["group_list"])
        return {r["name"]: int(r["max_parallel"]) for r in rows}

    async def entries(self) -> list[tuple[str, int, str | None]]:
        """Every group: (name, limit, stack or None if made by hand), by name."""
        rows = await self.pool.fetch_all(Q["group_list"])
        return [(r["name"], int(r["max_parallel"]), r["stack"]) for r in rows]

    async def delete(self, name: str) -> int:
        """Delete a group's limit; the rows deleted."""
        return await self.pool.write(lambda c: c.execute(Q["group_delete"], (name,)).rowcount)
