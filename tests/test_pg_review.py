"""Hostile review of the PostgreSQL dead-node sweep at store level: whose sessions it ends
(named by application_name), and what its lock timeout leaves behind."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import psycopg

from hero_procd.errors import HeroError
from hero_procd.store import Store
from tests.pg import pg_schema, pg_test_dsn

TIMEOUT_S = 3.0


async def _backends(app: str) -> set[int]:
    """The server pids of the sessions named `app`."""
    async with await psycopg.AsyncConnection.connect(pg_test_dsn(), autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (app,)
        )
        return {int(r[0]) for r in await cur.fetchall()}


async def _age(dsn_store: Store, node: str, by_s: float) -> None:
    """Make `node`'s heartbeat `by_s` older (as if it had stopped beating that long ago)."""

    def unit(conn: Any) -> None:
        conn.execute(
            "UPDATE nodes SET heartbeat_at = heartbeat_at - ? WHERE name = ?", (by_s, node)
        )

    await dsn_store.pool.write(unit)


async def _touch(store: Store) -> None:
    """Use every kind of session a daemon has: writer, side connection, a reader."""
    await store.pool.write(lambda c: c.execute("SELECT 1").fetchone())
    await store.pool.side_write("SELECT 1")
    await store.pool.fetch_one("SELECT 1")


def test_the_sweep_ends_the_dead_daemons_sessions_not_those_of_its_successor() -> None:
    """A daemon ran as n3 (this process's pid: a container's pid 1 is every daemon's) and
    hangs with its sessions open; its row goes stale. A new daemon starts as n3 with the
    same pid and has opened its sessions, not yet claimed the row (or claims it while the
    sweep runs). The sweep (and the reader-side end of stale sessions) end the hung
    daemon's sessions, and not one of the new daemon's."""

    async def body(dsn: str) -> None:
        sweeper = await Store.open(dsn, readers=1, node="n1", node_timeout_s=TIMEOUT_S)
        old = await Store.open(dsn, readers=1, node="n3", node_timeout_s=TIMEOUT_S)
        new: Store | None = None
        try:
            assert await sweeper.nodes.claim("v", os.getpid(), None)
            assert await old.nodes.claim("v", os.getpid(), None)
            await _touch(old)
            old_app = old.pool.app  # type: ignore[attr-defined]
            old_backends = await _backends(old_app)
            assert len(old_backends) == 3, old_backends
            await _age(sweeper, "n3", TIMEOUT_S + 5)

            new = await Store.open(dsn, readers=1, node="n3", node_timeout_s=TIMEOUT_S)
            await _touch(new)
            new_app = new.pool.app  # type: ignore[attr-defined]
            new_backends = await _backends(new_app) - old_backends
            assert len(new_backends) == 3, new_backends

            ended = await sweeper.nodes.end_stale_sessions(TIMEOUT_S)
            dead = await sweeper.nodes.sweep(TIMEOUT_S)
            assert dead.nodes == ["n3"]
            assert not await _backends(old_app) & old_backends
            left = await _backends(new_app)
            assert left == new_backends, f"the new daemon's sessions ended: {new_backends - left}"
            assert ended + dead.sessions == 3, (ended, dead.sessions)
            # The new daemon takes the name over from what it saw, and writes on.
            (row,) = [n for n in await new.nodes.list(TIMEOUT_S) if n.name == "n3"]
            assert await new.nodes.claim("v", os.getpid(), (row.pid, row.started_at))
            assert await new.nodes.heartbeat()
            assert await new.pool.write(lambda c: c.execute("SELECT 2").fetchone()[0]) == 2
        finally:
            for store in (sweeper, old, new):
                if store is not None:
                    await store.close()

    with pg_schema("rev") as dsn:
        asyncio.run(body(dsn))


