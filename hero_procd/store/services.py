"""ServicesApi: definitions, live state and exit history of supervised services."""

from __future__ import annotations

import builtins
from collections.abc import Callable
from typing import Any

import orjson

from hero_procd.errors import InvalidParams, InvalidState, NotFound
from hero_procd.model import now
from hero_procd.store.logs import delete_owner_lines
from hero_procd.store.pool import Conn, DbPool
from hero_procd.store.queries import Q
from hero_procd.store.records import Service, status_from_row

# Exits kept per service (service.events).
EVENTS_KEPT = 100

CycleCheck = Callable[[dict[str, list[str]]], "list[str] | None"]


class ServicesApi:
    """Reads and writes of `services` and `service_events`."""

    def __init__(self, pool: DbPool, node: str = "local") -> None:
        self.pool = pool
        self.node = node

    async def define(
        self,
        name: str,
        spec: dict[str, Any],
        find_cycle: CycleCheck | None = None,
        node: str | None = None,
    ) -> Service:
        """Create or redefine a service of `node` (default this daemon's); the dependency
        check and the write are one unit. A service stays on the node it was defined on."""
        wanted = node or self.node
        params = {"name": name, "spec": orjson.dumps(spec).decode(), "now": now(), "node": wanted}

        def unit(conn: Conn) -> Any:
            if find_cycle is not None:
                graph: dict[str, list[str]] = {}
                for row in conn.execute(Q["service_list"]).fetchall():
                    other = orjson.loads(row["spec"])
                    graph[row["name"]] = [*other.get("requires", []), *other.get("after", [])]
                graph[name] = [*spec.get("requires", []), *spec.get("after", [])]
                cycle = find_cycle(graph)
                if cycle is not None:
                    raise InvalidParams("requires", f"dependency cycle: {' -> '.join(cycle)}")
            row = conn.execute(Q["service_upsert"], params).fetchone()
            if row["node"] is not None and row["node"] != wanted:
                raise InvalidState(
                    "the service belongs to another node (delete it there first)",
                    {"name": name, "node": row["node"]},
                )
            return row

        row = await self.pool.write(unit)
        assert row is not None
        return Service.from_row(row)

    async def get(self, name: str) -> Service:
        """The service `name`, or NotFound."""
        row = await self.pool.fetch_one(Q["service_get"], (name,))
        if row is None:
            raise NotFound("service not found", {"name": name})
        return Service.from_row(row)

    async def list(self) -> builtins.list[Service]:
        """Every service, by name."""
        return [Service.from_row(r) for r in await self.pool.fetch_all(Q["service_list"])]

    async def delete(self, name: str) -> dict[str, int]:
        """Delete the service, its log lines and exit history in one unit; rows deleted."""

        def unit(conn: Conn) -> dict[str, int]:
            deleted = conn.execute(Q["service_delete"], (name,)).rowcount
            logs = delete_owner_lines(conn, "service", name)
            conn.execute(Q["service_event_delete"], (name,))
            return {"services": deleted, "logs": logs}

        return await self.pool.write(unit)

    async def set_state(self, name: str, **fields: Any) -> None:
        """Write the live state the supervisor reached (committed when this returns)."""
        params = (
            fields["state"],
            fields.get("pid"),
            fields.get("pid_start_time"),
            fields.get("restarts", 0),
            fields.get("manual_restarts", 0),
            fields.get("exit_code"),
            fields.get("signal"),
            fields.get("health"),
            fields.get("started_at"),
            now(),
            name,
        )
        await self.pool.write(lambda c: c.execute(Q["service_set_state"], params))

    async def set_desired(self, name: str, desired: str) -> None:
        """Whether the service should be running (kept across daemon restarts)."""
        params = (desired, now(), name)
        await self.pool.write(lambda c: c.execute(Q["service_set_desired"], params))

    async def set_stats(self, rows: builtins.list[tuple[int | None, float | None, str]]) -> None:
        """Sampled (memory, cpu, name) of several services in one unit."""
        await self.pool.write(lambda c: c.executemany(Q["service_set_stats"], rows))

    async def reset_all(self, adopt: bool = False) -> None:
        """At start-up no service process of this node is alive: their live states are
        stopped (`adopt`: every service becomes this node's first — SQLite's one node)."""

        def unit(conn: Conn) -> None:
            if adopt:
                conn.execute(Q["service_adopt_all"], (self.node, self.node))
            conn.execute(Q["service_reset_all"], (self.node,))

        await self.pool.write(unit)

    async def record_exit(self, name: str, **event: Any) -> None:
        """Append one exit to the service's history, keeping the last EVENTS_KEPT."""
        params = {
            "service": name,
            "at": event.get("at", now()),
            "started_at": event.get("started_at"),
            "exit_code": event.get("exit_code"),
            "signal": event.get("signal"),
            "ran_s": event.get("ran_s"),
            "expected": int(bool(event.get("expected", False))),
            "restarted": int(bool(event.get("restarted", False))),
            "reason": event.get("reason"),
        }

        def unit(conn: Conn) -> None:
            conn.execute(Q["service_event_insert"], params)
            conn.execute(Q["service_event_trim"], (name, name))

        await self.pool.write(unit)

    async def events(self, name: str, limit: int = EVENTS_KEPT) -> builtins.list[dict[str, Any]]:
        """A service's exits, newest first."""
        rows = await self.pool.fetch_all(Q["service_event_list"], (name, limit))
        return [
            {
                "at": r["at"],
                "started_at": r["started_at"],
                "exit_code": r["exit_code"],
                "signal": r["signal"],
                "ran_s": r["ran_s"],
                "expected": bool(r["expected"]),
                "restarted": bool(r["restarted"]),
                "reason": r["reason"],
            }
            for r in rows
        ]

    async def status_all(
        self, dead_nodes: frozenset[str] = frozenset()
    ) -> builtins.list[dict[str, Any]]:
        """The live status of every service (every node's), from one read; those of
        `dead_nodes` are `unknown`."""
        rows = await self.pool.fetch_all(Q["service_status_all"])
        ts = now()
        return [status_from_row(r, ts, dead_nodes) for r in rows]

    async def status(self, name: str) -> dict[str, Any]:
        """The live status of one service, or NotFound."""
        row = await self.pool.fetch_one(Q["service_status_one"], (name,))
        if row is None:
            raise NotFound("service not found", {"name": name})
        return status_from_row(row, now())
