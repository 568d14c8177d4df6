"""The daemon's connections to one SQLite database in WAL mode.

Writes: one thread owns the only writing connection. A caller hands it a
*unit* — a plain function of a `sqlite3.Connection` — and awaits its
result. Units queued while a transaction is being written share the next
one (group commit): one `BEGIN IMMEDIATE … COMMIT` and one thread hop for
the whole group, each unit inside a savepoint of its own so one unit's
error undoes only that unit. A unit runs on the database thread from BEGIN
to COMMIT, so nothing a caller does — being cancelled included — can leave
the connection inside a transaction, and its result is committed before
the caller sees it (read-your-writes).

Reads: several aiosqlite reader connections (WAL: readers never wait
behind the writer). Driver errors are translated here, so nothing above the
store imports sqlite3 for its errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import aiosqlite

from hero_procd.errors import Conflict, HeroError, StorageError
from hero_procd.store.schema import MIGRATIONS

log = logging.getLogger(__name__)

# SQLite's historic bound on host parameters per statement.
CHUNK = 999
BUSY_TIMEOUT_MS = 5000
# Units per group transaction: bounds how long one commit holds the writer.
MAX_GROUP = 512
# Times a unit deadlocked by another node's transaction (PostgreSQL) is run again.
UNIT_RETRIES = 10
# How long a closing writer waits for the units handed to it (above the busy timeout).
CLOSE_TIMEOUT_S = 10.0
# A file that is not ours, or not a database, must be told within this time.
OPEN_TIMEOUT_S = 5.0

Row = sqlite3.Row
T = TypeVar("T")


class Cursor(Protocol):
    """What a unit uses of a cursor (sqlite3's, or the PostgreSQL adapter's)."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Any: ...


class Conn(Protocol):
    """What a unit uses of a connection: sqlite3.Connection, or the PostgreSQL adapter
    (store/postgres.py), which runs the same SQL texts translated to its dialect."""

    @property
    def in_transaction(self) -> bool: ...

    def execute(self, sql: str, parameters: Any = (), /) -> Cursor: ...

    def executemany(self, sql: str, parameters: Any, /) -> Cursor: ...


# Driver errors of the backends: sqlite3's, and those the PostgreSQL backend registers.
DB_ERRORS: tuple[type[Exception], ...] = (sqlite3.Error,)
INTEGRITY_ERRORS: tuple[type[Exception], ...] = (sqlite3.IntegrityError,)


def register_driver(error: type[Exception], integrity: type[Exception]) -> None:
    """Make a second driver's errors known to the translation (and to units that catch
    a constraint violation)."""
    global DB_ERRORS, INTEGRITY_ERRORS
    if error not in DB_ERRORS:
        DB_ERRORS = (*DB_ERRORS, error)
        INTEGRITY_ERRORS = (*INTEGRITY_ERRORS, integrity)


def is_postgres(conn: Conn) -> bool:
    """Whether a unit runs on the PostgreSQL backend (the few places the dialects differ
    in more than SQL text)."""
    return getattr(conn, "dialect", "sqlite") == "postgres"


def chunks(items: Sequence[Any], size: int = CHUNK) -> Iterable[Sequence[Any]]:
    """Split `items` into consecutive slices of at most `size`."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def placeholders(n: int) -> str:
    """`?,?,…` with n marks, for an `IN (…)` list of bound parameters."""
    return ",".join("?" * n)


def translate(exc: BaseException) -> HeroError:
    """Map a driver error onto the domain's exceptions."""
    if isinstance(exc, INTEGRITY_ERRORS):
        return Conflict("constraint violated", {"detail": str(exc)})
    text = str(exc)
    if isinstance(exc, sqlite3.OperationalError) and "locked" in text:
        return StorageError("database is locked", {"detail": text})
    return StorageError("database error", {"detail": text})


def _failure(exc: BaseException) -> BaseException:
    """What the caller of a unit that raised `exc` is told (never a BaseException the
    event loop would re-raise: KeyboardInterrupt, SystemExit, a cancellation)."""
    if isinstance(exc, DB_ERRORS):
        return translate(exc)
    if isinstance(exc, Exception):
        return exc
    err = StorageError("the write was interrupted", {"detail": f"{type(exc).__name__}: {exc}"})
    err.__cause__ = exc
    return err


def _pragmas(conn: sqlite3.Connection, *, reader: bool) -> None:
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA temp_store=MEMORY")
    # After a checkpoint the WAL is cut back to this size instead of staying at its peak.
    conn.execute(f"PRAGMA journal_size_limit={64 * 1024 * 1024}")
    if reader:
        conn.execute("PRAGMA query_only=ON")


