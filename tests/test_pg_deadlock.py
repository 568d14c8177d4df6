"""Two nodes whose units lock the same rows in opposite orders deadlock on PostgreSQL;
every unit must still succeed (retried), never reach its caller as a storage error."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

from hero_procd.store import Store
from tests.pg import pg_schema


def _crossing(first: str, second: str, pause_s: float) -> Any:
    def unit(conn: Any) -> None:
        # Detected in 20 ms, not the server's default second (session setting, kept).
        conn.execute("SET deadlock_timeout = 20")
        conn.execute("UPDATE groups SET max_parallel = max_parallel + 1 WHERE name = ?", (first,))
        time.sleep(pause_s)
        conn.execute("UPDATE groups SET max_parallel = max_parallel + 1 WHERE name = ?", (second,))

    return unit


def test_deadlocks_between_nodes_are_retried_until_they_pass() -> None:
    """Two stores (two nodes) on one schema, 30 crossing units each with randomised pauses:
    every unit commits; the counters say each ran exactly once."""
    rounds = 30

    async def main(dsn: str) -> tuple[list[object], int, int]:
        one = await Store.open(dsn)
        two = await Store.open(dsn)
        try:
            await one.groups.set("a", 0)
            await one.groups.set("b", 0)

            async def node(store: Store, order: tuple[str, str]) -> list[object]:
                out: list[object] = []
                for _ in range(rounds):
                    unit = _crossing(*order, random.uniform(0.0, 0.01))
                    try:
                        await store.pool.write(unit)
                    except Exception as exc:
                        out.append(exc)
                return out

            errors = await asyncio.gather(node(one, ("a", "b")), node(two, ("b", "a")))
            groups = await one.groups.all()
            return [e for errs in errors for e in errs], groups["a"], groups["b"]
        finally:
            await one.close()
            await two.close()

    with pg_schema() as dsn:
        errors, a, b = asyncio.run(main(dsn))
    assert errors == [], [getattr(e, "data", e) for e in errors[:3]]
    assert a == b == 2 * rounds
