"""One writer and N reader aiosqlite connections on a WAL database.

Readers never wait behind the writer (WAL); all writes are serialised on the
single writer connection through `transaction()`. Driver errors are
translated here, so nothing above the store imports sqlite3.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path
from typing import Any

import aiosqlite

from hero_procd.errors import Conflict, StorageError
from hero_procd.store.schema import MIGRATIONS

log = logging.getLogger(__name__)

# SQLite's historic bound on host parameters per statement.
CHUNK = 999
BUSY_TIMEOUT_MS = 5000

Row = sqlite3.Row


def chunks(items: Sequence[Any], size: int = CHUNK) -> Iterable[Sequence[Any]]:
    """Split `items` into consecutive slices of at most `size`."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def placeholders(n: int) -> str:
    """`?,?,…` with n marks, for an `IN (…)` list of bound parameters."""
    return ",".join("?" * n)


def translate(exc: sqlite3.Error) -> Exception:
    """Map a driver error onto the domain's exceptions."""
    if isinstance(exc, sqlite3.IntegrityError):
        return Conflict("constraint violated", {"detail": str(exc)})
    text = str(exc)
    if isinstance(exc, sqlite3.OperationalError) and "locked" in text:
        return StorageError("database is locked", {"detail": text})
    return StorageError("database error", {"detail": text})


async def _connect(path: Path, *, reader: bool) -> aiosqlite.Connection:
    conn = await aiosqlite.connect(str(path), isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    await conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    await conn.execute("PRAGMA foreign_keys=ON")
    await conn.execute("PRAGMA synchronous=NORMAL")
    await conn.execute("PRAGMA temp_store=MEMORY")
    # After a checkpoint the WAL is cut back to this size instead of staying at its peak.
    await conn.execute(f"PRAGMA journal_size_limit={64 * 1024 * 1024}")
    if reader:
        await conn.execute("PRAGMA query_only=ON")
    return conn


def _create_private(path: Path) -> bool:
    """Create the database file 0600 (and its folder 0700); True if it is new."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return False
    os.close(fd)
    return True


class Pool:
    """The daemon's connections to one SQLite database."""

    def __init__(
        self, path: Path, writer: aiosqlite.Connection, readers: list[aiosqlite.Connection]
    ):
        self.path = path
        self._writer = writer
        self._write_lock = asyncio.Lock()
        self._readers: asyncio.Queue[aiosqlite.Connection] = asyncio.Queue()
        self._all_readers = readers
        for conn in readers:
            self._readers.put_nowait(conn)

    @classmethod
    async def open(cls, path: Path, readers: int = 4) -> Pool:
        """Open (creating and migrating if needed) the database at `path`."""
        await asyncio.to_thread(_create_private, path)
        writer = await _connect(path, reader=False)
        try:
            # auto_vacuum only takes effect before the first table exists.
            async with writer.execute("PRAGMA page_count") as cur:
                row = await cur.fetchone()
            if row is not None and row[0] == 0:
                await writer.execute("PRAGMA auto_vacuum=INCREMENTAL")
            async with writer.execute("PRAGMA journal_mode=WAL") as cur:
                mode = await cur.fetchone()
            if mode is None or str(mode[0]).lower() != "wal":
                raise StorageError("could not switch the database to WAL", {"mode": str(mode)})
            await _migrate(writer)
            conns = [await _connect(path, reader=True) for _ in range(max(1, readers))]
        except BaseException:
            await writer.close()
            raise
        return cls(path, writer, conns)

    async def close(self) -> None:
        """Checkpoint the WAL into the database file and close every connection."""
        async with self._write_lock:
            for conn in self._all_readers:
                await conn.close()
            try:
                await self._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:
                log.exception("checkpoint on close failed")
            await self._writer.close()

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """The writer inside `BEGIN IMMEDIATE`: committed on success, rolled back on error."""
        async with self._write_lock:
            conn = self._writer
            try:
                await conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise translate(exc) from exc
            try:
                yield conn
            except BaseException as exc:
                try:
                    await conn.execute("ROLLBACK")
                except sqlite3.Error:
                    log.exception("rollback failed")
                if isinstance(exc, sqlite3.Error):
                    raise translate(exc) from exc
                raise
            else:
                try:
                    await conn.execute("COMMIT")
                except sqlite3.Error as exc:
                    with contextlib.suppress(sqlite3.Error):
                        await conn.execute("ROLLBACK")
                    raise translate(exc) from exc

    @contextlib.asynccontextmanager
    async def writer_outside_transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """The writer, held, with no transaction open: for PRAGMAs that must run outside one."""
        async with self._write_lock:
            try:
                yield self._writer
            except sqlite3.Error as exc:
                raise translate(exc) from exc

    @contextlib.asynccontextmanager
    async def reader(self) -> AsyncIterator[aiosqlite.Connection]:
        """A reader connection, for as long as the block runs."""
        conn = await self._readers.get()
        try:
            yield conn
        except sqlite3.Error as exc:
            raise translate(exc) from exc
        finally:
            self._readers.put_nowait(conn)

    async def fetch_all(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[Row]:
        """All rows of one read."""
        async with self.reader() as conn, conn.execute(sql, params) as cur:
            return list(await cur.fetchall())

    async def fetch_one(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> Row | None:
        """The first row of one read, or None."""
        async with self.reader() as conn, conn.execute(sql, params) as cur:
            row: Row | None = await cur.fetchone()
            return row


async def _migrate(conn: aiosqlite.Connection) -> None:
    async with conn.execute("PRAGMA user_version") as cur:
        row = await cur.fetchone()
    current = int(row[0]) if row else 0
    for version, script in MIGRATIONS:
        if version <= current:
            continue
        log.info("migrating database", extra={"to_version": version})
        try:
            await conn.executescript(
                f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version={version};\nCOMMIT;"
            )
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                await conn.execute("ROLLBACK")
            raise translate(exc) from exc
