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

from dataclasses import dataclass
from typing import Any

from hero_procd.model import now
from hero_procd.store.jobs import Settled, recover
from hero_procd.store.pool import Conn, DbPool, is_postgres
from hero_procd.store.queries import Q


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


class NodesApi:
    """Reads and writes of `nodes`."""

    def __init__(self, pool: DbPool, node: str) -> None:
        self.pool = pool
        self.node = node
        # Who holds the name: this daemon, once `claim` succeeded (every later write checks).
        self.pid = -1
        self.started_at = -1.0

    async def claim(self, version: str, pid: int, seen: tuple[int | None, float] | None) -> bool:
        """Take this node's name as this daemon (`pid`, a new started_at), unless its row
        changed since it was `seen` ((pid, started_at); None: there was no row). False:
        another daemon took the name meanwhile, and nothing was written."""
        started = now()
        seen_pid, seen_started = seen if seen is not None else (-1, -1.0)  # -1: matches no row
        params = {
            "name": self.node,
            "version": version,
            "pid": pid,
            "now": started,
            "seen_pid": seen_pid,
            "seen_started": seen_started,
        }
        done = await self.pool.side_write(Q["node_claim"], params)
        if done == 1:
            self.pid, self.started_at = pid, started
        return done == 1

    def _mine(self) -> dict[str, Any]:
        return {"name": self.node, "pid": self.pid, "started_at": self.started_at, "now": now()}

    async def revive(self) -> bool:
        """Mark this daemon's row alive again (declared dead while cut off); False if
        another daemon has taken the name since."""
        return await self.pool.side_write(Q["node_revive"], self._mine()) == 1

    async def heartbeat(self) -> bool:
        """Renew this daemon's heartbeat; False if it was declared dead or the name taken."""
        return await self.pool.side_write(Q["node_heartbeat"], self._mine()) == 1

    async def stopped(self) -> None:
        """Mark this daemon's row stopped (a graceful stop: nothing of it is left running)."""
        await self.pool.side_write(Q["node_stopped"], self._mine())

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
            if is_postgres(conn):
                got = conn.execute(Q["node_sweep_lock_pg"]).fetchone()
                if not got[0]:
                    return DeadNodes([], 0, 0, Settled([], []))  # another node is sweeping
            params = {"now": now(), "timeout": timeout_s, "name": self.node}
            names = [r[0] for r in conn.execute(Q["node_mark_dead"], params).fetchall()]
            jobs: list[Any] = []
            for name in names:
                jobs.extend(conn.execute(Q["job_running_of_node"], (name,)).fetchall())
            if not jobs:
                return DeadNodes(names, 0, 0, Settled([], []))
            settled, lost = recover(conn, jobs, cause="its node died")
            return DeadNodes(names, len(jobs), lost, settled)

        return await self.pool.write(unit)
