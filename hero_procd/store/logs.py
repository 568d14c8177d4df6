"""LogsApi: lines of output of jobs and services, and each owner's counters.

Every owner (a job, a service) has one sequence counter that is never reused:
not across attempts, restarts, nor a service deleted and defined again
(`log_owners.last_seq` outlives the lines). Lines that could not be stored
are counted per owner (`log_owners.dropped`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from hero_procd.store import pool as pool_mod
from hero_procd.store.pool import Conn, DbPool, chunks, is_postgres
from hero_procd.store.queries import Q, with_marks


@dataclass(frozen=True)
class LogLine:
    """One line of a job's or service's stdout/stderr."""

    owner_kind: str
    owner_id: str
    seq: int
    stream: str
    ts: float
    text: str


LogRow = tuple[str, str, int, str, float, str]


def as_row(line: LogLine) -> LogRow:
    """A line as the parameters of `log_insert`."""
    return (line.owner_kind, line.owner_id, line.seq, line.stream, line.ts, line.text)


def to_wire(lines: Sequence[LogLine]) -> list[dict[str, object]]:
    """Lines as `job.logs` and `service.logs` answer them."""
    return [{"seq": ln.seq, "stream": ln.stream, "ts": ln.ts, "text": ln.text} for ln in lines]


_LOG_COLUMNS = ("owner_kind", "owner_id", "seq", "stream", "ts", "text")


def append(conn: Conn, rows: Sequence[LogRow]) -> int:
    """Append rows (see `as_row`) inside a unit, in one batch: one executemany, or on
    PostgreSQL one COPY for a flush of many lines; the rows written."""
    if is_postgres(conn) and len(rows) >= 64:
        return int(getattr(conn, "copy_rows")("log_lines", _LOG_COLUMNS, rows))  # noqa: B009
    return conn.executemany(Q["log_insert"], rows).rowcount


def bump_owners(conn: Conn, counters: Sequence[tuple[str, str, int, int]]) -> None:
    """Advance owners' (kind, id, last seq, newly dropped) counters inside a unit."""
    if counters:
        conn.executemany(Q["log_owner_bump"], counters)


def trim(conn: Conn, owner_kind: str, owner_id: str, upto: int) -> int:
    """Delete an owner's lines with seq <= `upto` (its oldest); the rows deleted."""
    return conn.execute(Q["retention_trim_logs"], (owner_kind, owner_id, upto)).rowcount


def delete_owners(conn: Conn, owner_kind: str, owner_ids: Sequence[str]) -> int:
    """Delete every line and the counters of owners gone for good; the lines deleted."""
    deleted = 0
    for chunk in chunks(owner_ids, 998):  # one parameter is the owner kind
        deleted += conn.execute(
            with_marks("log_delete_owners", len(chunk)), (owner_kind, *chunk)
        ).rowcount
        conn.execute(with_marks("log_owner_delete_many", len(chunk)), (owner_kind, *chunk))
    return deleted


def delete_owner_lines(conn: Conn, owner_kind: str, owner_id: str) -> int:
    """Delete an owner's lines but keep its sequence (a name that may come back)."""
    deleted = conn.execute(with_marks("log_delete_owners", 1), (owner_kind, owner_id)).rowcount
    conn.execute(Q["log_owner_reset_dropped"], (owner_kind, owner_id))
    return deleted


@dataclass(frozen=True)
class BatchWritten:
    """What one flush stored: lines written, refused by a constraint (per owner), trimmed."""

    written: int
    refused: dict[tuple[str, str], int]
    trimmed: int


def write_batch(
    conn: Conn,
    rows: Sequence[LogRow],
    counters: Sequence[tuple[str, str, int, int]],
    trims: Sequence[tuple[str, str, int]],
    one_by_one: bool,
) -> BatchWritten:
    """One flush inside a unit: the lines, the owners' counters, the per-owner trims.

    `one_by_one` stores each line under its own savepoint, so a line the table
    refuses is counted as dropped for its owner instead of failing the batch.
    """
    refused: dict[tuple[str, str], int] = {}
    if not one_by_one:
        written = append(conn, rows)
    else:
        written = 0
        for row in rows:
            conn.execute("SAVEPOINT line")
            try:
                append(conn, [row])
            except pool_mod.INTEGRITY_ERRORS:
                conn.execute("ROLLBACK TO line")
                key = (row[0], row[1])
                refused[key] = refused.get(key, 0) + 1
            else:
                written += 1
            conn.execute("RELEASE line")
    bump_owners(conn, [(k, o, s, d + refused.get((k, o), 0)) for k, o, s, d in counters])
    trimmed = sum(trim(conn, kind, owner, upto) for kind, owner, upto in trims)
    return BatchWritten(written, refused, trimmed)


