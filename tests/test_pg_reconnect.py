"""Every session of a node terminated (a PostgreSQL restart, pg_terminate_backend): the
next writes and reads succeed by themselves — nothing was sent on the dead connection, so
the writer reconnects and runs the group there instead of failing it."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import psycopg

from hero_procd.store import Store
from tests.pg import pg_schema, pg_test_dsn


def _terminate(pids: list[int]) -> int:
    with psycopg.connect(pg_test_dsn(), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = ANY(%s)", (pids,)
        ).fetchall()
    return sum(1 for (ok,) in rows if ok)


def test_writes_and_reads_after_every_session_was_terminated() -> None:
    async def main(dsn: str) -> list[object]:
        store = await Store.open(dsn)
        errors: list[object] = []
        try:
            for round_ in range(3):
                await store.groups.set(f"warm{round_}", 1)
                await store.groups.all()
                pool: Any = store.pool  # the PostgreSQL pool: its connections' sessions
                pids = [pool.writer._conn.raw.info.backend_pid]
                pids += [r.raw.info.backend_pid for r in pool._open]
                assert _terminate(pids) >= 1
                await asyncio.sleep(random.uniform(0, 0.05))
                results = await asyncio.gather(
                    *(store.groups.set(f"g{round_}_{i}", 1) for i in range(5)),
                    return_exceptions=True,
                )
                errors += [r for r in results if isinstance(r, Exception)]
                try:
                    names = await store.groups.all()
                except Exception as exc:
                    errors.append(exc)
                    names = await store.groups.all()
                assert {f"g{round_}_{i}" for i in range(5)} <= set(names), names
        finally:
            await store.close()
        return errors

    with pg_schema() as dsn:
        errors = asyncio.run(main(dsn))
    assert errors == []
