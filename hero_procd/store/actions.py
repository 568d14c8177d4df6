"""ActionsApi: named, reusable command definitions."""

from __future__ import annotations

import orjson

from hero_procd.errors import NotFound
from hero_procd.model import CommandSpec, now
from hero_procd.store.pool import Conn, DbPool, chunks
from hero_procd.store.queries import Q, with_marks
from hero_procd.store.records import Action


class ActionsApi:
    """Reads and writes of the `actions` table."""

    def __init__(self, pool: DbPool) -> None:
        self.pool = pool

    async def upsert(
        self, name: str, spec: CommandSpec, tags: list[str], node: str | None = None
    ) -> Action:
        """Create or replace the action `name` (`node`: where its jobs run)."""
        params = {
            "name": name,
            "spec": orjson.dumps(spec.to_dict()).decode(),
            "tags": orjson.dumps(tags).decode(),
            "node": node,
            "now": now(),
        }
        row = await self.pool.write(lambda c: c.execute(Q["action_upsert"], params).fetchone())
        assert row is not None
        return Action.from_row(row)

    async def get(self, name: str) -> Action:
        """The action `name`, or NotFound."""
        row = await self.pool.fetch_one(Q["action_get"], (name,))
        if row is None:
            raise NotFound("action not found", {"name": name})
        return Action.from_row(row)

    async def list(self, tag: str | None = None) -> list[Action]:
        """Every action, or those with `tag`, by name."""
        if tag is None:
            rows = await self.pool.fetch_all(Q["action_list"])
        else:
            rows = await self.pool.fetch_all(Q["action_list_by_tag"], (tag,))
        return [Action.from_row(r) for r in rows]

    async def delete(self, name: str) -> int:
        """Delete the action `name`; the number of rows deleted (0 or 1)."""
        return await self.pool.write(lambda c: c.execute(Q["action_delete"], (name,)).rowcount)


def actions_by_name(conn: Conn, names: list[str]) -> dict[str, Action]:
    """The actions of `names` that exist, read on `conn` (inside a unit)."""
    found: dict[str, Action] = {}
    for chunk in chunks(sorted(set(names))):
        for row in conn.execute(with_marks("action_get_many", len(chunk)), chunk).fetchall():
            found[row["name"]] = Action.from_row(row)
    return found
