"""The connection pool: pragmas, file modes, migrations, transactions, readers, close."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import sqlite3
import threading
import weakref
from collections.abc import Callable
from pathlib import Path

import aiosqlite
import pytest

from hero_procd.errors import Conflict, StorageError
from hero_procd.store import Store
from hero_procd.store import pool as pool_mod
from hero_procd.store.pool import CHUNK, DbPool, Pool, chunks, placeholders
from hero_procd.store.queries import with_marks
from hero_procd.store.schema import MIGRATIONS
from tests.conftest import StoreRunner, write_tx

LAST_VERSION = MIGRATIONS[-1][0]


async def _count(pool: DbPool, table: str) -> int:
    row = await pool.fetch_one(f"SELECT count(*) FROM {table}")  # test-chosen table names only
    assert row is not None
    return int(row[0])


async def _version(store: Store) -> object:
    """The schema version the database records (SQLite's user_version, PostgreSQL's table)."""
    if store.backend == "sqlite":
        async with store.pool.reader() as conn:
            return await _pragma(conn, "user_version")
    row = await store.pool.fetch_one("SELECT max(version) FROM schema_version")
    assert row is not None
    return row[0]


async def _pragma(conn: aiosqlite.Connection, name: str) -> object:
    async with conn.execute(f"PRAGMA {name}") as cur:
        row = await cur.fetchone()
    assert row is not None
    return row[0]


def test_new_database_pragmas(run_store: StoreRunner, backend: str) -> None:
    """A new database is WAL, incremental auto_vacuum, migrated, with foreign keys on."""
    if backend != "sqlite":
        pytest.skip("SQLite's pragmas")

    async def body(store: Store) -> dict[str, object]:
        out: dict[str, object] = {}
        async with store.pool.reader() as conn:
            for name in ("journal_mode", "auto_vacuum", "user_version", "foreign_keys"):
                out[f"reader.{name}"] = await _pragma(conn, name)

        def unit(conn: sqlite3.Connection) -> None:
            for name in ("foreign_keys", "synchronous"):
                out[f"writer.{name}"] = conn.execute(f"PRAGMA {name}").fetchone()[0]

        await store.pool.write(unit)
        return out

    got = run_store(body)
    assert got == {
        "reader.journal_mode": "wal",
        "reader.auto_vacuum": 2,
        "reader.user_version": LAST_VERSION,
        "reader.foreign_keys": 1,
        "writer.foreign_keys": 1,
        "writer.synchronous": 1,  # NORMAL
    }


def test_file_is_private_and_missing_parent_created_private(tmp_path: Path) -> None:
    """The database file is created 0600 and its missing parent folder 0700."""
    path = tmp_path / "missing" / "t.db"

    async def main() -> None:
        pool = await Pool.open(path)
        await pool.close()

    asyncio.run(main())
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700


def test_reopen_applies_no_migration_twice(
    run_store: StoreRunner, caplog: pytest.LogCaptureFixture
) -> None:
    """A second open finds the schema current: no migration runs and the data stays."""
    caplog.set_level(logging.INFO, logger="hero_procd.store")

    async def create(store: Store) -> None:
        async with write_tx(store) as conn:
            await conn.execute("INSERT INTO groups (name, max_parallel) VALUES ('g', 2)")

    run_store(create)
    first = [r for r in caplog.records if r.getMessage() == "migrating database"]
    assert len(first) == len(MIGRATIONS)
    caplog.clear()

    async def reopen(store: Store) -> tuple[object, int]:
        return await _version(store), await _count(store.pool, "groups")

    version, groups = run_store(reopen)
    assert [r for r in caplog.records if r.getMessage() == "migrating database"] == []
    assert version == LAST_VERSION
    assert groups == 1


def _insert(*names: str) -> Callable[[sqlite3.Connection], None]:
    def unit(conn: sqlite3.Connection) -> None:
        for name in names:
            conn.execute("INSERT INTO groups (name, max_parallel) VALUES (?, 1)", (name,))

    return unit


def _boom(conn: sqlite3.Connection) -> None:
    conn.execute("INSERT INTO groups (name, max_parallel) VALUES ('boom1', 1)")
    conn.execute("INSERT INTO groups (name, max_parallel) VALUES ('boom2', 1)")
    raise RuntimeError("boom")


def test_unit_commits_on_success(run_store: StoreRunner) -> None:
    """Rows written by a unit are visible to readers once `write` returns."""

    async def body(store: Store) -> int:
        await store.pool.write(_insert("a", "b"))
        return await _count(store.pool, "groups")

    assert run_store(body) == 2


def test_unit_rolls_back_everything_and_reraises(run_store: StoreRunner) -> None:
    """An exception in a unit undoes every row it wrote and propagates as is."""

    async def body(store: Store) -> tuple[int, int]:
        with pytest.raises(RuntimeError, match="boom"):
            await store.pool.write(_boom)
        lost = await _count(store.pool, "groups")
        # The writer is usable again: no transaction was left open.
        await store.pool.write(_insert("c"))
        return lost, await _count(store.pool, "groups")

    assert run_store(body) == (0, 1)


def test_group_commit_isolates_a_failing_unit(run_store: StoreRunner) -> None:
    """Units queued together share one transaction; one that fails undoes only itself."""

    async def body(store: Store) -> tuple[list[object], int, int]:
        groups_before = store.pool.writer.groups
        results: list[object] = await asyncio.gather(
            store.pool.write(_insert("a")),
            store.pool.write(_boom),
            store.pool.write(_insert("c")),
            *(store.pool.write(_insert(f"n{i}")) for i in range(50)),
            return_exceptions=True,
        )
        names = [r[0] for r in await store.pool.fetch_all("SELECT name FROM groups")]
        return results[:3], len(names), store.pool.writer.groups - groups_before

    first, rows, transactions = run_store(body)
    assert first[0] is None and isinstance(first[1], RuntimeError) and first[2] is None
    assert rows == 52
    assert transactions < 10  # 53 units, a few group commits


def test_cancelled_caller_never_wedges_the_writer(run_store: StoreRunner) -> None:
    """A caller cancelled at any point leaves no transaction open: later writes work (x60)."""

    async def body(store: Store) -> int:
        for i in range(60):
            task = asyncio.create_task(store.pool.write(_insert(f"x{i}")))
            for _ in range(random.randrange(4)):
                await asyncio.sleep(0)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await store.pool.write(_insert(f"y{i}"))  # would fail if a BEGIN were left open
        return await _count(store.pool, "groups")

    rows = run_store(body)
    # Every y row is there; an x row is there if its unit ran (a cancelled caller's unit runs).
    assert 60 <= rows <= 120


def test_writer_keeps_nothing_of_a_written_unit(run_store: StoreRunner) -> None:
    """Once a unit is answered, the writer holds neither it nor its result (a unit's closure
    may hold a 50,000-job batch: kept until the next write, it stayed alive for nothing)."""

    class Batch:
        """Stands for a big request a unit's closure holds."""

    async def body(store: Store) -> None:
        for _ in range(3):
            batch = Batch()
            gone = weakref.ref(batch)

            def unit(conn: sqlite3.Connection, batch: Batch = batch) -> Batch:
                conn.execute("SELECT 1")
                return batch

            assert await store.pool.write(unit) is batch
            del batch, unit
            # The worker thread drops its work item just after handing the result over.
            for _ in range(200):
                if gone() is None:
                    break
                await asyncio.sleep(0.01)
            assert gone() is None, "the writer still holds the last unit or its result"

    run_store(body)


