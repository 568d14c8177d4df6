"""The PostgreSQL backend: the same units, SQL texts and sub-APIs as SQLite, on psycopg 3.

Why psycopg 3 (measured, see README "PostgreSQL"): the store's writes are *units*,
plain functions of a connection run on one writer thread from BEGIN to COMMIT.
psycopg's synchronous connection runs those units unchanged (one unit of two
statements and its commit: 0.58 ms against asyncpg's 1.14 ms), so both backends
share every unit and every SQL text; only the statements in queries_pg.sql differ.

- `PgConn` gives a unit what sqlite3.Connection gives it (`execute`, `executemany`,
  `in_transaction`, rows readable by index and by name), translating each SQLite
  text once: `?`/`:name` placeholders, the few overridden statements.
- `PgWriter` is the SQLite writer (group commit, a savepoint per unit) on a
  psycopg connection, reconnecting when the database comes back.
- Readers are psycopg async connections (autocommit): reads never wait behind
  the writer, as with WAL.
- Migrations are SQLite's, translated (types, identity ids), applied once under
  an advisory lock in their own schema (default `hero_proc`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import re
from collections.abc import AsyncIterator, Callable, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql as psql
from psycopg.adapt import Loader
from psycopg.pq import TransactionStatus

from hero_procd.errors import StorageError
from hero_procd.store.nodes import session_name
from hero_procd.store.pool import Writer, register_driver, translate
from hero_procd.store.queries import Q, load
from hero_procd.store.schema import MIGRATIONS

log = logging.getLogger(__name__)

register_driver(psycopg.Error, psycopg.IntegrityError)

T = TypeVar("T")

DEFAULT_SCHEMA = "hero_proc"
# A unit never waits between its statements for anything but this process: a session idle
# inside a transaction this long belongs to a node cut off mid-unit.
DEFAULT_IDLE_TX_S = 7.5
# Seconds a connection attempt may take (a node cut off from the database must notice).
CONNECT_TIMEOUT_S = 5
# One key for the migrations of every schema (hashed with the schema name).
_MIGRATE_LOCK = "hero_proc.migrate:"


def split_dsn(dsn: str) -> tuple[str, str]:
    """(DSN without our own `schema=` query parameter, schema name)."""
    parts = urlsplit(dsn)
    query = parse_qsl(parts.query, keep_blank_values=True)
    schema = DEFAULT_SCHEMA
    kept = []
    for key, value in query:
        if key == "schema":
            schema = value
        else:
            kept.append((key, value))
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", schema):
        raise StorageError("invalid schema name in the database URL", {"schema": schema})
    return urlunsplit(parts._replace(query=urlencode(kept))), schema


# -- SQL: one text per statement, translated from SQLite's --------------------------

_OVERRIDES: dict[str, str] = {Q[name]: text for name, text in load("queries_pg.sql").items()}
_MARKS = re.compile(r"IN \((\?(?:,\?)*)\)")
_NAMED = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")
_INDEXED = re.compile(r"\s+INDEXED BY \w+")
# `(:p IS NULL OR …)`: PostgreSQL types a parameter where it first meets it, and
# `IS NULL` tells it nothing; the test goes last, after the comparison that types it.
_PARAM_IS_NULL_OR = re.compile(r"\((:[A-Za-z_]\w*) IS NULL OR ")
# SQLite's JSON functions, as the tags and specs (JSON text) use them.
_JSON_EACH = re.compile(r"json_each\(([\w.]+)\) WHERE value =")
_JSON_EXTRACT = re.compile(r"json_extract\(([\w.]+), '\$\.(\w+)'\)")


@functools.lru_cache(maxsize=4096)
def to_pg(sql: str) -> str:
    """The PostgreSQL text of a statement written for SQLite (cached per text)."""
    text = _OVERRIDES.get(sql)
    if text is None:
        found = _MARKS.search(sql)
        if found is not None:
            template = sql[: found.start(1)] + "{marks}" + sql[found.end(1) :]
            over = _OVERRIDES.get(template)
            if over is not None:
                text = over.replace("{marks}", found.group(1))
    if text is None:
        text = sql
    text = _INDEXED.sub("", text).replace("%", "%%")
    text = _null_test_last(text)
    text = _JSON_EACH.sub(
        r"jsonb_array_elements_text(CAST(\1 AS jsonb)) AS je(value) WHERE je.value =", text
    )
    text = _JSON_EXTRACT.sub(r"(CAST(\1 AS jsonb) ->> '\2')", text)
    return _NAMED.sub(r"%(\1)s", text).replace("?", "%s")


def _null_test_last(text: str) -> str:
    """`(:p IS NULL OR expr)` → `(expr OR :p IS NULL)` (see _PARAM_IS_NULL_OR)."""
    while (found := _PARAM_IS_NULL_OR.search(text)) is not None:
        depth, end = 1, found.end()
        while depth:
            depth += {"(": 1, ")": -1}.get(text[end], 0)
            end += 1
        expr = text[found.end() : end - 1]
        text = f"{text[: found.start()]}({expr} OR {found.group(1)} IS NULL){text[end:]}"
    return text


def migration_to_pg(script: str) -> str:
    """A SQLite migration's DDL in PostgreSQL's types (text in byte order): a new column is
    one line, once."""
    text = re.sub(
        r"INTEGER PRIMARY KEY AUTOINCREMENT",
        "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
        script,
    )
    text = re.sub(r"\bREAL\b", "DOUBLE PRECISION", text)
    text = re.sub(r"\bINTEGER\b", "BIGINT", text)
    # Text compares and sorts by bytes, as in SQLite (BINARY), whatever the database's
    # default collation (initdb takes the system locale, e.g. en_US: 'Alpha' < 'alpha').
    text = re.sub(r"\bTEXT\b", 'TEXT COLLATE "C"', text)
    return re.sub(r"\)\s*WITHOUT ROWID", ")", text)


# -- rows readable by index and by name, like sqlite3.Row ---------------------------


class PgRow(tuple[Any, ...]):
    """A result row: `row[0]`, `row["name"]`, `row.keys()`, unpacking."""

    __slots__ = ()
    _index: dict[str, int] = {}

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return tuple.__getitem__(self, self._index[key])
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        """The column names, in order."""
        return list(self._index)


@functools.lru_cache(maxsize=512)
def _row_class(names: tuple[str, ...]) -> type[PgRow]:
    return type("PgRow", (PgRow,), {"__slots__": (), "_index": {n: i for i, n in enumerate(names)}})


def _row_factory(cursor: Any) -> Callable[[Sequence[Any]], Any]:
    desc = cursor.description
    if desc is None:
        return tuple
    cls = _row_class(tuple(d.name for d in desc))
    return cls


class _NumericLoader(Loader):
    """`numeric` (sums of bigint) as int when whole, float otherwise — as SQLite gives them."""

    def load(self, data: Any) -> Any:
        value = Decimal(bytes(data).decode())
        return int(value) if value == value.to_integral_value() else float(value)


def _configure(conn: Any) -> None:
    conn.adapters.register_loader("numeric", _NumericLoader)


def _connect_kwargs(
    schema: str, app: str, *, reader: bool = False, idle_tx_s: float = DEFAULT_IDLE_TX_S
) -> dict[str, Any]:
    # The server drops a session left inside a transaction (a node cut off mid-unit) after
    # idle_tx_s, so its locks do not stall the other nodes; and it probes idle connections.
    options = (
        f"-c search_path={schema}"
        f" -c idle_in_transaction_session_timeout={int(idle_tx_s * 1000)}"
        " -c tcp_keepalives_idle=2 -c tcp_keepalives_interval=1 -c tcp_keepalives_count=3"
    )
    if reader:
        options += " -c default_transaction_read_only=on"
    return {
        "autocommit": True,
        # Names the daemon and node: a sweep ends a dead node's sessions by it (nodes.py).
        "application_name": app,
        "row_factory": _row_factory,
        "connect_timeout": CONNECT_TIMEOUT_S,
        "options": options,
        # A node cut off from the database notices within seconds, not at TCP's timeout.
        "keepalives": 1,
        "keepalives_idle": 2,
        "keepalives_interval": 1,
        "keepalives_count": 3,
        "tcp_user_timeout": 6000,
    }


class PgConn:
    """A unit's connection: sqlite3.Connection's surface over psycopg."""

    dialect = "postgres"

    def __init__(self, raw: psycopg.Connection[Any]) -> None:
        self.raw = raw

    @property
    def in_transaction(self) -> bool:
        """Inside BEGIN … COMMIT (an aborted transaction included)."""
        return self.raw.info.transaction_status != TransactionStatus.IDLE

    def execute(self, sql: str, parameters: Any = (), /) -> Any:
        """Run one statement (SQLite text, translated); its cursor."""
        cur = self.raw.cursor()
        cur.execute(to_pg(sql), parameters)
        return cur

    def executemany(self, sql: str, parameters: Any, /) -> Any:
        """Run one statement for each parameter set (pipelined); rowcount is the total."""
        cur = self.raw.cursor()
        rows = list(parameters)
        if rows:
            cur.executemany(to_pg(sql), rows)
        return cur

    def copy_rows(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> int:
        """Bulk-insert rows with COPY (the names are the store's own, never the caller's)."""
        cols = ", ".join(columns)
        with self.raw.cursor() as cur, cur.copy(f"COPY {table} ({cols}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        return len(rows)


def _connect(dsn: str, schema: str, app: str, idle_tx_s: float) -> psycopg.Connection[Any]:
    raw: psycopg.Connection[Any] = psycopg.connect(
        dsn, **_connect_kwargs(schema, app, idle_tx_s=idle_tx_s)
    )
    _configure(raw)
    return raw


def migrate(raw: psycopg.Connection[Any], schema: str) -> None:
    """Create the schema and apply the migrations not yet applied, once, whoever else starts."""
    key = _MIGRATE_LOCK + schema
    raw.execute("SELECT pg_advisory_lock(hashtext(%s))", (key,))
    try:
        raw.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')  # name checked by split_dsn
        raw.execute(
            "CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL, at DOUBLE "
            "PRECISION NOT NULL DEFAULT extract(epoch from now()))"
        )
        row = raw.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()
        current = int(row[0]) if row is not None else 0
        latest = MIGRATIONS[-1][0]
        if current > latest:
            raise StorageError(
                f"the database has schema version {current}, newer than this hero-procd knows "
                f"({latest}): upgrade hero-procd",
                {"version": current, "supported": latest},
            )
        for version, script in [*MIGRATIONS, *PG_MIGRATIONS]:
            if version <= current:
                continue
            log.info("migrating database", extra={"to_version": version, "schema": schema})
            with raw.transaction():
                raw.execute(migration_to_pg(script))
                raw.execute("INSERT INTO schema_version (version) VALUES (%s)", (version,))
    finally:
        raw.execute("SELECT pg_advisory_unlock(hashtext(%s))", (key,))


# Statements PostgreSQL needs beyond SQLite's migrations (numbered after them: none yet).
PG_MIGRATIONS: list[tuple[int, str]] = []


class PgWriter(Writer):
    """The group-commit writer on one psycopg connection (reconnects when it broke)."""

    BEGIN = "BEGIN"
    # A lone unit runs in a savepoint too, so a deadlock with another node retries it alone.
    SAVEPOINT_ALONE = True

    def __init__(self, dsn: str, schema: str, app: str, idle_tx_s: float) -> None:
        super().__init__(Path(schema))
        self.dsn = dsn
        self.schema = schema
        self.app = app
        self.idle_tx_s = idle_tx_s

    def _open_sync(self) -> None:
        try:
            raw = _connect(self.dsn, self.schema, self.app, self.idle_tx_s)
        except psycopg.Error as exc:
            raise StorageError(
                "could not connect to PostgreSQL", {"detail": str(exc).strip()}
            ) from exc
        try:
            migrate(raw, self.schema)
        except BaseException:
            raw.close()
            raise
        self._conn = PgConn(raw)

    def _begin(self, conn: Any) -> Any:
        try:
            conn.execute(self.BEGIN)
        except psycopg.OperationalError:
            if not conn.raw.broken:
                raise
            # The server dropped the session while it was idle (a restart, a terminated
            # backend): nothing of the group was sent; run it on a new connection.
            conn.raw.close()
            self._conn = conn = PgConn(_connect(self.dsn, self.schema, self.app, self.idle_tx_s))
            conn.execute(self.BEGIN)
        return conn

    def _aborted(self, conn: Any) -> bool:
        return bool(conn.raw.info.transaction_status == TransactionStatus.INERROR)

    def _retryable(self, exc: BaseException) -> bool:
        return isinstance(exc, pg_errors.DeadlockDetected | pg_errors.SerializationFailure)

    def _run_group(self, group: list[Any]) -> list[tuple[bool, Any]]:
        conn: PgConn | None = self._conn
        if conn is None or conn.raw.closed or conn.raw.broken:
            try:
                if conn is not None:
                    conn.raw.close()
                self._conn = PgConn(_connect(self.dsn, self.schema, self.app, self.idle_tx_s))
            except psycopg.Error as exc:
                self._conn = conn
                err = StorageError("the database is unreachable", {"detail": str(exc).strip()})
                return [(False, err) for _ in group]
        return super()._run_group(group)

    def _close_sync(self) -> None:
        if self._conn is None:
            return
        self._conn.raw.close()
        self._conn = None


class _ReaderCursor:
    """`async with reader.execute(sql, params) as cur` over a psycopg async cursor."""

    def __init__(self, reader: PgReader, sql: str, params: Any) -> None:
        self.reader = reader
        self.sql = sql
        self.params = params
        self.cur: Any = None

    async def __aenter__(self) -> Any:
        self.cur = self.reader.raw.cursor()
        try:
            await self.cur.execute(to_pg(self.sql), self.params)
        except psycopg.OperationalError:
            if not self.reader.raw.broken or self.reader.dsn is None:
                raise
            # The server dropped the idle session (a restart, a terminated backend): one
            # read-only statement, run again on a new connection.
            await self.reader.reconnect()
            self.cur = self.reader.raw.cursor()
            await self.cur.execute(to_pg(self.sql), self.params)
        return self.cur

    async def __aexit__(self, *exc: object) -> None:
        await self.cur.close()

    def __await__(self) -> Any:
        """`await reader.execute(…)`: the cursor, left open (aiosqlite's shape)."""
        return self.__aenter__().__await__()


class PgReader:
    """A reader connection as the sub-APIs use one (aiosqlite's `execute` shape)."""

    def __init__(
        self,
        raw: psycopg.AsyncConnection[Any],
        dsn: str | None = None,
        schema: str = "",
        app: str = "hero-procd",
    ) -> None:
        self.raw = raw
        self.dsn = dsn
        self.schema = schema
        self.app = app

    def execute(self, sql: str, params: Any = ()) -> _ReaderCursor:
        """A statement whose cursor is open for the `async with` block."""
        return _ReaderCursor(self, sql, params)

    async def reconnect(self) -> None:
        """Replace a broken connection by a new one (StorageError if unreachable)."""
        assert self.dsn is not None
        with contextlib.suppress(psycopg.Error):
            await self.raw.close()
        try:
            raw = await psycopg.AsyncConnection.connect(
                self.dsn, **_connect_kwargs(self.schema, self.app, reader=True)
            )
        except psycopg.Error as exc:
            raise StorageError("the database is unreachable", {"detail": str(exc).strip()}) from exc
        _configure(raw)
        self.raw = raw


class PgPool:
    """The daemon's connections to one PostgreSQL schema: a writer and N readers."""

    backend = "postgresql"

    def __init__(
        self, dsn: str, schema: str, writer: PgWriter, readers: int, idle_tx_s: float
    ) -> None:
        self.dsn = dsn
        self.schema = schema
        self.app = writer.app
        self.idle_tx_s = idle_tx_s
        self._side: psycopg.AsyncConnection[Any] | None = None
        self._side_lock = asyncio.Lock()
        self.path = Path(schema)
        self.writer = writer
        self._size = max(1, readers)
        self._readers: asyncio.Queue[PgReader | None] = asyncio.Queue()
        for _ in range(self._size):
            self._readers.put_nowait(None)  # connected on first use
        self._open: list[PgReader] = []

    @classmethod
    async def open(
        cls,
        dsn: str,
        readers: int = 4,
        idle_tx_s: float = DEFAULT_IDLE_TX_S,
        node: str = "",
        started_at: float = 0.0,
    ) -> PgPool:
        """Connect, migrate (once across nodes), and start the writer. Every session is
        named for this daemon as `node`, started at `started_at` (session_name)."""
        plain, schema = split_dsn(dsn)
        app = session_name(schema, node, os.getpid(), started_at)
        writer = PgWriter(plain, schema, app, idle_tx_s)
        try:
            await writer.open()
        except BaseException:
            writer._thread.shutdown(wait=False)
            raise
        return cls(plain, schema, writer, readers, idle_tx_s)

    async def side_write(self, sql: str, params: Any = (), *, idempotent: bool = False) -> int:
        """One autocommit statement on a connection of its own, not queued behind the
        writer's units (a heartbeat must not wait for a lock another node holds); its
        row count.

        A session the server dropped while it was idle (a restart, a terminated backend)
        fails the next statement sent on it. An `idempotent` statement then runs once more
        on a new connection, as a read does: the failure cannot tell "dropped before the
        statement arrived" from "dropped after it committed", so only a statement whose
        second run changes nothing more and counts the same rows may be repeated."""
        async with self._side_lock:
            conn = self._side
            if conn is None or conn.closed or conn.broken:
                conn = await self._side_connect()
            try:
                try:
                    cur = await conn.execute(to_pg(sql), params)
                except psycopg.OperationalError:
                    if not idempotent or not conn.broken:
                        raise
                    conn = await self._side_connect()
                    cur = await conn.execute(to_pg(sql), params)
            except psycopg.Error as exc:
                raise translate(exc) from exc
            return int(cur.rowcount)

    async def _side_connect(self) -> psycopg.AsyncConnection[Any]:
        """Replace the side connection (closing a broken one) by a new one."""
        if self._side is not None:
            with contextlib.suppress(psycopg.Error):
                await self._side.close()
        self._side = None
        try:
            conn = await psycopg.AsyncConnection.connect(
                self.dsn, **_connect_kwargs(self.schema, self.app, idle_tx_s=self.idle_tx_s)
            )
        except psycopg.Error as exc:
            raise StorageError("the database is unreachable", {"detail": str(exc).strip()}) from exc
        _configure(conn)
        self._side = conn
        return conn

    async def close(self) -> None:
        """Close the readers; write what is queued and close the writer."""
        if self._side is not None:
            with contextlib.suppress(psycopg.Error):
                await self._side.close()
            self._side = None
        for reader in self._open:
            with contextlib.suppress(psycopg.Error):
                await reader.raw.close()
        self._open = []
        await self.writer.close()

    async def write(self, fn: Callable[[Any], T]) -> T:
        """Run `fn(conn)` as one unit of the next group transaction; its result, committed."""
        return await self.writer.run(fn)

    async def listen(self, on_message: Callable[[str], None]) -> None:
        """Deliver each NOTIFY of this schema's channel until cancelled, reconnecting when the
        database went away (and saying 'jobs' after each connect: some may have been missed)."""
        channel = psql.Identifier(f"hero_proc:{self.schema}")
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self.dsn, **_connect_kwargs(self.schema, self.app)
                )
                async with conn:
                    await conn.execute(psql.SQL("LISTEN {}").format(channel))
                    on_message("jobs")
                    async for note in conn.notifies():
                        on_message(note.payload)
            except psycopg.Error as exc:
                log.warning("listening for other nodes failed; retrying", extra={"error": str(exc)})
                await asyncio.sleep(1.0)

    async def maintenance(self, fn: Callable[[Any], T]) -> T:
        """Run `fn(conn)` on the writer outside any transaction."""
        return await self.writer.run(fn, in_transaction=False)

    async def _connect_reader(self) -> PgReader:
        try:
            raw = await psycopg.AsyncConnection.connect(
                self.dsn, **_connect_kwargs(self.schema, self.app, reader=True)
            )
        except psycopg.Error as exc:
            raise StorageError("the database is unreachable", {"detail": str(exc).strip()}) from exc
        _configure(raw)
        reader = PgReader(raw, self.dsn, self.schema, self.app)
        self._open.append(reader)
        return reader

    @contextlib.asynccontextmanager
    async def reader(self) -> AsyncIterator[PgReader]:
        """A reader connection, for as long as the block runs (reconnected if it broke)."""
        reader = await self._readers.get()
        try:
            if reader is None or reader.raw.closed or reader.raw.broken:
                if reader is not None:
                    self._open.remove(reader)
                    with contextlib.suppress(psycopg.Error):
                        await reader.raw.close()
                reader = None
                reader = await self._connect_reader()
            try:
                yield reader
            except psycopg.Error as exc:
                raise translate(exc) from exc
        finally:
            self._readers.put_nowait(reader)

    async def fetch_all(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[Any]:
        """All rows of one read."""
        async with self.reader() as conn, conn.execute(sql, params) as cur:
            rows: list[Any] = await cur.fetchall()
            return rows

    async def fetch_one(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> Any:
        """The first row of one read, or None."""
        async with self.reader() as conn, conn.execute(sql, params) as cur:
            return await cur.fetchone()
