"""Batched writes of status transitions and log lines.

A batch is flushed when it is full or when the interval has passed since its
first item, whichever comes first; an idle flusher does not wake up. One
flush is one transaction: log lines first, then status writes, then the
`in_transaction` hook (dependency and run bookkeeping), so whoever sees a
job finished also sees all its lines. On a database error the batch is kept
and retried; status writes are never dropped (a full queue makes writers
wait), log lines beyond the bound are dropped oldest first and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import sqlite3
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiosqlite

from hero_procd.app import Stats
from hero_procd.errors import Conflict
from hero_procd.store import Store
from hero_procd.store.logs import LogLine, LogRow, as_row
from hero_procd.store.queries import Q

log = logging.getLogger(__name__)


@dataclass
class StatusWrite:
    """One status transition: a named statement and its parameters, plus what hooks need."""

    query: str
    params: tuple[Any, ...]
    job_id: int | None = None
    run_id: int | None = None
    status: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # Where the job's last queued log line was when this write was queued: it is
    # committed only with or after that line, so a finished job's lines are all there.
    log_mark: int = 0


InTxHook = Callable[[aiosqlite.Connection, list[StatusWrite]], Awaitable[Any]]
AfterHook = Callable[[list[StatusWrite], Any], None]


class Flusher:
    """Buffers log lines and status writes and writes them in batches."""

    def __init__(
        self,
        store: Store,
        stats: Stats,
        *,
        batch_size: int = 2000,
        interval_s: float = 0.02,
        max_status: int = 20_000,
        max_log_lines: int = 200_000,
        max_lines_per_owner: int = 0,
        in_transaction: InTxHook | None = None,
        after_commit: AfterHook | None = None,
    ) -> None:
        self.store = store
        self.stats = stats
        self.batch_size = batch_size
        self.interval_s = interval_s
        self.max_status = max_status
        self.max_log_lines = max_log_lines
        self.in_transaction = in_transaction
        self.after_commit = after_commit
        self._status: deque[StatusWrite] = deque()
        self._logs: deque[LogLine] = deque()
        self._kick = asyncio.Event()
        self._full = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        # Above the high water mark, producers stop reading their pipes (the
        # child then blocks on write, as with journald or docker's default)
        # until the backlog is under the low mark; the hard bound still drops.
        # The high mark is kept low (10 batches) so that a chatty producer delays
        # the statuses of others, which wait for their own lines, by little.
        self.high_water = max(1, min(max_log_lines // 2, batch_size * 10))
        self.low_water = self.high_water // 2
        self.max_lines_per_owner = max_lines_per_owner
        # Per owner: where its last queued line ends, and up to which seq it was trimmed.
        self._owner_end: dict[tuple[str, str], int] = {}
        self._trimmed_to: dict[tuple[str, str], int] = {}
        self._on_relief: list[Callable[[], None]] = []
        self._isolate = False
        # Absolute positions in the stream of log lines: the queue's front, and its end.
        self._log_front = 0
        self._log_total = 0
        self.flushes = 0
        self.errors = 0

    def start(self) -> None:
        """Start the background flush loop."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="flusher")

    async def write_status(self, write: StatusWrite) -> None:
        """Queue a status write; waits (backpressure) while the queue is at its bound."""
        while len(self._status) >= self.max_status:
            self._space.clear()
            self._full.set()
            self._kick.set()
            await self._space.wait()
        if write.job_id is not None:
            write.log_mark = self._owner_end.get(("job", str(write.job_id)), 0)
        self._status.append(write)
        self._idle.clear()
        if len(self._status) >= self.batch_size:
            self._full.set()
        self._kick.set()

    def write_log(self, line: LogLine) -> None:
        """Queue a log line; beyond the bound the oldest queued line is dropped and counted."""
        if len(self._logs) >= self.max_log_lines:
            self._logs.popleft()
            self._log_front += 1
            self.stats.dropped_log_lines += 1
        self._logs.append(line)
        self._log_total += 1
        self._owner_end[(line.owner_kind, line.owner_id)] = self._log_total
        self._idle.clear()
        if len(self._logs) >= self.batch_size:
            self._full.set()
        self._kick.set()

    def log_pressure(self) -> bool:
        """True when producers of log lines should pause until `when_relieved` calls back."""
        return len(self._logs) >= self.high_water

    def when_relieved(self, callback: Callable[[], None]) -> None:
        """Call `callback` once the log backlog is back under the low water mark."""
        self._on_relief.append(callback)

    def pending(self) -> int:
        """Items waiting to be written."""
        return len(self._status) + len(self._logs)

    async def wait_idle(self) -> None:
        """Wait until everything queued so far has been written (someone waits: flush now)."""
        if not self._idle.is_set():
            self._full.set()
            self._kick.set()
        await self._idle.wait()

    async def _run(self) -> None:
        delay = 0.05
        while True:
            await self._kick.wait()
            if not self._full.is_set() and not self._closing:
                # Coalesce: give the batch until the interval to fill up.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), self.interval_s)
            self._kick.clear()
            self._full.clear()
            try:
                while self.pending():
                    await self._flush_once()
                delay = 0.05
                self._idle.set()
            except asyncio.CancelledError:
                raise
            except Conflict:
                # A write that violates a constraint would fail forever and hold up
                # everything behind it: the next try isolates each status write.
                self.errors += 1
                self._isolate = True
                log.error("flush hit a constraint; retrying write by write")
                self._kick.set()
            except Exception:
                self.errors += 1
                log.exception(
                    "flush failed; keeping the batch and retrying", extra={"retry_in_s": delay}
                )
                self._kick.set()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _flush_once(self) -> None:
        n_logs = min(len(self._logs), self.batch_size * 5)
        front = self._log_front
        upto = front + n_logs
        # Statuses whose lines are in this batch (or written) go; others wait, in order.
        statuses = [w for w in self._status if w.log_mark <= upto]
        taken = {id(w) for w in statuses}
        rows = [as_row(ln) for ln in itertools.islice(self._logs, n_logs)]
        hook_result: Any = None
        trimmed = 0
        async with self.store.pool.transaction() as conn:
            if rows:
                await self.store.logs.append(conn, rows)
                trimmed = await self._trim(conn, rows)
            if self._isolate:
                statuses = await self._write_isolated(conn, statuses)
            # Consecutive writes of the same statement go in one executemany, in order.
            i = 0
            while i < len(statuses) and not self._isolate:
                j = i
                while j < len(statuses) and statuses[j].query == statuses[i].query:
                    j += 1
                await conn.executemany(Q[statuses[i].query], [w.params for w in statuses[i:j]])
                i = j
            if self.in_transaction is not None and statuses:
                hook_result = await self.in_transaction(conn, statuses)
        # Committed: only now take the items off the queues.
        if taken:
            self._status = deque(w for w in self._status if id(w) not in taken)
        self._isolate = False
        self.stats.log_lines_trimmed += trimmed
        # Lines of this batch dropped while it was being written were written after
        # all: they are off the queue already and must not count as dropped.
        dropped_meanwhile = min(self._log_front - front, n_logs)
        self.stats.dropped_log_lines -= dropped_meanwhile
        for _ in range(n_logs - dropped_meanwhile):
            self._logs.popleft()
        self._log_front = max(self._log_front, upto)
        if len(self._owner_end) > 50_000:
            self._owner_end = {k: v for k, v in self._owner_end.items() if v > self._log_front}
        if self._on_relief and len(self._logs) <= self.low_water:
            callbacks, self._on_relief = self._on_relief, []
            for callback in callbacks:
                callback()
        self.flushes += 1
        self._space.set()
        if self.after_commit is not None and statuses:
            self.after_commit(statuses, hook_result)

    async def _trim(self, conn: aiosqlite.Connection, rows: list[LogRow]) -> int:
        """Keep each owner's stored lines near its cap as they are written (every cap/10 lines)."""
        cap = self.max_lines_per_owner
        if cap <= 0:
            return 0
        last: dict[tuple[str, str], int] = {}
        for kind, owner, seq, *_ in rows:
            key = (kind, owner)
            if seq > last.get(key, 0):
                last[key] = seq
        step = max(1, cap // 10)
        if len(self._trimmed_to) > 10_000:
            self._trimmed_to.clear()
        trimmed = 0
        for key, seq in last.items():
            upto = seq - cap
            if upto >= self._trimmed_to.get(key, 0) + step:
                trimmed += await self.store.logs.trim(conn, key[0], key[1], upto)
                self._trimmed_to[key] = upto
        return trimmed

    async def _write_isolated(
        self, conn: aiosqlite.Connection, statuses: list[StatusWrite]
    ) -> list[StatusWrite]:
        """Each write under its own savepoint; one a constraint refuses is logged and left out."""
        written: list[StatusWrite] = []
        for write in statuses:
            await conn.execute("SAVEPOINT one_write")
            try:
                await conn.execute(Q[write.query], write.params)
            except sqlite3.IntegrityError as exc:
                await conn.execute("ROLLBACK TO one_write")
                log.error(
                    "status write refused by a constraint; dropped",
                    extra={"query": write.query, "job_id": write.job_id, "detail": str(exc)},
                )
            else:
                written.append(write)
            await conn.execute("RELEASE one_write")
        return written

    async def drain(self) -> None:
        """Write everything queued, then stop the loop (graceful shutdown)."""
        self._closing = True
        if self.pending():
            self._kick.set()
            self._full.set()
            try:
                await asyncio.wait_for(self._idle.wait(), 30.0)
            except TimeoutError:
                log.error("flusher could not drain", extra={"pending": self.pending()})
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
