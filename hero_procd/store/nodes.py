"""NodesApi: the daemons sharing one database, their heartbeats, and the wake-ups between them.

Every daemon is a node (SQLite: the only one). A node renews its row every
~2 s; a node whose heartbeat is older than the node timeout is dead, and one
live node at a time (an advisory lock on PostgreSQL) settles its running
attempts by their retry policy. On PostgreSQL the heartbeat and its age use the
database's clock, so the hosts' clocks need not agree.

Wake-ups (`notify`): a unit that queues jobs, ends them or asks for a cancel
sends a NOTIFY inside its transaction (delivered at commit) that the other
nodes LISTEN to (store/postgres.py); SQLite has no other node to tell.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any

from hero_procd.model import now
from hero_procd.store import pool as pool_mod
from hero_procd.store.jobs import Settled, recover
from hero_procd.store.pool import Conn, DbPool, is_postgres
from hero_procd.store.queries import Q

log = logging.getLogger(__name__)

# How long the sweep waits for a dead daemon's session to exit once told to.
END_SESSION_WAIT_MS = 2000


def session_name(schema: str, node: str, pid: int, started_at: float) -> str:
    """The application_name of every PostgreSQL session of daemon `pid` as `node` on
    `schema`, started at `started_at` (its row's): what the sweep ends the sessions of a
    dead node by. The hash of all four leads (the server keeps 63 bytes, other schemas'
    clusters have their n1 too, and a daemon restarted as the same node may have the same
    pid — pid 1 in a container — while the sweep of the one it replaces is under way)."""
    key = f"{schema}\0{node}\0{pid}\0{started_at:.6f}"
    tag = hashlib.blake2s(key.encode(), digest_size=5).hexdigest()
    readable = "".join(c if " " <= c <= "~" else "?" for c in f"{node}@{schema}")
    return f"hero-procd {tag} {readable}"[:63]


@dataclass(frozen=True)
class NodeInfo:
    """One node as node.list shows it."""

    name: str
    version: str
    pid: int | None
    started_at: float
    heartbeat_age_s: float
    alive: bool
    state: str
    jobs_running: int

    def to_dict(self) -> dict[str, Any]:
        """The wire form."""
        return {
            "name": self.name,
            "version": self.version,
            "pid": self.pid,
            "started_at": self.started_at,
            "heartbeat_age_s": round(self.heartbeat_age_s, 3),
            "alive": self.alive,
            "state": self.state,
            "jobs_running": self.jobs_running,
        }


@dataclass(frozen=True)
class DeadNodes:
    """What one sweep found: the nodes declared dead and the attempts of theirs it settled."""

    nodes: list[str]
    jobs: int
    lost: int
    settled: Settled
    # Their database sessions ended (PostgreSQL): each may have held locks on their rows.
    sessions: int = 0


class NodesApi:
    """Reads and writes of `nodes`."""

    def __init__(self, pool: DbPool, node: str, started_at: float | None = None) -> None:
        self.pool = pool
        self.node = node
        # When this daemon opened the store: its first claim's started_at, which names its
        # PostgreSQL sessions (session_name) before it has a row.
        self.born = now() if started_at is None else started_at
        # Who holds the name: this daemon, once `claim` succeeded (every later write checks).
        self.pid = -1
        self.started_at = -1.0

    async def claim(self, version: str, pid: int, seen: tuple[int | None, float] | None) -> bool:
        """Take this node's name as this daemon (`pid`, a new started_at), unless its row
        changed since it was `seen` ((pid, started_at); None: there was no row). False:
        another daemon took the name meanwhile, and nothing was written."""
        started = self.born if self.started_at < 0 else now()
        seen_pid, seen_started = seen if seen is not None else (-1, -1.0)  # -1: matches no row
        params = {
            "name": self.node,
            "version": version,
            "pid": pid,
            "now": started,
            "seen_pid": seen_pid,
            "seen_started": seen_started,
        }
        # Not idempotent: a claim repeated after its commit went unacknowledged would find
        # its own row, not the one seen, and report the name taken. It runs once, at
        # start-up, on a side connection just opened.
        done = await self.pool.side_write(Q["node_claim"], params)
        if done == 1:
            self.pid, self.started_at = pid, started
        return done == 1

    def _mine(self) -> dict[str, Any]:
        return {"name": self.node, "pid": self.pid, "started_at": self.started_at, "now": now()}

    async def revive(self) -> bool:
        """Mark this daemon's row alive again (declared dead while cut off); False if
        another daemon has taken the name since."""
        # Idempotent (so retried on a dropped session): it sets the row as the first run
        # did and matches it again, by this daemon's (name, pid, started_at).
        return await self.pool.side_write(Q["node_revive"], self._mine(), idempotent=True) == 1

    async def heartbeat(self) -> bool:
        """Renew this daemon's heartbeat; False if it was declared dead or the name taken."""
        # Idempotent (so retried on a dropped session, and one killed idle session does not
        # cost a beat of the lease): a second run only moves heartbeat_at to a later now,
        # and matches the same row (state stays 'alive').
        return await self.pool.side_write(Q["node_heartbeat"], self._mine(), idempotent=True) == 1

    async def stopped(self) -> None:
        """Mark this daemon's row stopped (a graceful stop: nothing of it is left running)."""
        # Idempotent: a second run sets 'stopped' again on the same row.
        await self.pool.side_write(Q["node_stopped"], self._mine(), idempotent=True)

    async def list(self, timeout_s: float) -> list[NodeInfo]:
        """Every node, with its heartbeat's age and whether it is alive."""
        rows = await self.pool.fetch_all(Q["node_list"], {"now": now()})
        return [
            NodeInfo(
                name=r["name"],
                version=r["version"],
                pid=r["pid"],
                started_at=r["started_at"],
                heartbeat_age_s=max(0.0, float(r["age"])),
                alive=r["state"] == "alive" and float(r["age"]) <= timeout_s,
                state=r["state"] if r["state"] != "alive" or r["age"] <= timeout_s else "dead",
                jobs_running=int(r["running"]),
            )
            for r in rows
        ]

    async def dead_names(self, timeout_s: float) -> set[str]:
        """Nodes that are dead: declared so, or their heartbeat too old (not those stopped)."""
        return {n.name for n in await self.list(timeout_s) if n.state == "dead"}

    async def sweep(self, timeout_s: float) -> DeadNodes:
        """Declare the nodes whose heartbeat is older than `timeout_s` dead and settle their
        running attempts by their retry policy (queued again, or lost), in one unit."""

        def unit(conn: Conn) -> DeadNodes:
            pg = is_postgres(conn)
            if pg:
                got = conn.execute(Q["node_sweep_lock_pg"]).fetchone()
                if not got[0]:
                    return DeadNodes([], 0, 0, Settled([], []))  # another node is sweeping
                # Never wait long behind a lock (this node's writer waits with it): a lock
                # the sessions ended below did not give up fails this sweep, and the next
                # one tries again. Undone with the unit's savepoint if it fails.
                wait = f"{max(500, int(timeout_s * 250))}ms"
                conn.execute("SELECT set_config('lock_timeout', ?, true)", (wait,))
            params = {"now": now(), "timeout": timeout_s, "name": self.node}
            ended = 0
            if pg:
                # Before its row is written: the dead daemon's session may hold its lock.
                stale = conn.execute(Q["node_stale"], params).fetchall()
                if not stale:
                    conn.execute("SET LOCAL lock_timeout TO DEFAULT")
                    return DeadNodes([], 0, 0, Settled([], []))
                ended = _end_sessions(conn, [(r[0], r[1], r[2]) for r in stale])
            names = [r[0] for r in conn.execute(Q["node_mark_dead"], params).fetchall()]
            jobs: list[Any] = []
            for name in names:
                jobs.extend(conn.execute(Q["job_running_of_node"], (name,)).fetchall())
            if jobs:
                settled, lost = recover(conn, jobs, cause="its node died")
            else:
                settled, lost = Settled([], []), 0
            if pg:
                conn.execute("SET LOCAL lock_timeout TO DEFAULT")
            return DeadNodes(names, len(jobs), lost, settled, ended)

        return await self.pool.write(unit)

    async def end_stale_sessions(self, timeout_s: float) -> int:
        """End the PostgreSQL sessions of the nodes the next sweep will declare dead, on a
        reader: not queued behind this node's writer, whose units may wait for the very
        locks those sessions hold (a job of theirs cancelled through this node) — the
        sweep, a unit of that writer, would then never run. How many ended (SQLite: 0)."""
        if self.pool.backend != "postgresql":
            return 0
        params = {"now": now(), "timeout": timeout_s, "name": self.node}
        stale = await self.pool.fetch_all(Q["node_stale"], params)
        schema = str(getattr(self.pool, "schema", ""))
        apps = [session_name(schema, r[0], r[1], r[2]) for r in stale if r[1] is not None]
        if not apps:
            return 0
        row = await self.pool.fetch_one(
            Q["node_end_sessions_pg"], {"apps": apps, "wait_ms": END_SESSION_WAIT_MS}
        )
        return int(row[0]) if row is not None else 0


def _end_sessions(conn: Conn, dead: list[tuple[str, int | None, float]]) -> int:
    """End the PostgreSQL sessions of daemons about to be declared dead; how many.

    A daemon cut off by the network in the middle of a statement stream (a pipelined
    executemany, a COPY: the server waits for the rest, the session is *active*, not idle
    in a transaction, so no idle timeout ends it) keeps its transaction and its row locks
    on the server until TCP gives up — never, behind a half-open connection. The sweep
    would wait behind those locks with this node's writer. A daemon whose heartbeat is
    this old has let its lease run out (half the node timeout), so ending its sessions
    undoes only writes it no longer owns; one that comes back reconnects and retries.
    A server that refuses (another role, no pg_signal_backend) is logged; the lock
    timeout then bounds the wait.
    """
    schema = str(conn.execute("SELECT current_schema()").fetchone()[0])
    apps = [session_name(schema, name, pid, at) for name, pid, at in dead if pid is not None]
    if not apps:
        return 0
    conn.execute("SAVEPOINT end_sessions")
    try:
        row = conn.execute(
            Q["node_end_sessions_pg"], {"apps": apps, "wait_ms": END_SESSION_WAIT_MS}
        ).fetchone()
    except pool_mod.DB_ERRORS as exc:
        conn.execute("ROLLBACK TO end_sessions")
        conn.execute("RELEASE end_sessions")
        log.warning(
            "could not end the sessions of dead nodes (their locks are held until the "
            "server drops them)",
            extra={"nodes": [n for n, _, _ in dead], "error": str(exc).strip()},
        )
        return 0
    conn.execute("RELEASE end_sessions")
    return int(row[0])
