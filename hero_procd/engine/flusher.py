"""Batched writes of log lines: every line is stored, or counted as dropped for its owner.

Log lines are many and small, so they are batched: a batch is written when
it is full or when the interval has passed since its first line, as one
unit of the writer (see store/pool.py). Status changes do not go through
here: they are committed by their own units before anyone acts on them.

Every owner (job, service) has one `OwnerLog` whose sequence counter is
shared by all its captures — attempts, restarts, the tail of a previous life
still draining — so sequence numbers are never reused. When the queue is
over its bound the oldest queued line is dropped and counted for its owner
(`log_owners.dropped`, shown by job.get / service.get) and in system.info.
On a database error the batch is kept and retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from hero_procd.app import Stats
from hero_procd.errors import Conflict
from hero_procd.store import Store
from hero_procd.store.api import LogStore
from hero_procd.store.logs import LogLine, LogRow, as_row

log = logging.getLogger(__name__)

OwnerKey = tuple[str, str]


@dataclass(eq=False)
class OwnerLog:
    """One owner's sequence counter and the bookkeeping of its queued lines."""

    kind: str
    owner_id: str
    seq: int
    refs: int = 0
    queued_upto: int = 0  # stream position of its last queued line
    dropped_pending: int = 0  # dropped, not yet added to log_owners.dropped
    retired: bool = False  # its owner was deleted: late lines of a draining capture are not kept

    def next_seq(self) -> int:
        """The next sequence number of this owner (never handed out twice)."""
        self.seq += 1
        return self.seq