async def _connect_reader(path: Path) -> aiosqlite.Connection:
    conn = await aiosqlite.connect(str(path), isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    for sql in (
        f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}",
        "PRAGMA foreign_keys=ON",
        "PRAGMA temp_store=MEMORY",
        "PRAGMA query_only=ON",
    ):
        await conn.execute(sql)
    return conn


def _create_private(path: Path) -> bool:
    """Create the database file 0600 (and its folder 0700); True if it is new."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        return False
    os.close(fd)
    return True


@dataclass
class _Unit:
    fn: Callable[[Conn], Any]
    future: asyncio.Future[Any]
    in_transaction: bool = True


class Writer:
    """The thread that owns the writing connection, and its queue of units."""

    # How a group transaction starts (SQLite: take the write lock at once).
    BEGIN = "BEGIN IMMEDIATE"
    # Whether a group of one unit runs in a savepoint as well (SQLite: no need).
    SAVEPOINT_ALONE = False

    def __init__(self, path: Path) -> None:
        self.path = path
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="db-writer")
        self._conn: Any = None
        self._queue: list[_Unit] = []
        self._kick = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._inflight: list[_Unit] = []
        self._closed = False
        self._loop_seen: asyncio.AbstractEventLoop | None = None
        self.groups = 0
        self.units = 0

    async def open(self) -> None:
        """Connect (on the writer thread), set WAL, migrate; start the group loop."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._thread, self._open_sync)
        self._task = loop.create_task(self._loop(), name="db-writer")

    def _open_sync(self) -> None:
        conn = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        try:
            conn.row_factory = sqlite3.Row
            _pragmas(conn, reader=False)
            _check_ours(conn)  # before anything writes to a file that may not be ours
            # auto_vacuum only takes effect before the first table exists.
            if conn.execute("PRAGMA page_count").fetchone()[0] == 0:
                conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()
            if mode is None or str(mode[0]).lower() != "wal":
                raise StorageError("could not switch the database to WAL", {"mode": str(mode)})
            _migrate(conn)
        except sqlite3.DatabaseError as exc:
            conn.close()
            if "not a database" in str(exc) or "malformed" in str(exc):
                raise StorageError(
                    "not a hero-procd database: the file is not SQLite", {"path": str(self.path)}
                ) from exc
            raise translate(exc) from exc
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    async def run(self, fn: Callable[[Conn], T], *, in_transaction: bool = True) -> T:
        """Run `fn(conn)` in the next group transaction; its result once committed."""
        if self._closed:
            raise StorageError("the database is closed")
        loop = self._loop_seen
        if loop is None or loop.is_closed():  # kept: get_running_loop is a getpid syscall
            loop = self._loop_seen = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._queue.append(_Unit(fn, fut, in_transaction))
        self._kick.set()
        # A caller cancelled here does not cancel the unit: it runs and commits as queued.
        return await fut

    def _begin(self, conn: Conn) -> Conn:
        """Open the group's transaction; the connection it runs on."""
        conn.execute(self.BEGIN)
        return conn

    def _aborted(self, conn: Conn) -> bool:
        """Whether a statement failed in the transaction, which takes no more (PostgreSQL;
        SQLite goes on after a failed statement)."""
        return False

    def _retryable(self, exc: BaseException) -> bool:
        """Whether a unit that raised `exc` may run again in the same group (SQLite: never)."""
        return False

    def pending(self) -> int:
        """Units waiting for the next group."""
        return len(self._queue)

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._kick.wait()
            self._kick.clear()
            while self._queue:
                group: list[_Unit] = []
                while self._queue and len(group) < MAX_GROUP:
                    unit = self._queue[0]
                    if not unit.in_transaction and group:
                        break
                    group.append(self._queue.pop(0))
                    if not unit.in_transaction:
                        break
                self._inflight = group
                try:
                    results = await asyncio.shield(
                        loop.run_in_executor(self._thread, self._run_group, group)
                    )
                except asyncio.CancelledError:
                    raise
                except BaseException as exc:
                    log.exception("a write group failed outside its units")
                    err = _failure(exc)
                    results = [(False, err) for _ in group]
                finally:
                    self._inflight = []
                self.groups += 1
                self.units += len(group)
                for unit, (ok, value) in zip(group, results, strict=True):
                    if unit.future.done():
                        continue
                    if ok:
                        unit.future.set_result(value)
                    else:
                        unit.future.set_exception(value)
                # Not kept until the next group: a unit's closure may hold a 50,000-job batch.
                del group, results, unit, value

    def _run_group(self, group: list[_Unit]) -> list[tuple[bool, Any]]:
        conn: Conn | None = self._conn
        assert conn is not None
        if not group[0].in_transaction:
            try:
                return [(True, group[0].fn(conn))]
            except BaseException as exc:
                return [(False, _failure(exc))]
        try:
            conn = self._begin(conn)
        except DB_ERRORS as exc:
            err = translate(exc)
            return [(False, err) for _ in group]
        out: list[tuple[bool, Any]] = []
        try:
            if len(group) == 1 and not self.SAVEPOINT_ALONE:
                try:
                    out.append((True, group[0].fn(conn)))
                except BaseException as exc:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    return [(False, _failure(exc))]
            else:
                for unit in group:
                    conn.execute("SAVEPOINT unit")
                    try:
                        value = unit.fn(conn)
                    except BaseException as exc:
                        retried = 0
                        while (
                            self._retryable(exc) and conn.in_transaction and retried < UNIT_RETRIES
                        ):
                            # Another node's transaction deadlocked this unit (PostgreSQL):
                            # its savepoint is undone; run it again after a random pause that
                            # grows (crossing units of two nodes deadlocked again at once).
                            retried += 1
                            conn.execute("ROLLBACK TO unit")
                            time.sleep(random.uniform(0.0, min(0.2, 0.005 * 2**retried)))
                            try:
                                value = unit.fn(conn)
                            except BaseException as again:
                                exc = again
                            else:
                                break
                        else:
                            retried = -1
                        if retried >= 0:
                            conn.execute("RELEASE unit")
                            out.append((True, value))
                            continue
                        if not conn.in_transaction:
                            # SQLite rolled the whole transaction back (disk full, I/O
                            # error): nothing of the group is written; say why.
                            undone = _failure(exc)
                            return [(False, undone) for _ in group]
                        conn.execute("ROLLBACK TO unit")
                        conn.execute("RELEASE unit")
                        out.append((False, _failure(exc)))
                    else:
                        if self._aborted(conn):
                            # PostgreSQL: a statement of the unit failed and the unit went on
                            # (handled it): the transaction is aborted. Undo this unit alone;
                            # the others of the group are written.
                            conn.execute("ROLLBACK TO unit")
                            conn.execute("RELEASE unit")
                            err = StorageError(
                                "a statement of this write failed (the write was undone)"
                            )
                            out.append((False, err))
                            continue
                        conn.execute("RELEASE unit")
                        out.append((True, value))
            conn.execute("COMMIT")
        except DB_ERRORS as exc:
            # COMMIT (or a savepoint statement) failed: nothing of the group is written.
            if conn.in_transaction:
                with contextlib.suppress(*DB_ERRORS):
                    conn.execute("ROLLBACK")
            err = translate(exc)
            return [(False, err) for _ in group]
        return out

    async def close(self) -> None:
        """Write what is queued, checkpoint the WAL, close the connection and the thread."""
        self._closed = True
        # Everything handed over is answered: the queued units and the group being written,
        # within a bound (a unit that never returns must not hold the stop forever).
        deadline = time.monotonic() + CLOSE_TIMEOUT_S
        while (self._queue or self._inflight) and time.monotonic() < deadline:
            self._kick.set()
            await asyncio.sleep(0.01)
        stuck = self._queue + self._inflight  # before the cancel, which forgets the group
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if stuck:
            log.error(
                "database writer did not finish; closing without it", extra={"units": len(stuck)}
            )
            for unit in stuck:
                if not unit.future.done():
                    unit.future.set_exception(StorageError("the database is closing"))
            self._queue = []
            # Committed data is durable in the WAL already. The connection is closed on its
            # thread behind the stuck unit, if that ever returns.
            self._thread.submit(self._close_sync)
            self._thread.shutdown(wait=False)
            return
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._thread, self._close_sync)
        self._thread.shutdown(wait=True)

    def _close_sync(self) -> None:
        if self._conn is None:
            return
        try:
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error:
            log.exception("checkpoint on close failed")
        self._conn.close()
        self._conn = None


