"""This daemon as a node: heartbeat, lease, dead-node recovery and wake-ups from the others.

- Heartbeat: the node's row is renewed every `heartbeat_s` (~2 s).
- Lease: a node that has not renewed its heartbeat for half the node timeout
  stops claiming and terminates its running attempts (they end `interrupted`:
  queued again without counting an attempt, once the database takes the write)
  before any other node may declare it dead — so a cut-off node never runs an
  attempt that another node runs too. It resumes by itself when a heartbeat
  succeeds again quickly enough to leave the next one time to renew the lease.
- Sweep: a live node declares the nodes whose heartbeat is older than the node
  timeout dead and settles their running attempts by their retry policy (one
  sweeper at a time: an advisory lock on PostgreSQL). On PostgreSQL it first ends
  the dead daemon's sessions (named by application_name): one cut off in the middle
  of a statement stream holds its row locks on the server for as long as the
  half-open connection lasts, and no idle timeout ends an active session. Every
  live node also ends those sessions once a heartbeat on a reader, apart from its
  writer: a unit of its own may be waiting for those locks, with the sweep behind it.
- Wake-ups (PostgreSQL): NOTIFY from the other nodes' units wakes the
  dispatcher (jobs queued), the waiters (jobs ended) and the cancels (a job of
  ours asked to stop through another node); a once-a-second look covers a
  missed one. On SQLite the node is the only one: the same heartbeat, no lease, sweep
  or wake-ups.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

from hero_procd.errors import HeroError
from hero_procd.paths import StartupError

if TYPE_CHECKING:
    from hero_procd.app import App
    from hero_procd.store import Store

log = logging.getLogger(__name__)

# At rest, how often a PostgreSQL node looks for work and cancels it was not told about.
_POLL_S = 1.0


async def refuse_if_live(
    store: Store, name: str, timeout_s: float, heartbeat_s: float
) -> tuple[int | None, float] | None:
    """On a shared database, before this daemon writes anything as node `name`: raise
    StartupError if another daemon is live under that name. Returns the row as seen
    last ((pid, started_at); None: no row), which `NodesApi.claim` takes only if no
    other daemon changed it meanwhile (two daemons started at once both pass this).

    A row marked alive whose heartbeat is younger than the node timeout is either a
    daemon that runs (its heartbeat moves) or one that died without a stop (kill -9,
    a crash: it does not). Watch it for a little over two heartbeats: if it moves,
    two daemons would claim, recover and kill each other's attempts as one node —
    refuse; if it stands still, the name is this daemon's to take over (its recovery
    then settles what the dead one left).
    """

    async def row() -> tuple[str, float, int | None, float] | None:
        for info in await store.nodes.list(timeout_s):
            if info.name == name:
                return info.state, info.heartbeat_age_s, info.pid, info.started_at
        return None

    def seen(now: tuple[str, float, int | None, float] | None) -> tuple[int | None, float] | None:
        return None if now is None else (now[2], now[3])

    first = await row()
    if store.backend == "sqlite":
        return seen(first)  # one database file, one daemon: the file lock already said so
    if first is None or first[0] != "alive" or first[1] > timeout_s:
        return seen(first)
    deadline = time.monotonic() + 2 * heartbeat_s + 1.0
    while time.monotonic() < deadline:
        await asyncio.sleep(min(0.5, heartbeat_s / 2))
        now = await row()
        if now is None or now[0] != "alive":
            return seen(now)
        # The age grows with the database's clock unless the heartbeat was renewed.
        if now[1] < first[1] or now[2:] != first[2:]:
            raise StartupError(
                f"another daemon is live as node {name!r} (pid {now[2]} on its host, "
                f"heartbeat {now[1]:.1f} s ago): start this one with another --node"
            )
        first = now
    return seen(first)


class Node:
    """The tasks that keep this daemon a live member of the nodes sharing its database."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.store = app.store
        self.name = app.config.node
        self.timeout_s = app.config.node_timeout_s
        self.heartbeat_s = min(app.config.heartbeat_s, self.timeout_s / 4)
        self.shared = app.store.backend != "sqlite"
        self.last_ok = time.monotonic()
        self.lease_lost = False
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Heartbeat (the name was claimed at start-up), watch the lease, sweep and listen."""
        if not await self.store.nodes.revive():
            self._taken()
            return
        self.last_ok = time.monotonic()
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._heartbeat_loop(), name="node-heartbeat"))
        if self.shared:
            # The lease guards against another node taking our attempts over: SQLite has
            # none, and a slow disk must not stop its jobs.
            self._tasks.append(loop.create_task(self._lease_loop(), name="node-lease"))
            self._tasks.append(loop.create_task(self._sweep_loop(), name="node-sweep"))
            self._tasks.append(loop.create_task(self._end_stale_loop(), name="node-end-stale"))
            self._tasks.append(loop.create_task(self._poll_loop(), name="node-poll"))
            self._tasks.append(
                loop.create_task(self.store.listen(self._on_message), name="node-listen")
            )

    async def stop(self) -> None:
        """Stop the tasks; mark the node stopped (its jobs are settled by now)."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        with contextlib.suppress(HeroError, TimeoutError):
            await asyncio.wait_for(self.store.nodes.stopped(), 5.0)

    def _taken(self) -> None:
        """Another daemon holds this node's name now (it took a row that stood still, or
        started at the same moment): claim nothing more, end this daemon's jobs, and stop
        it with an error; two daemons as one node would settle each other's attempts."""
        why = (
            f"another daemon has taken node {self.name!r} (its row is no longer this "
            "daemon's): stopping; start this one with another --node"
        )
        log.error(why)
        if self.app.containment is not None:
            self.app.containment.handed_over = True  # the cgroup subtree is the other's now
        if not self.lease_lost:
            self.lease_lost = True
            self.app.jobs.lease_lost(grace_s=self.timeout_s / 4)
        self.app.exit_with(why)

    def lease_left_s(self) -> float:
        """Seconds until this node must stop its jobs if no heartbeat succeeds."""
        return self.timeout_s / 2 - (time.monotonic() - self.last_ok)

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            began = time.monotonic()
            try:
                ok = await asyncio.wait_for(self.store.nodes.heartbeat(), self.timeout_s / 2)
                if not ok:
                    # Declared dead while cut off (its jobs were terminated by the lease
                    # by then, and settled by the sweeper): join again, unless another
                    # daemon has taken the name meanwhile.
                    log.warning("this node was declared dead; registering again")
                    if not await self.store.nodes.revive():
                        self._taken()
                        return
            except (HeroError, TimeoutError) as exc:
                log.warning("heartbeat failed", extra={"error": str(exc)})
                continue
            # The lease runs from when the heartbeat was sent: its row says no later.
            self.last_ok = began
            # Resume only with lease enough left for the next heartbeat to renew it: a slow
            # one (the first after a cut, behind reconnects) would have the lease run out
            # again at once, and the jobs just claimed terminated with it.
            if self.lease_lost and self.lease_left_s() > self.heartbeat_s:
                self.lease_lost = False
                log.warning("database reachable again: this node claims jobs again")
                self.app.jobs.resume()

    async def _lease_loop(self) -> None:
        while True:
            await asyncio.sleep(min(0.25, self.heartbeat_s / 4))
            if not self.lease_lost and self.lease_left_s() <= 0:
                self.lease_lost = True
                log.error(
                    "heartbeat not renewed within half the node timeout: stopping this "
                    "node's jobs before other nodes take them over",
                    extra={"node_timeout_s": self.timeout_s},
                )
                self.app.jobs.lease_lost(grace_s=self.timeout_s / 4)

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            if self.lease_lost:
                continue
            try:
                dead = await self.store.nodes.sweep(self.timeout_s)
            except HeroError as exc:
                log.warning("dead-node sweep failed", extra={"error": str(exc)})
                continue
            if dead.nodes:
                log.warning(
                    "nodes declared dead; their attempts settled",
                    extra={
                        "nodes": dead.nodes,
                        "jobs": dead.jobs,
                        "lost": dead.lost,
                        "sessions_ended": dead.sessions,
                    },
                )
                self.app.jobs.notify(dead.settled.done)
                self.app.jobs.wake()

    async def _end_stale_loop(self) -> None:
        # Apart from the sweep, which is a unit of this node's writer: a unit queued before
        # it may wait for a lock a stale node's session holds (cut off mid-statement, it
        # never lets go), and only ending that session lets the writer, and the sweep, on.
        while True:
            await asyncio.sleep(self.heartbeat_s)
            if self.lease_lost:
                continue
            try:
                ended = await self.store.nodes.end_stale_sessions(self.timeout_s)
            except HeroError as exc:
                log.warning("ending stale nodes' sessions failed", extra={"error": str(exc)})
                continue
            if ended:
                log.warning("ended the database sessions of nodes about to be declared dead",
                            extra={"sessions_ended": ended})  # fmt: skip

    async def _poll_loop(self) -> None:
        while True:
            await asyncio.sleep(_POLL_S)
            if self.lease_lost:
                continue
            self.app.jobs.wake()
            try:
                asked = await self.store.jobs.cancel_requested_mine()
            except HeroError:
                continue
            self.app.jobs.cancel_asked(asked)

    def _on_message(self, payload: str) -> None:
        kind, _, rest = payload.partition(":")
        ids = [int(x) for x in rest.split(",") if x.isdigit()] if rest and rest != "*" else []
        jobs = self.app.jobs
        if kind == "jobs":
            jobs.wake()
        elif kind == "done":
            if rest == "*":
                jobs.notify_all()
            else:
                jobs.notify(ids)
            jobs.wake()
        elif kind == "cancel":
            jobs.cancel_asked(ids)
        elif kind == "schedules" and self.app.scheduler is not None:
            self.app.scheduler.wake()
