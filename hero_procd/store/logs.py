"""LogsApi: lines of output of jobs and services."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import aiosqlite

from hero_procd.store.pool import Pool, chunks
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


class LogsApi:
    """Reads and writes of the `log_lines` table."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    async def insert_many(self, lines: Sequence[LogLine]) -> int:
        """Append lines in their own transaction; the rows written."""
        if not lines:
            return 0
        async with self.pool.transaction() as conn:
            return await self.append(conn, [as_row(ln) for ln in lines])

    async def append(self, conn: aiosqlite.Connection, rows: Sequence[LogRow]) -> int:
        """Append rows (see `as_row`) with one executemany on a transaction in progress."""
        cur = await conn.executemany(Q["log_insert"], rows)
        return cur.rowcount

    async def trim(
        self, conn: aiosqlite.Connection, owner_kind: str, owner_id: str, upto: int
    ) -> int:
        """Delete an owner's lines with seq <= `upto` (its oldest); the rows deleted."""
        cur = await conn.execute(Q["retention_trim_logs"], (owner_kind, owner_id, upto))
        deleted = cur.rowcount
        await cur.close()
        return deleted

    async def owners_over(self, cap: int) -> list[tuple[str, str, int, int]]:
        """(kind, owner id, stored lines, last seq) of every owner holding more than `cap` lines."""
        rows = await self.pool.fetch_all(Q["retention_log_owners_over"], (cap,))
        return [(r["owner_kind"], r["owner_id"], int(r["n"]), int(r["last"])) for r in rows]

    async def read(
        self, owner_kind: str, owner_id: str, after_seq: int = 0, limit: int = 1000
    ) -> list[LogLine]:
        """A page of an owner's lines after `after_seq`, in order."""
        rows = await self.pool.fetch_all(Q["log_read"], (owner_kind, owner_id, after_seq, limit))
        return [
            LogLine(owner_kind, owner_id, r["seq"], r["stream"], r["ts"], r["text"]) for r in rows
        ]

    async def last_seq(self, owner_kind: str, owner_id: str) -> int:
        """The last sequence number written for an owner (0 if none)."""
        row = await self.pool.fetch_one(Q["log_last_seq"], (owner_kind, owner_id))
        return int(row[0]) if row is not None and row[0] is not None else 0

    async def delete_owners(
        self, conn: aiosqlite.Connection, owner_kind: str, owner_ids: Sequence[str]
    ) -> int:
        """Delete every line of these owners, one statement per chunk; the rows deleted."""
        deleted = 0
        for chunk in chunks(owner_ids, 998):  # one parameter is the owner kind
            cur = await conn.execute(
                with_marks("log_delete_owners", len(chunk)), (owner_kind, *chunk)
            )
            deleted += cur.rowcount
            await cur.close()
        return deleted
