"""StacksApi: the state a stack plan starts from, and the plan's writes, in ONE unit.

A plan (hero_procd/stack.py) is computed inside the unit from what the unit
read, so two `stack.apply` calls at once are serialised by the writer: the
second plans against what the first wrote. The definitions are stored in the
same shapes the `*.define`/`*.set` methods store, plus the stack's name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import orjson

from hero_procd.errors import NotFound
from hero_procd.model import now
from hero_procd.store.pool import Conn, DbPool
from hero_procd.store.queries import Q

# kind -> name -> (definition as a stack file gives it, normalised; the owning stack)
State = dict[str, dict[str, tuple[dict[str, Any], str | None]]]

P = TypeVar("P", bound="Writable")


@dataclass
class Write:
    """One object to create or redefine (`definition` set) or delete (None) for `stack`."""

    kind: str
    name: str
    stack: str
    definition: dict[str, Any] | None
    next_fire_at: float | None = None


@dataclass
class Writes:
    """What a plan asks the unit to write."""

    items: list[Write] = field(default_factory=list)


class Writable(Protocol):
    """A plan: whether to write, and what."""

    dry_run: bool

    def writes(self) -> Writes:
        """The creates, updates and deletes of the plan (services are not deleted here)."""
        ...


class StacksApi:
    """Reads and writes of the four tables a stack file declares."""

    def __init__(self, pool: DbPool, node: str | None = None) -> None:
        self.pool = pool
        self.node = node  # the node a new service of a stack belongs to (this daemon's)

    async def apply(self, planner: Callable[[State], P]) -> P:
        """Read the state, plan against it and (unless a dry run) write, in ONE unit."""

        def unit(conn: Conn) -> P:
            plan = planner(read_state(conn))
            if not plan.dry_run:
                write(conn, plan.writes(), self.node)
            return plan

        return await self.pool.write(unit)

    async def state(self) -> State:
        """The current definitions and their stacks (for stack.export)."""
        return await self.pool.write(read_state)

    async def update_service(
        self, name: str, change: Callable[[dict[str, Any], dict[str, list[str]]], dict[str, Any]]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Read a service's spec, apply `change(spec, graph)`, store it: one unit; (old, new).

        `graph` is every service's dependencies, for the cycle check.
        """

        def unit(conn: Conn) -> tuple[dict[str, Any], dict[str, Any]]:
            row = conn.execute(Q["stack_service_spec"], (name,)).fetchone()
            if row is None:
                raise NotFound("service not found", {"name": name})
            old: dict[str, Any] = orjson.loads(row["spec"])
            graph = {
                r["name"]: _deps(orjson.loads(r["spec"]))
                for r in conn.execute(Q["stack_services"]).fetchall()
            }
            new = change(old, graph)
            if new != old:
                conn.execute(Q["stack_service_set_spec"], (orjson.dumps(new).decode(), now(), name))
            return old, new

        return await self.pool.write(unit)


def _deps(spec: dict[str, Any]) -> list[str]:
    return [*spec.get("requires", []), *spec.get("after", [])]


def read_state(conn: Conn) -> State:
    """Every service, action, schedule and group as a stack file would declare it."""
    state: State = {"services": {}, "actions": {}, "schedules": {}, "groups": {}}
    for r in conn.execute(Q["stack_services"]).fetchall():
        state["services"][r["name"]] = (orjson.loads(r["spec"]), r["stack"])
    for r in conn.execute(Q["stack_actions"]).fetchall():
        action = {**orjson.loads(r["spec"]), "tags": orjson.loads(r["tags"])}
        state["actions"][r["name"]] = (action, r["stack"])
    for r in conn.execute(Q["stack_schedules"]).fetchall():
        schedule: dict[str, Any] = {"cron": r["cron"]}
        if r["tz"] is not None:
            schedule["timezone"] = r["tz"]
        schedule.update(orjson.loads(r["target"]))
        schedule["overlap"] = r["overlap"]
        schedule["paused"] = bool(r["paused"])
        state["schedules"][r["name"]] = (schedule, r["stack"])
    for r in conn.execute(Q["stack_groups"]).fetchall():
        state["groups"][r["name"]] = ({"max_parallel": int(r["max_parallel"])}, r["stack"])
    return state


def write(conn: Conn, writes: Writes, node: str | None = None) -> None:
    """The plan's creates, updates and deletes (not of services: their owners delete them);
    a new service belongs to `node`."""
    ts = now()
    for w in writes.items:
        d = w.definition
        if w.kind == "services":
            assert d is not None, "services are deleted through their owners"
            params = {"name": w.name, "spec": orjson.dumps(d).decode(), "stack": w.stack}
            conn.execute(Q["stack_service_upsert"], {**params, "now": ts, "node": node})
        elif w.kind == "actions":
            if d is None:
                conn.execute(Q["action_delete"], (w.name,))
                continue
            spec = {k: v for k, v in d.items() if k != "tags"}
            conn.execute(
                Q["stack_action_upsert"],
                {
                    "name": w.name,
                    "spec": orjson.dumps(spec).decode(),
                    "tags": orjson.dumps(d.get("tags", [])).decode(),
                    "stack": w.stack,
                    "now": ts,
                },
            )
        elif w.kind == "schedules":
            if d is None:
                conn.execute(Q["schedule_delete"], (w.name,))
                continue
            target = {"job": d["job"]} if "job" in d else {"run": d["run"]}
            conn.execute(
                Q["stack_schedule_upsert"],
                {
                    "name": w.name,
                    "cron": d["cron"],
                    "tz": d.get("timezone"),
                    "target": orjson.dumps(target).decode(),
                    "overlap": d["overlap"],
                    "paused": int(d["paused"]),
                    "next_fire_at": w.next_fire_at,
                    "stack": w.stack,
                    "now": ts,
                },
            )
        elif w.kind == "groups":
            if d is None:
                conn.execute(Q["group_delete"], (w.name,))
                continue
            conn.execute(Q["stack_group_upsert"], (w.name, d["max_parallel"], w.stack))
        else:  # pragma: no cover - the plan names only the four kinds
            raise ValueError(w.kind)
