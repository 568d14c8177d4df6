"""Every session of a node terminated (a PostgreSQL restart, pg_terminate_backend): the
next writes and reads succeed by themselves — nothing was sent on the dead connection, so
the writer reconnects and runs the group there instead of failing it."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import psycopg

from hero_procd.errors import HeroError
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


def test_heartbeat_after_its_idle_side_session_was_terminated() -> None:
    """The side connection (heartbeats, revive, stop) killed while idle: the next heartbeat
    succeeds at the first call, on a new session, and really renews the row."""

    async def main(dsn: str) -> None:
        store = await Store.open(dsn, node="n1", node_timeout_s=3.0)
        try:
            assert await store.nodes.claim("v", 4242, None)
            pool: Any = store.pool
            for _ in range(3):
                assert await store.nodes.heartbeat()
                old = pool._side.info.backend_pid
                before = await pool.fetch_one(
                    "SELECT heartbeat_at FROM nodes WHERE name = ?", ("n1",)
                )
                assert _terminate([old]) == 1
                await asyncio.sleep(random.uniform(0, 0.05))
                assert await store.nodes.heartbeat()  # the first call, not a retry of ours
                assert pool._side.info.backend_pid != old
                after = await pool.fetch_one(
                    "SELECT heartbeat_at FROM nodes WHERE name = ?", ("n1",)
                )
                assert after[0] > before[0]
            # A statement not declared idempotent is not repeated: its failure is reported.
            assert _terminate([pool._side.info.backend_pid]) == 1
            await asyncio.sleep(0.05)
            try:
                await pool.side_write("SELECT 1")
            except HeroError:
                pass
            else:
                raise AssertionError("a non-idempotent side write on a dead session was retried")
            assert await pool.side_write("SELECT 1") == 1  # and the next one reconnects
        finally:
            await store.close()

    with pg_schema() as dsn:
        asyncio.run(main(dsn))
