"""SecretsApi: named values resolved into child environments at spawn time."""

from __future__ import annotations

from typing import Any

from hero_procd.errors import NotFound
from hero_procd.model import now
from hero_procd.store.pool import DbPool, chunks
from hero_procd.store.queries import Q, with_marks


class SecretsApi:
    """Reads and writes of the `secrets` table. Values never leave through logs or errors."""

    def __init__(self, pool: DbPool) -> None:
        self.pool = pool

    async def set(self, name: str, value: str) -> None:
        """Create or replace a secret."""
        params = (name, value, now())
        await self.pool.write(lambda c: c.execute(Q["secret_set"], params))

    async def get(self, name: str) -> str:
        """A secret's value, or NotFound (naming the secret, never a value)."""
        row = await self.pool.fetch_one(Q["secret_get"], (name,))
        if row is None:
            raise NotFound("secret not found", {"name": name})
        return str(row[0])

    async def resolve(self, wanted: dict[str, str]) -> dict[str, str]:
        """{VAR: secret name} → {VAR: value}; NotFound names the first missing secret."""
        names = sorted(set(wanted.values()))
        values: dict[str, str] = {}
        for chunk in chunks(names):
            for row in await self.pool.fetch_all(with_marks("secret_get_many", len(chunk)), chunk):
                values[row[0]] = row[1]
        missing = [n for n in names if n not in values]
        if missing:
            raise NotFound("secret not found", {"name": missing[0]})
        return {var: values[name] for var, name in wanted.items()}

    async def list(self) -> list[dict[str, Any]]:
        """Names and update times, never values."""
        rows = await self.pool.fetch_all(Q["secret_list"])
        return [{"name": r["name"], "updated_at": r["updated_at"]} for r in rows]

    async def delete(self, name: str) -> int:
        """Delete a secret; the rows deleted."""
        return await self.pool.write(lambda c: c.execute(Q["secret_delete"], (name,)).rowcount)