class DbPool(Protocol):
    """What the sub-APIs use of a backend's connections (Pool here, PgPool for PostgreSQL)."""

    backend: str

    @property
    def writer(self) -> Writer: ...

    async def write(self, fn: Callable[[Any], T]) -> T: ...

    async def side_write(self, sql: str, params: Any = (), *, idempotent: bool = False) -> int:
        """One statement, committed at once; its row count. `idempotent`: running it twice
        changes and counts no more than once (PostgreSQL may then repeat it on a new
        connection when the server dropped the idle one)."""
        ...

    async def maintenance(self, fn: Callable[[Any], T]) -> T: ...

    def reader(self) -> contextlib.AbstractAsyncContextManager[Any]: ...

    async def fetch_all(
        self, sql: str, params: Sequence[Any] | dict[str, Any] = ()
    ) -> list[Any]: ...

    async def fetch_one(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> Any: ...

    async def close(self) -> None: ...


class Pool:
    """The daemon's connections to one SQLite database."""

    backend = "sqlite"

    def __init__(self, path: Path, writer: Writer, readers: list[aiosqlite.Connection]):
        self.path = path
        self.writer = writer
        self._readers: asyncio.Queue[aiosqlite.Connection] = asyncio.Queue()
        self._all_readers = readers
        for conn in readers:
            self._readers.put_nowait(conn)

    @classmethod
    async def open(cls, path: Path, readers: int = 4) -> Pool:
        """Open (creating and migrating if needed) the database at `path`."""
        await asyncio.to_thread(_create_private, path)
        writer = Writer(path)
        try:
            await asyncio.wait_for(writer.open(), OPEN_TIMEOUT_S)
        except TimeoutError as exc:
            writer._thread.shutdown(wait=False)
            raise StorageError(
                "the database did not open within 5 s (locked by another program?)",
                {"path": str(path)},
            ) from exc
        except BaseException:
            writer._thread.shutdown(wait=False)
            raise
        try:
            conns = [await _connect_reader(path) for _ in range(max(1, readers))]
        except BaseException:
            await writer.close()
            raise
        return cls(path, writer, conns)

    async def close(self) -> None:
        """Close the readers; write what is queued; checkpoint the WAL and close the writer."""
        for conn in self._all_readers:
            await conn.close()
        await self.writer.close()

    async def write(self, fn: Callable[[Conn], T]) -> T:
        """Run `fn(conn)` as one unit of the next group transaction; its result, committed."""
        return await self.writer.run(fn)

    async def side_write(self, sql: str, params: Any = (), *, idempotent: bool = False) -> int:
        """One statement, committed; its row count (SQLite has one writer: a unit; its
        connection is never dropped, so `idempotent` changes nothing)."""
        return await self.writer.run(lambda c: int(c.execute(sql, params).rowcount))

    async def maintenance(self, fn: Callable[[Conn], T]) -> T:
        """Run `fn(conn)` on the writer outside any transaction (PRAGMAs that need it)."""
        return await self.writer.run(fn, in_transaction=False)

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
        """All rows of one read (fetched in slices, so the loop serves others meanwhile)."""
        async with self.reader() as conn, conn.execute(sql, params) as cur:
            out: list[Row] = []
            while True:
                rows = await cur.fetchmany(500)
                if not rows:
                    return out
                out.extend(rows)

    async def fetch_one(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> Row | None:
        """The first row of one read, or None."""
        async with self.reader() as conn, conn.execute(sql, params) as cur:
            row: Row | None = await cur.fetchone()
            return row


def user_version(conn: sqlite3.Connection) -> int:
    """The schema version stored in the file."""
    row = conn.execute("PRAGMA user_version").fetchone()
    return int(row[0]) if row else 0


def _check_ours(conn: sqlite3.Connection) -> None:
    """Refuse a database of a newer hero-procd, or another program's; write nothing."""
    current = user_version(conn)
    latest = MIGRATIONS[-1][0]
    if current > latest:
        raise StorageError(
            f"the database has schema version {current}, newer than this hero-procd knows "
            f"({latest}): upgrade hero-procd",
            {"version": current, "supported": latest},
        )
    if current == 0:
        tables = conn.execute(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name != 'sqlite_sequence'"
        ).fetchone()[0]
        if tables:
            raise StorageError(
                "not a hero-procd database: the file holds other tables", {"tables": tables}
            )


def _migrate(conn: sqlite3.Connection) -> None:
    current = user_version(conn)
    for version, script in MIGRATIONS:
        if version <= current:
            continue
        log.info("migrating database", extra={"to_version": version})
        try:
            conn.executescript(
                f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version={version};\nCOMMIT;"
            )
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise translate(exc) from exc
