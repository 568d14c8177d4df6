"""Frozen records read from the store, each with `from_row` and `to_dict`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from hero_procd.model import CommandSpec
from hero_procd.store.pool import Row


@dataclass(frozen=True)
class Action:
    """A named, reusable command definition."""

    name: str
    spec: CommandSpec
    tags: list[str]
    created_at: float
    updated_at: float
    node: str | None = None  # placement of its jobs (a job's own `node` wins)
    stack: str | None = None

    @classmethod
    def from_row(cls, row: Row) -> Action:
        """Build from an `actions` row."""
        return cls(
            name=row["name"],
            spec=CommandSpec.from_dict(orjson.loads(row["spec"])),
            tags=orjson.loads(row["tags"]),
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            node=row["node"],
            stack=row["stack"],
        )

    def to_dict(self) -> dict[str, Any]:
        """The action as the RPC shows it."""
        return {
            "name": self.name,
            **self.spec.to_dict(),
            "tags": self.tags,
            "node": self.node,
            "stack": self.stack,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


@dataclass(frozen=True)
class Job:
    """One execution of a command."""

    id: int
    run_id: int | None
    key: str | None
    action: str | None
    spec: CommandSpec
    tags: list[str]
    status: str
    priority: int
    group: str | None
    dedup_key: str | None
    attempt: int
    max_attempts: int
    not_before: float
    claim_token: str | None
    pid: int | None
    pid_start_time: float | None
    exit_code: int | None
    signal: int | None
    error: str | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    cancel_requested: bool = False
    dropped_log_lines: int = 0
    node: str | None = None
    pin_node: str | None = None

    @classmethod
    def from_row(cls, row: Row) -> Job:
        """Build from a `jobs` row."""
        return cls(
            id=row["id"],
            run_id=row["run_id"],
            key=row["key"],
            action=row["action"],
            spec=CommandSpec.from_dict(orjson.loads(row["spec"])),
            tags=orjson.loads(row["tags"]),
            status=row["status"],
            priority=row["priority"],
            group=row["grp"],
            dedup_key=row["dedup_key"],
            attempt=row["attempt"],
            max_attempts=row["max_attempts"],
            not_before=row["not_before"],
            claim_token=row["claim_token"],
            pid=row["pid"],
            pid_start_time=row["pid_start_time"],
            exit_code=row["exit_code"],
            signal=row["signal"],
            error=row["error"],
            created_at=row["created_at"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
            cancel_requested=bool(row["cancel_requested"]),
            dropped_log_lines=row["dropped_log_lines"] if "dropped_log_lines" in row.keys() else 0,  # noqa: SIM118
            node=row["node"],
            pin_node=row["pin_node"],
        )

    def to_dict(self) -> dict[str, Any]:
        """The job as the RPC shows it (the claim token stays inside)."""
        return {
            "id": self.id,
            "run_id": self.run_id,
            "key": self.key,
            "action": self.action,
            **self.spec.to_dict(),
            "tags": self.tags,
            "status": self.status,
            "priority": self.priority,
            "group": self.group,
            "dedup_key": self.dedup_key,
            "attempt": self.attempt,
            "max_attempts": self.max_attempts,
            "not_before": self.not_before,
            "pid": self.pid,
            "exit_code": self.exit_code,
            "signal": self.signal,
            "error": self.error,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "cancel_requested": self.cancel_requested,
            "dropped_log_lines": self.dropped_log_lines,
            "node": self.node,
            "pin_node": self.pin_node,
        }


def job_wire(row: Row) -> dict[str, Any]:
    """`Job.from_row(row).to_dict()` without building the records (job.list's hot path)."""
    spec = {k: v for k, v in orjson.loads(row["spec"]).items() if v is not None}
    return {
        "id": row["id"],
        "run_id": row["run_id"],
        "key": row["key"],
        "action": row["action"],
        **spec,
        "tags": orjson.loads(row["tags"]),
        "status": row["status"],
        "priority": row["priority"],
        "group": row["grp"],
        "dedup_key": row["dedup_key"],
        "attempt": row["attempt"],
        "max_attempts": row["max_attempts"],
        "not_before": row["not_before"],
        "pid": row["pid"],
        "exit_code": row["exit_code"],
        "signal": row["signal"],
        "error": row["error"],
        "created_at": row["created_at"],
        "started_at": row["started_at"],
        "finished_at": row["finished_at"],
        "cancel_requested": bool(row["cancel_requested"]),
        "dropped_log_lines": row["dropped_log_lines"] if "dropped_log_lines" in row.keys() else 0,  # noqa: SIM118
        "node": row["node"],
        "pin_node": row["pin_node"],
    }


@dataclass(frozen=True)
class Run:
    """A group of jobs submitted together."""

    id: int
    name: str | None
    tags: list[str]
    status: str
    created_at: float
    finished_at: float | None

    @classmethod
    def from_row(cls, row: Row) -> Run:
        """Build from a `runs` row."""
        return cls(
            id=row["id"],
            name=row["name"],
            tags=orjson.loads(row["tags"]),
            status=row["status"],
            created_at=row["created_at"],
            finished_at=row["finished_at"],
        )

    def to_dict(self) -> dict[str, Any]:
        """The run as the RPC shows it."""
        return {
            "id": self.id,
            "name": self.name,
            "tags": self.tags,
            "status": self.status,
            "created_at": self.created_at,
            "finished_at": self.finished_at,
        }


@dataclass(frozen=True)
class Service:
    """A supervised long-running process: its definition and its live state."""

    name: str
    spec: dict[str, Any]
    desired: str
    state: str
    pid: int | None
    restarts: int
    exit_code: int | None
    signal: int | None
    health: str | None
    started_at: float | None
    created_at: float
    updated_at: float
    node: str | None = None
    stack: str | None = None
    manual_restarts: int = 0

    @classmethod
    def from_row(cls, row: Row) -> Service:
        """Build from a `services` row."""
        return cls(
            name=row["name"],
            spec=orjson.loads(row["spec"]),
            desired=row["desired"],
            state=row["state"],
            pid=row["pid"],
            restarts=row["restarts"],
            exit_code=row["exit_code"],
            signal=row["signal"],
            health=row["health"],
            started_at=row["started_at"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            node=row["node"],
            stack=row["stack"],
            manual_restarts=row["manual_restarts"],
        )

    def to_dict(self) -> dict[str, Any]:
        """The service as the RPC shows it."""
        return {
            "name": self.name,
            "tags": [],  # a service defined before tags existed has none
            **self.spec,
            "stack": self.stack,
            "desired": self.desired,
            "state": self.state,
            "pid": self.pid,
            "restarts": self.restarts,
            "manual_restarts": self.manual_restarts,
            "exit_code": self.exit_code,
            "signal": self.signal,
            "health_status": self.health,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "node": self.node,
        }


def status_from_row(
    row: Row, now: float, dead_nodes: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """One entry of `service.status_all` from a `service_status_*` row; the state of a
    service whose node is dead is `unknown` (nobody supervises it now)."""
    started = row["started_at"]
    unknown = row["node"] in dead_nodes
    live = (
        not unknown and row["state"] in ("starting", "running", "stopping") and started is not None
    )
    return {
        "name": row["name"],
        "node": row["node"],
        "state": "unknown" if unknown else row["state"],
        "desired": row["desired"],
        "pid": row["pid"],
        "restarts": row["restarts"],
        "manual_restarts": row["manual_restarts"],
        "exit_code": row["exit_code"],
        "signal": row["signal"],
        "health": row["health"],
        "uptime_s": round(now - started, 3) if live else None,
        "memory_bytes": row["memory_bytes"] if live else None,
        "cpu_percent": row["cpu_percent"] if live else None,
        "tags": orjson.loads(row["tags"]) if row["tags"] else [],
    }
