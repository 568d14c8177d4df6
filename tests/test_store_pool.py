"""The connection pool: pragmas, file modes, migrations, transactions, readers, close."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path

import aiosqlite
import pytest

from hero_procd.errors import Conflict, StorageError
from hero_procd.store import Store
from hero_procd.store.pool import CHUNK, Pool, chunks, placeholders
from hero_procd.store.queries import with_marks
from hero_procd.store.schema import MIGRATIONS
from tests.conftest import StoreRunner

LAST_VERSION = MIGRATIONS[-1][0]


async def _count(pool: Pool, table: str) -> int:
    row = await pool.fetch_one(f"SELECT count(*) FROM {table}")  # test-chosen table names only
    assert row is not None
    return int(row[0])


async def _pragma(conn: aiosqlite.Connection, name: str) -> object:
    async with conn.execute(f"PRAGMA {name}") as cur:
        row = await cur.fetchone()
    assert row is not None
    return row[0]


def test_new_database_pragmas(run_store: StoreRunner) -> None:
    """A new database is WAL, incremental auto_vacuum, migrated, with foreign keys on."""

    async def body(store: Store) -> dict[str, object]:
        out: dict[str, object] = {}
        async with store.pool.reader() as conn:
            for name in ("journal_mode", "auto_vacuum", "user_version", "foreign_keys"):
                out[f"reader.{name}"] = await _pragma(conn, name)
        async with store.pool.transaction() as conn:
            out["writer.foreign_keys"] = await _pragma(conn, "foreign_keys")
            out["writer.synchronous"] = await _pragma(conn, "synchronous")
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
    caplog.set_level(logging.INFO, logger="hero_procd.store.pool")

    async def create(store: Store) -> None:
        async with store.pool.transaction() as conn:
            await conn.execute("INSERT INTO groups (name, max_parallel) VALUES ('g', 2)")

    run_store(create)
    first = [r for r in caplog.records if r.getMessage() == "migrating database"]
    assert len(first) == len(MIGRATIONS)
    caplog.clear()

    async def reopen(store: Store) -> tuple[object, int]:
        async with store.pool.reader() as conn:
            version = await _pragma(conn, "user_version")
        return version, await _count(store.pool, "groups")

    version, groups = run_store(reopen)
    assert [r for r in caplog.records if r.getMessage() == "migrating database"] == []
    assert version == LAST_VERSION
    assert groups == 1


def test_transaction_commits_on_success(run_store: StoreRunner) -> None:
    """Rows written in a transaction are visible to readers after it ends."""

    async def body(store: Store) -> int:
        async with store.pool.transaction() as conn:
            await conn.executemany(
                "INSERT INTO groups (name, max_parallel) VALUES (?, ?)", [("a", 1), ("b", 2)]
            )
        return await _count(store.pool, "groups")

    assert run_store(body) == 2


def test_transaction_rolls_back_everything_and_reraises(run_store: StoreRunner) -> None:
    """An exception in the block undoes every row written before it and propagates as is."""

    async def body(store: Store) -> tuple[int, int]:
        with pytest.raises(RuntimeError, match="boom"):
            async with store.pool.transaction() as conn:
                await conn.execute("INSERT INTO groups (name, max_parallel) VALUES ('a', 1)")
                await conn.execute("INSERT INTO groups (name, max_parallel) VALUES ('b', 1)")
                raise RuntimeError("boom")
        lost = await _count(store.pool, "groups")
        # The writer is usable again: no transaction was left open.
        async with store.pool.transaction() as conn:
            await conn.execute("INSERT INTO groups (name, max_parallel) VALUES ('c', 1)")
        return lost, await _count(store.pool, "groups")

    assert run_store(body) == (0, 1)


def test_integrity_error_becomes_conflict(run_store: StoreRunner) -> None:
    """A constraint violation comes out as Conflict (not sqlite3) and rolls back the rest."""

    async def body(store: Store) -> tuple[Conflict, int]:
        with pytest.raises(Conflict) as info:
            async with store.pool.transaction() as conn:
                await conn.execute("INSERT INTO groups (name, max_parallel) VALUES ('x', 1)")
                await conn.execute("INSERT INTO groups (name, max_parallel) VALUES ('y', 1)")
                await conn.execute("INSERT INTO groups (name, max_parallel) VALUES ('x', 2)")
        return info.value, await _count(store.pool, "groups")

    err, left = run_store(body)
    assert not isinstance(err, sqlite3.Error)
    assert isinstance(err.__cause__, sqlite3.IntegrityError)
    assert err.data is not None and "UNIQUE" in err.data["detail"]
    assert left == 0


def test_readers_do_not_wait_for_the_writer(run_store: StoreRunner) -> None:
    """While a write transaction is open, a read answers at once with the last committed state."""

    async def body(store: Store) -> tuple[list[str], int, int]:
        events: list[str] = []
        written = asyncio.Event()
        release = asyncio.Event()

        async def writer() -> None:
            async with store.pool.transaction() as conn:
                await conn.execute("INSERT INTO groups (name, max_parallel) VALUES ('w', 1)")
                written.set()
                await release.wait()
            events.append("commit")

        task = asyncio.create_task(writer())
        await written.wait()
        # Bounded by a generous timeout only so a regression fails instead of hanging;
        # the ordering of events is what the test checks.
        row = await asyncio.wait_for(store.pool.fetch_one("SELECT count(*) FROM groups"), 5)
        assert row is not None
        events.append("read")
        release.set()
        await task
        return events, int(row[0]), await _count(store.pool, "groups")

    events, during, after = run_store(body)
    assert events == ["read", "commit"]
    assert during == 0
    assert after == 1


def test_reader_connections_are_query_only(run_store: StoreRunner) -> None:
    """A write through a reader fails with StorageError and changes nothing."""

    async def body(store: Store) -> tuple[BaseException, int]:
        with pytest.raises(StorageError) as info:
            async with store.pool.reader() as conn:
                await conn.execute("INSERT INTO groups (name, max_parallel) VALUES ('r', 1)")
        return info.value, await _count(store.pool, "groups")

    err, count = run_store(body)
    assert not isinstance(err, sqlite3.Error)
    assert isinstance(err.__cause__, sqlite3.Error)
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
        async with store.pool.transaction() as conn:
            await conn.executemany(
                "INSERT INTO groups (name, max_parallel) VALUES (?, 1)",
                [(f"g{i}",) for i in range(50)],
            )
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
