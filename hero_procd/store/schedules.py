"""SchedulesApi: cron schedules that submit a job or a run."""

from __future__ import annotations

import builtins
from dataclasses import dataclass
from typing import Any

import orjson

from hero_procd.errors import NotFound
from hero_procd.model import job_request_from, now
from hero_procd.store.jobs import insert_many, resolve, write_run
from hero_procd.store.notify import notify
from hero_procd.store.pool import Conn, DbPool, Row
from hero_procd.store.queries import Q


@dataclass(frozen=True)
class Schedule:
    """A stored schedule."""

    name: str
    cron: str
    tz: str | None
    target: dict[str, Any]
    overlap: str
    paused: bool
    next_fire_at: float | None
    last_fire_at: float | None
    last_job_id: int | None
    last_run_id: int | None
    fires: int
    skipped: int
    queued: int
    created_at: float
    updated_at: float
    stack: str | None = None

    @classmethod
    def from_row(cls, row: Row) -> Schedule:
        """Build from a `schedules` row."""
        return cls(
            name=row["name"],
            cron=row["cron"],
            tz=row["tz"],
            target=orjson.loads(row["target"]),
            overlap=row["overlap"],
            paused=bool(row["paused"]),
            next_fire_at=row["next_fire_at"],
            last_fire_at=row["last_fire_at"],
            last_job_id=row["last_job_id"],
            last_run_id=row["last_run_id"],
            fires=row["fires"],
            skipped=row["skipped"],
            queued=row["queued"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            stack=row["stack"],
        )

    def to_dict(self) -> dict[str, Any]:
        """The schedule as the RPC shows it."""
        return {
            "name": self.name,
            "cron": self.cron,
            "timezone": self.tz,
            **self.target,
            "overlap": self.overlap,
            "paused": self.paused,
            "next_fire_at": self.next_fire_at,
            "last_fire_at": self.last_fire_at,
            "last_job_id": self.last_job_id,
            "last_run_id": self.last_run_id,
            "fires": self.fires,
            "skipped": self.skipped,
            "queued": self.queued,
            "stack": self.stack,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


class SchedulesApi:
    # Fires are units: the job or run, the fire record and the next fire time are one
    # transaction, guarded by the slot they replace.
    """Reads and writes of the `schedules` table."""

    def __init__(self, pool: DbPool) -> None:
        self.pool = pool

    async def upsert(
        self,
        name: str,
        cron: str,
        tz: str | None,
        target: dict[str, Any],
        overlap: str,
        paused: bool,
        next_fire_at: float | None,
    ) -> Schedule:
        """Create or replace a schedule."""
        params = {
            "name": name,
            "cron": cron,
            "tz": tz,
            "target": orjson.dumps(target).decode(),
            "overlap": overlap,
            "paused": int(paused),
            "next_fire_at": next_fire_at,
            "now": now(),
        }

        def unit(conn: Conn) -> Any:
            row = conn.execute(Q["schedule_upsert"], params).fetchone()
            notify(conn, "schedules")  # the other nodes' schedulers look again
            return row

        row = await self.pool.write(unit)
        assert row is not None
        return Schedule.from_row(row)

    async def get(self, name: str) -> Schedule:
        """One schedule, or NotFound."""
        row = await self.pool.fetch_one(Q["schedule_get"], (name,))
        if row is None:
            raise NotFound("schedule not found", {"name": name})
        return Schedule.from_row(row)

    async def list(self) -> list[Schedule]:
        """Every schedule."""
        return [Schedule.from_row(r) for r in await self.pool.fetch_all(Q["schedule_list"])]

    async def delete(self, name: str) -> int:
        """Delete a schedule; the rows deleted."""
        return await self.pool.write(lambda c: c.execute(Q["schedule_delete"], (name,)).rowcount)

    async def set_paused(self, name: str, paused: bool, next_fire_at: float | None) -> None:
        """Pause or resume."""
        params = (int(paused), next_fire_at, now(), name)

        def unit(conn: Conn) -> None:
            conn.execute(Q["schedule_set_paused"], params)
            notify(conn, "schedules")

        await self.pool.write(unit)

    async def due(self, at: float) -> builtins.list[Schedule]:
        """Schedules whose next fire has come."""
        return [Schedule.from_row(r) for r in await self.pool.fetch_all(Q["schedule_due"], (at,))]

    async def next_due(self) -> float | None:
        """When the next schedule fires."""
        row = await self.pool.fetch_one(Q["schedule_next_due"])
        return None if row is None or row[0] is None else float(row[0])

    async def with_queued(self) -> builtins.list[Schedule]:
        """Unpaused schedules holding queued fires (overlap queue)."""
        return [Schedule.from_row(r) for r in await self.pool.fetch_all(Q["schedule_with_queued"])]

    async def fire(
        self, schedule: Schedule, at: float, next_at: float | None, *, forced: bool
    ) -> tuple[int | None, int | None, str | None] | None:
        """Fire the schedule (see `fire_unit`); (job id, run id, 'skipped'|'queued'|None)."""
        try:
            return await self.pool.write(lambda c: fire_unit(c, schedule, at, next_at, forced))
        except _AlreadyFired:
            return None

    async def record_skipped(
        self, schedule: Schedule, at: float, next_at: float | None, *, forced: bool
    ) -> None:
        """Record the slot as skipped (its target cannot be submitted now)."""
        await self.pool.write(
            lambda c: record_fire(c, schedule, at, next_at, None, None, skipped=True, forced=forced)
        )

    async def release_one(self, name: str) -> tuple[bool, builtins.list[int]]:
        """Submit the next queued fire if it may run (see `release_unit`)."""
        return await self.pool.write(lambda c: release_unit(c, name))

    async def drop_queued(self, name: str) -> bool:
        """Drop the next queued fire (its target cannot be submitted); whether one was."""
        return await self.pool.write(lambda c: record_release(c, name, None, None, skipped=True))


def submit_target(conn: Conn, schedule: Schedule) -> tuple[int | None, int | None]:
    """Insert the schedule's job or run (inside a unit); (job id, run id)."""
    if "job" in schedule.target:
        req = job_request_from(schedule.target["job"], "job")
        (job_id,) = insert_many(conn, resolve(conn, [req], field=""))
        return job_id, None
    run = schedule.target["run"]
    jobs = [job_request_from(j, "", in_run=True) for j in run["jobs"]]
    run_id, _ = write_run(conn, run.get("name") or schedule.name, list(run.get("tags") or []), jobs)
    return None, run_id


def fire_unit(
    conn: Conn, schedule: Schedule, at: float, next_at: float | None, forced: bool
) -> tuple[int | None, int | None, str | None] | None:
    """One fire (a unit): submit, skip or queue by the overlap rule, and record it guarded by
    the slot it replaces; None if another fire of the slot won or the schedule is gone."""
    fresh = current(conn, schedule.name)
    if fresh is None:
        return None
    job_id: int | None = None
    run_id: int | None = None
    held: str | None = None
    busy = is_active(conn, fresh.last_job_id, fresh.last_run_id)
    if fresh.overlap == "skip" and busy:
        held = "skipped"
    elif fresh.overlap == "queue" and (busy or fresh.queued > 0):
        held = "queued"
    else:
        job_id, run_id = submit_target(conn, fresh)
    won = record_fire(
        conn,
        schedule,
        at,
        next_at,
        job_id,
        run_id,
        skipped=held == "skipped",
        queued=held == "queued",
        forced=forced,
    )
    if not won:
        raise _AlreadyFired  # undo the submit with the unit
    return job_id, run_id, held


def release_unit(conn: Conn, name: str) -> tuple[bool, list[int]]:
    """Submit one queued fire if the previous fire's jobs are all over (a unit);
    (submitted, the active job ids it waits for)."""
    fresh = current(conn, name)
    if fresh is None or fresh.paused or fresh.queued <= 0:
        return False, []
    active = active_job_ids(conn, fresh)
    if active:
        return False, active
    job_id, run_id = submit_target(conn, fresh)
    return record_release(conn, name, job_id, run_id, skipped=False), []


class _AlreadyFired(Exception):
    """Another fire of the same slot won the race: the unit is undone."""


def current(conn: Conn, name: str) -> Schedule | None:
    """The schedule as stored now (inside a unit), or None once deleted."""
    row = conn.execute(Q["schedule_get_for_write"], (name,)).fetchone()
    return None if row is None else Schedule.from_row(row)


def active_job_ids(conn: Conn, schedule: Schedule) -> list[int]:
    """Ids of the jobs of the schedule's last fire still queued or running (inside a unit)."""
    params = {"job_id": schedule.last_job_id, "run_id": schedule.last_run_id}
    return [int(r[0]) for r in conn.execute(Q["schedule_active_jobs"], params)]


def is_active(conn: Conn, job_id: int | None, run_id: int | None) -> bool:
    """Whether the last fire's job or run is still queued or running (inside a unit)."""
    if job_id is not None:
        row = conn.execute(Q["job_active"], (job_id,)).fetchone()
        if row is not None and row[0]:
            return True
    if run_id is not None:
        row = conn.execute(Q["run_active"], (run_id,)).fetchone()
        if row is not None and row[0]:
            return True
    return False


def record_fire(
    conn: Conn,
    schedule: Schedule,
    at: float,
    next_fire_at: float | None,
    job_id: int | None,
    run_id: int | None,
    *,
    skipped: bool,
    forced: bool,
    queued: bool = False,
) -> bool:
    """Record a fire and the next one; False if someone else fired this slot meanwhile.

    A fire submits its job or run (counted in `fires`), is skipped (`skipped`) or is
    queued behind the previous one (`queued`; counted in `fires` once released).
    """
    params = {
        "at": at,
        "next_fire_at": next_fire_at,
        "job_id": job_id,
        "run_id": run_id,
        "fired": 0 if skipped or queued else 1,
        "skipped": 1 if skipped else 0,
        "queued": 1 if queued else 0,
        "name": schedule.name,
        "expected": schedule.next_fire_at,
        "forced": int(forced),
    }
    return conn.execute(Q["schedule_fired"], params).rowcount == 1


def record_release(
    conn: Conn, name: str, job_id: int | None, run_id: int | None, *, skipped: bool
) -> bool:
    """Take one queued fire: submitted as `job_id`/`run_id`, or dropped; False if none was left."""
    params = {
        "name": name,
        "job_id": job_id,
        "run_id": run_id,
        "fired": 0 if skipped else 1,
        "skipped": 1 if skipped else 0,
    }
    return conn.execute(Q["schedule_released"], params).rowcount == 1