class LogsApi:
    """Reads and writes of `log_lines` and `log_owners`."""

    def __init__(self, pool: DbPool) -> None:
        self.pool = pool

    async def insert_many(self, lines: Sequence[LogLine]) -> int:
        """Append lines in their own unit; the rows written."""
        if not lines:
            return 0
        rows = [as_row(ln) for ln in lines]
        return await self.pool.write(lambda c: append(c, rows))

    async def write_batch(
        self,
        rows: Sequence[LogRow],
        counters: Sequence[tuple[str, str, int, int]],
        trims: Sequence[tuple[str, str, int]],
        one_by_one: bool = False,
    ) -> BatchWritten:
        """Store one flush of lines (see `write_batch`) as one unit."""
        return await self.pool.write(lambda c: write_batch(c, rows, counters, trims, one_by_one))

    async def owners_over(self, cap: int) -> list[tuple[str, str, int, int]]:
        """(kind, owner id, stored lines, last seq) of every owner holding more than `cap` lines."""
        rows = await self.pool.fetch_all(Q["retention_log_owners_over"], (cap,))
        return [(r["owner_kind"], r["owner_id"], int(r["n"]), int(r["last"])) for r in rows]

    async def trim(self, owner_kind: str, owner_id: str, upto: int) -> int:
        """Delete an owner's oldest lines (seq <= upto) in one unit; the rows deleted."""
        return await self.pool.write(lambda c: trim(c, owner_kind, owner_id, upto))

    async def read(
        self, owner_kind: str, owner_id: str, after_seq: int = 0, limit: int = 1000
    ) -> list[LogLine]:
        """A page of an owner's lines after `after_seq`, in order."""
        lines, _ = await self.page(owner_kind, owner_id, after_seq, limit)
        return lines

    async def page(
        self,
        owner_kind: str,
        owner_id: str,
        after_seq: int = 0,
        limit: int = 1000,
        *,
        since: float | None = None,
        tail: int | None = None,
    ) -> tuple[list[LogLine], int]:
        """A page of an owner's lines after `after_seq`, in order, and the next `after_seq`.

        `since` keeps the lines stamped at or after that Unix time. `tail` starts the
        page at the owner's last `tail` such lines (0: after its last line), so a
        reader of the end never fetches what comes before. The next `after_seq` is the
        page's last seq, or where it started (`after_seq`, or later with `tail`) when it
        is empty; with `since` and a page that is not full, it is past the lines `since`
        skipped too, so a follower that leaves `since` out of its next call never gets
        them (a first page with no line since then used to answer 0).
        """
        params: dict[str, object] = {"kind": owner_kind, "owner": owner_id, "since": since}
        start = after_seq
        stored_upto = 0
        async with self.pool.reader() as conn:  # one connection: the start and the page agree
            if tail is not None:
                query = {**params, "after_seq": after_seq, "tail": tail}
                async with conn.execute(Q["log_tail_start"], query) as cur:
                    row = await cur.fetchone()
                if row is not None:
                    start = max(after_seq, int(row[0]))
            if since is not None:
                # Read before the page: every line stored by then is seen by the page read,
                # so a page that is not full holds all of them that `since` keeps.
                async with conn.execute(Q["log_last_seq"], (owner_kind, owner_id)) as cur:
                    row = await cur.fetchone()
                stored_upto = int(row[0]) if row is not None and row[0] is not None else 0
            query = {**params, "after_seq": start, "limit": limit}
            async with conn.execute(Q["log_read"], query) as cur:
                rows = await cur.fetchall()
        lines = [
            LogLine(owner_kind, owner_id, r["seq"], r["stream"], r["ts"], r["text"]) for r in rows
        ]
        next_seq = lines[-1].seq if lines else start
        if since is not None and len(lines) < limit:
            next_seq = max(next_seq, stored_upto)
        return lines, next_seq

    async def last_seq(self, owner_kind: str, owner_id: str) -> int:
        """The owner's sequence high-water mark: the counter, or its stored lines (0 if none)."""
        row = await self.pool.fetch_one(Q["log_owner_get"], (owner_kind, owner_id))
        counted = int(row[0]) if row is not None else 0
        row = await self.pool.fetch_one(Q["log_last_seq"], (owner_kind, owner_id))
        stored = int(row[0]) if row is not None and row[0] is not None else 0
        return max(counted, stored)

    async def dropped(self, owner_kind: str, owner_id: str) -> int:
        """Lines of an owner that could not be stored."""
        row = await self.pool.fetch_one(Q["log_owner_get"], (owner_kind, owner_id))
        return int(row[1]) if row is not None else 0

    async def dropped_total(self) -> int:
        """Lines dropped over all owners."""
        row = await self.pool.fetch_one(Q["dropped_total"])
        return int(row[0]) if row is not None else 0