class Flusher:
    """Buffers log lines and writes them in batches."""

    def __init__(
        self,
        store: Store,
        stats: Stats,
        *,
        batch_size: int = 2000,
        interval_s: float = 0.02,
        max_log_lines: int = 200_000,
        max_lines_per_owner: int = 0,
    ) -> None:
        self.store = store
        self.logs: LogStore = store.logs
        self.stats = stats
        self.batch_size = batch_size
        self.interval_s = interval_s
        self.max_log_lines = max_log_lines
        self.max_lines_per_owner = max_lines_per_owner
        # (stream position, line) in arrival order.
        self._queue: deque[tuple[int, LogLine]] = deque()
        self._inflight: list[tuple[int, LogLine]] = []
        self._pushed = 0  # positions handed out so far
        self._owners: dict[OwnerKey, OwnerLog] = {}
        self._dirty: set[OwnerKey] = set()
        self._retired: set[OwnerKey] = set()
        self._kick = asyncio.Event()
        self._full = asyncio.Event()
        self._progress = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        # Above the high water mark, producers stop reading their pipes (the
        # child then blocks on write, as with journald or docker's default)
        # until the backlog is under the low mark; the hard bound still drops.
        self.high_water = max(1, min(max_log_lines // 2, batch_size * 10))
        self.low_water = self.high_water // 2
        self._trimmed_to: dict[OwnerKey, int] = {}
        self._on_relief: list[Callable[[], None]] = []
        self.flushes = 0
        self.errors = 0
        # Told of each stored batch (rows, lines written): metrics and the dashboard's tails.
        self.on_stored: Callable[[Sequence[LogRow], int], None] | None = None

    def start(self) -> None:
        """Start the background flush loop."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="flusher")

    # -- owners ------------------------------------------------------------------------
    async def open_owner(self, kind: str, owner_id: str, known_seq: int | None = None) -> OwnerLog:
        """The owner's log, counter loaded from the database if it is not in memory; +1 ref.

        `known_seq`: the owner's stored high-water mark, when the caller read it already
        (a claim returns it), saving a read per launch.
        """
        key = (kind, owner_id)
        self._retired.discard(key)  # the name is in use again (a service defined anew)
        owner = self._owners.get(key)
        if owner is None:
            seq = known_seq if known_seq is not None else await self.logs.last_seq(kind, owner_id)
            owner = self._owners.get(key)  # someone may have loaded it meanwhile
            if owner is None:
                owner = OwnerLog(kind, owner_id, seq)
                self._owners[key] = owner
        owner.refs += 1
        return owner

    def release_owner(self, owner: OwnerLog) -> None:
        """A capture of this owner is done (the counter stays while lines are queued)."""
        owner.refs = max(0, owner.refs - 1)

    def forget_owner(self, kind: str, owner_id: str) -> None:
        """The owner's lines were deleted: drop its queued lines (not counted) and counter."""
        key = (kind, owner_id)
        self._queue = deque(item for item in self._queue if _key(item[1]) != key)
        owner = self._owners.pop(key, None)
        if owner is not None:
            owner.retired = True
        self._retired.add(key)
        self._dirty.discard(key)

    # -- producers ---------------------------------------------------------------------
    def write_log(self, owner: OwnerLog, stream: str, ts: float, text: str) -> None:
        """Queue one line of `owner`; beyond the bound the oldest queued line is dropped."""
        if owner.retired:
            return
        if len(self._queue) >= self.max_log_lines:
            self._drop_oldest()
        self._pushed += 1
        line = LogLine(owner.kind, owner.owner_id, owner.next_seq(), stream, ts, text)
        self._queue.append((self._pushed, line))
        owner.queued_upto = self._pushed
        if len(self._queue) >= self.batch_size:
            self._full.set()
        self._kick.set()

    def _drop_oldest(self) -> None:
        _, line = self._queue.popleft()
        key = _key(line)
        owner = self._owners.get(key)
        if owner is None:  # evicted meanwhile: recreate to carry the count
            owner = self._owners[key] = OwnerLog(key[0], key[1], line.seq)
        owner.dropped_pending += 1
        self._dirty.add(key)
        self.stats.dropped_log_lines += 1
        self._progress.set()

    def log_pressure(self) -> bool:
        """True when producers of log lines should pause until `when_relieved` calls back."""
        return len(self._queue) >= self.high_water

    def when_relieved(self, callback: Callable[[], None]) -> None:
        """Call `callback` once the log backlog is back under the low water mark."""
        self._on_relief.append(callback)

    def pending(self) -> int:
        """Lines waiting to be written."""
        return len(self._queue) + len(self._inflight)

    def _front(self) -> int:
        """Stream position of the oldest line neither written nor dropped."""
        if self._inflight:
            return self._inflight[0][0]
        if self._queue:
            return self._queue[0][0]
        return self._pushed + 1

    async def flush_owner(self, owner: OwnerLog) -> None:
        """Wait until every line queued so far for `owner` is written or counted (flush now).

        Counted means the count written too: a line dropped from the queue (pushed out by
        another owner's) leaves the queue at once, its count only with the next flush."""
        mark = owner.queued_upto
        while self._front() <= mark or (owner.dropped_pending > 0 and not owner.retired):
            self._full.set()
            self._kick.set()
            self._progress.clear()
            await self._progress.wait()

    async def wait_idle(self) -> None:
        """Wait until every line queued so far is written or counted."""
        mark = self._pushed
        while self._front() <= mark:
            self._full.set()
            self._kick.set()
            self._progress.clear()
            await self._progress.wait()

    # -- the loop ----------------------------------------------------------------------
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
                while self._queue or self._dirty:
                    await self._flush_once()
                delay = 0.05
            except asyncio.CancelledError:
                raise
            except Exception:
                self.errors += 1
                log.exception(
                    "log flush failed; keeping the batch and retrying", extra={"retry_in_s": delay}
                )
                self._kick.set()
                self._full.set()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            self._evict()

    async def _flush_once(self) -> None:
        n = min(len(self._queue), self.batch_size * 5)
        self._inflight = [self._queue.popleft() for _ in range(n)]
        rows = [as_row(line) for _, line in self._inflight]
        counters = self._counters(rows)
        trims = self._trims(rows)
        try:
            try:
                done = await self.logs.write_batch(rows, counters, trims)
            except Conflict:
                # A line the table refuses (a sequence collision would be a bug): store the
                # others one by one and count the refused ones as dropped.
                log.error("log batch refused by a constraint; writing line by line")
                done = await self.logs.write_batch(rows, counters, trims, one_by_one=True)
        except BaseException:
            # Not written: back to the front of the queue, in order (the bound may drop them,
            # counted).
            # Lines of an owner deleted meanwhile are not put back.
            back = [item for item in self._inflight if _key(item[1]) not in self._retired]
            self._queue.extendleft(reversed(back))
            self._inflight = []
            while len(self._queue) > self.max_log_lines:
                self._drop_oldest()
            raise
        self._inflight = []
        for kind, owner_id, upto in trims:
            self._trimmed_to[(kind, owner_id)] = upto
        for kind, owner_id, _, dropped in counters:
            owner = self._owners.get((kind, owner_id))
            if owner is not None and dropped:
                owner.dropped_pending -= dropped
                if owner.dropped_pending == 0:
                    self._dirty.discard((kind, owner_id))
        self.stats.dropped_log_lines += sum(done.refused.values())
        self.stats.log_lines_trimmed += done.trimmed
        self.flushes += 1
        if self.on_stored is not None:
            self.on_stored(rows, done.written)
        self._progress.set()
        if self._on_relief and len(self._queue) <= self.low_water:
            callbacks, self._on_relief = self._on_relief, []
            for callback in callbacks:
                callback()

    def _counters(self, rows: list[LogRow]) -> list[tuple[str, str, int, int]]:
        last: dict[OwnerKey, int] = {}
        for kind, owner_id, seq, *_ in rows:
            key = (kind, owner_id)
            if seq > last.get(key, 0):
                last[key] = seq
        for key in list(self._dirty):
            if key in self._owners:
                last.setdefault(key, 0)
            else:
                self._dirty.discard(key)
        out = []
        for key, seq in last.items():
            owner = self._owners.get(key)
            dropped = owner.dropped_pending if owner is not None else 0
            out.append((key[0], key[1], seq, dropped))
        return out

    def _trims(self, rows: list[LogRow]) -> list[tuple[str, str, int]]:
        """Keep each owner's stored lines near its cap as they are written (every cap/10 lines):
        (kind, owner, delete up to seq) for the owners due."""
        cap = self.max_lines_per_owner
        if cap <= 0:
            return []
        last: dict[OwnerKey, int] = {}
        for kind, owner, seq, *_ in rows:
            key = (kind, owner)
            if seq > last.get(key, 0):
                last[key] = seq
        step = max(1, cap // 10)
        if len(self._trimmed_to) > 10_000:
            self._trimmed_to.clear()
        return [
            (key[0], key[1], seq - cap)
            for key, seq in last.items()
            if seq - cap >= self._trimmed_to.get(key, 0) + step
        ]

    def _evict(self) -> None:
        """Forget counters of owners with no capture and nothing queued (reloaded on demand)."""
        if len(self._owners) < 1000:
            return
        front = self._front()
        for key, owner in list(self._owners.items()):
            if owner.refs == 0 and owner.queued_upto < front and not owner.dropped_pending:
                del self._owners[key]

    async def drain(self) -> None:
        """Write everything queued, then stop the loop (graceful shutdown)."""
        self._closing = True
        if self.pending() or self._dirty:
            try:
                await asyncio.wait_for(self.wait_idle(), 30.0)
            except TimeoutError:
                log.error("flusher could not drain", extra={"pending": self.pending()})
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def _key(line: LogLine) -> OwnerKey:
    return (line.owner_kind, line.owner_id)