def test_a_sweep_failed_by_its_lock_timeout_leaves_no_lock_timeout_and_settles_later() -> None:
    """A session the sweep cannot end (not named for the dead node) holds the dead node's
    row: the sweep fails by its lock timeout, alone — the units queued with it in the same
    group are written, those after it and every later write run without its lock timeout —
    and once the row is let go the next sweep declares the node dead."""

    async def body(dsn: str) -> None:
        sweeper = await Store.open(dsn, readers=1, node="n1", node_timeout_s=TIMEOUT_S)
        dead = await Store.open(dsn, readers=1, node="n3", node_timeout_s=TIMEOUT_S)
        blocker = await psycopg.AsyncConnection.connect(dsn.split("?")[0])
        try:
            assert await sweeper.nodes.claim("v", os.getpid(), None)
            assert await dead.nodes.claim("v", os.getpid(), None)
            await dead.close()
            await _age(sweeper, "n3", TIMEOUT_S + 5)
            schema = dsn.rsplit("schema=", 1)[1]
            locked = f'SELECT 1 FROM "{schema}".nodes WHERE name = %s FOR UPDATE'
            await blocker.execute(locked, ("n3",))

            def setting(conn: Any) -> str:
                return str(conn.execute("SELECT current_setting('lock_timeout')").fetchone()[0])

            groups = sweeper.pool.writer.groups
            before, swept, after = await asyncio.gather(
                sweeper.pool.write(setting),
                sweeper.nodes.sweep(TIMEOUT_S),
                sweeper.pool.write(setting),
                return_exceptions=True,
            )
            assert isinstance(swept, HeroError) and "lock timeout" in str(swept), swept
            assert before == after == "0", (before, after, sweeper.pool.writer.groups - groups)
            assert await sweeper.pool.write(setting) == "0"
            await blocker.rollback()
            dead_nodes = await sweeper.nodes.sweep(TIMEOUT_S)
            assert dead_nodes.nodes == ["n3"]
            assert await sweeper.pool.write(setting) == "0"
        finally:
            await blocker.close()
            await sweeper.close()

    with pg_schema("rev") as dsn:
        asyncio.run(body(dsn))


def test_a_first_start_that_dies_before_its_key_commits_leaves_the_key_to_the_other() -> None:
    """Two first starts on a fresh database: the first's key insert is in, uncommitted,
    when its daemon dies (its session ends); the second, whose insert waited for it,
    records its own key and unlocks — then a restart of the first with its own key file is
    refused naming that file, and a restart with the recorded key unlocks."""
    from pathlib import Path

    from hero_procd.model import now
    from hero_procd.secretbox import KeyFileError, SecretBox

    async def body(dsn: str) -> None:
        first_key, second_key = os.urandom(32), os.urandom(32)
        second = await Store.open(dsn, readers=1, node="n2", node_timeout_s=TIMEOUT_S)
        schema = dsn.rsplit("schema=", 1)[1]
        dying = await psycopg.AsyncConnection.connect(dsn.split("?")[0])
        try:
            token = SecretBox(first_key, Path("/keys/n1")).check_token()
            await dying.execute(
                f'INSERT INTO "{schema}".secrets_key (id, check_token, created_at) '
                "VALUES (1, %s, %s)",
                (token, now()),
            )
            unlock = asyncio.create_task(
                second.secrets.unlock(SecretBox(second_key, Path("/keys/n2")))
            )
            await asyncio.sleep(0.5)
            assert not unlock.done(), "the second's insert waits for the first's"
            await dying.close()  # the first daemon dies: its transaction is undone
            unlocked = await asyncio.wait_for(unlock, 10)
            assert unlocked.first_key
            again = await Store.open(dsn, readers=1, node="n1", node_timeout_s=TIMEOUT_S)
            try:
                try:
                    await again.secrets.unlock(SecretBox(first_key, Path("/keys/n1")))
                except KeyFileError as exc:
                    assert "/keys/n1" in str(exc) and "is not the key" in str(exc), str(exc)
                else:
                    raise AssertionError("the first's key was accepted")
                done = await again.secrets.unlock(SecretBox(second_key, Path("/keys/n1")))
                assert not done.first_key
            finally:
                await again.close()
        finally:
            await dying.close()
            await second.close()

    with pg_schema("rev") as dsn:
        asyncio.run(body(dsn))


def test_session_names_are_what_the_server_keeps_and_differ_across_schemas() -> None:
    """A node name of 60 non-ASCII characters in a 53-byte schema: the name the server keeps
    (63 bytes, non-ASCII replaced) is the one the sweep looks for; the same node name and
    pid in another schema's cluster is named otherwise."""
    from hero_procd.store.nodes import session_name

    node = "nœud-" + "é" * 55

    async def body(dsn: str) -> str:
        store = await Store.open(dsn, readers=1, node=node, node_timeout_s=TIMEOUT_S)
        try:
            app = str(store.pool.app)  # type: ignore[attr-defined]
            await _touch(store)
            assert len(await _backends(app)) == 3, app
            return app
        finally:
            await store.close()

    with pg_schema("r" * 40) as one, pg_schema("r" * 40) as two:
        apps = [asyncio.run(body(one)), asyncio.run(body(two))]
    assert apps[0] != apps[1] and all(len(a.encode()) == 63 for a in apps), apps
    assert session_name("a", "n1", 1, 1.0) != session_name("b", "n1", 1, 1.0)
    assert session_name("a", "n1", 1, 1.0) != session_name("a", "n1", 1, 2.0)