def test_integrity_error_becomes_conflict(run_store: StoreRunner) -> None:
    """A constraint violation comes out as Conflict (not sqlite3) and rolls back the unit."""

    async def body(store: Store) -> tuple[Conflict, int]:
        with pytest.raises(Conflict) as info:
            await store.pool.write(_insert("x", "y", "x"))
        return info.value, await _count(store.pool, "groups")

    err, left = run_store(body)
    assert not isinstance(err, sqlite3.Error)
    assert err.data is not None and "UNIQUE" in err.data["detail"].upper()
    assert left == 0


def test_readers_do_not_wait_for_the_writer(run_store: StoreRunner) -> None:
    """While a write transaction is open, a read answers at once with the last committed state."""

    async def body(store: Store) -> tuple[list[str], int, int]:
        events: list[str] = []
        written = threading.Event()
        release = threading.Event()

        def slow(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO groups (name, max_parallel) VALUES ('w', 1)")
            written.set()
            release.wait(10)

        task = asyncio.create_task(store.pool.write(slow))
        await asyncio.to_thread(written.wait, 10)
        # Bounded by a generous timeout only so a regression fails instead of hanging;
        # the ordering of events is what the test checks.
        row = await asyncio.wait_for(store.pool.fetch_one("SELECT count(*) FROM groups"), 5)
        assert row is not None
        events.append("read")
        release.set()
        await task
        events.append("commit")
        return events, int(row[0]), await _count(store.pool, "groups")

    events, during, after = run_store(body)
    assert events == ["read", "commit"]
    assert during == 0
    assert after == 1


def test_unusable_files_are_refused(tmp_path: Path) -> None:
    """A newer schema, another program's database, or a file that is not SQLite: StorageError."""
    newer = tmp_path / "newer.db"
    with contextlib.closing(sqlite3.connect(newer)) as conn, conn:
        conn.execute("PRAGMA user_version=99")
    foreign = tmp_path / "foreign.db"
    with contextlib.closing(sqlite3.connect(foreign)) as conn, conn:
        conn.execute("CREATE TABLE customers (id INTEGER)")
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database, just some text " * 100)

    async def open_(path: Path) -> str:
        try:
            pool = await Pool.open(path)
        except StorageError as exc:
            return str(exc)
        await pool.close()
        return "opened"

    assert "newer" in asyncio.run(open_(newer))
    assert "not a hero-procd database" in asyncio.run(open_(foreign))
    assert "not SQLite" in asyncio.run(open_(junk))
    with contextlib.closing(sqlite3.connect(foreign)) as conn, conn:
        assert conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 1


def test_reader_connections_are_query_only(run_store: StoreRunner) -> None:
    """A write through a reader fails with StorageError and changes nothing."""

    async def body(store: Store) -> tuple[BaseException, int]:
        with pytest.raises(StorageError) as info:
            async with store.pool.reader() as conn:
                await conn.execute("INSERT INTO groups (name, max_parallel) VALUES ('r', 1)")
        return info.value, await _count(store.pool, "groups")

    err, count = run_store(body)
    assert not isinstance(err, sqlite3.Error)
    assert isinstance(err.__cause__, pool_mod.DB_ERRORS)
    assert count == 0


def test_read_errors_are_translated(run_store: StoreRunner) -> None:
    """A failing read raises StorageError, not a driver exception."""

    async def body(store: Store) -> StorageError:
        with pytest.raises(StorageError) as info:
            await store.pool.fetch_all("SELECT * FROM no_such_table")
        return info.value

    err = run_store(body)
    assert err.data is not None and "no_such_table" in err.data["detail"]


def test_chunks_split_in_order() -> None:
    """`chunks` yields consecutive slices of at most the size, covering every item once."""
    items = list(range(2500))
    parts = list(chunks(items))
    assert [len(p) for p in parts] == [CHUNK, CHUNK, 2500 - 2 * CHUNK]
    assert [x for p in parts for x in p] == items
    assert [list(p) for p in chunks([1, 2, 3, 4, 5], 2)] == [[1, 2], [3, 4], [5]]
    assert list(chunks([], 10)) == []
    assert [list(p) for p in chunks(list(range(999)))] == [list(range(999))]


def test_placeholders_and_marks() -> None:
    """`placeholders(n)` makes n bound-parameter marks; `with_marks` fills a statement."""
    assert placeholders(1) == "?"
    assert placeholders(3) == "?,?,?"
    assert placeholders(0) == ""
    sql = with_marks("job_delete_ids", 4)
    assert "?,?,?,?" in sql and "{marks}" not in sql


def test_close_checkpoints_the_wal(db_path: Path) -> None:
    """close() copies the WAL into the database: the -wal file is empty or gone afterwards."""
    wal = Path(f"{db_path}-wal")

    def wal_size() -> int:
        return wal.stat().st_size if wal.exists() else 0

    async def main() -> tuple[int, int, int]:
        store = await Store.open(db_path)
        await store.pool.write(_insert(*(f"g{i}" for i in range(50))))
        # Another connection keeps the WAL alive past close, so only an explicit
        # checkpoint (not SQLite's last-connection cleanup) can empty it.
        other = await aiosqlite.connect(db_path)
        try:
            async with other.execute("SELECT count(*) FROM groups") as cur:
                await cur.fetchone()
            before = await asyncio.to_thread(wal_size)
            await store.close()
            after = await asyncio.to_thread(wal_size)
            async with other.execute("SELECT count(*) FROM groups") as cur:
                row = await cur.fetchone()
            assert row is not None
            return before, after, int(row[0])
        finally:
            await other.close()

    before, after, rows = asyncio.run(main())
    assert before > 0
    assert after == 0
    assert rows == 50


def test_postgresql_migrations_run_once_when_nodes_start_together(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Three stores opened at once on one new schema: each migration is applied once (the
    advisory lock), and all three see the same, latest schema."""
    from tests.pg import pg_schema

    caplog.set_level(logging.INFO, logger="hero_procd.store")
    with pg_schema("mig") as dsn:

        async def main() -> list[object]:
            stores = await asyncio.gather(*(Store.open(dsn, node=f"n{i}") for i in range(3)))
            try:
                return [await _version(s) for s in stores] + [
                    await _count(stores[0].pool, "schema_version")
                ]
            finally:
                for s in stores:
                    await s.close()

        *versions, rows = asyncio.run(main())
    assert versions == [LAST_VERSION] * 3
    assert rows == len(MIGRATIONS)
    applied = [r for r in caplog.records if r.getMessage() == "migrating database"]
    assert len(applied) == len(MIGRATIONS)
