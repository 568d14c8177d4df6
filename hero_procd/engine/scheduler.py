"""Cron schedules: each due fire submits exactly one job or run.

The fire, its job or run, and the next fire time are written in ONE
transaction, guarded by the fire time it replaces: a restart neither loses
nor repeats a fire. After downtime a schedule fires once (catch-up), then
its next time is computed from now, not once per missed slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from croniter import croniter

from hero_procd.app import App
from hero_procd.errors import HeroError, InvalidParams
from hero_procd.model import check_run_graph, job_request_from, now
from hero_procd.params import check_timezone_name
from hero_procd.store import jobs as jobs_sql
from hero_procd.store import write_run
from hero_procd.store.pool import Conn
from hero_procd.store.schedules import Schedule, is_active, record_fire

log = logging.getLogger(__name__)

_MAX_SLEEP_S = 60.0  # re-read the table at least this often (clock changes, missed wakes)


def check_timezone(tz: str | None) -> None:
    """Reject an unknown IANA timezone name, by shape and the host's zone list first."""
    if tz is None:
        return
    # Not ZoneInfo(tz) alone: a 300-byte name raised OSError with the install path in it.
    check_timezone_name(tz, "timezone")


def check_cron(expr: str) -> None:
    """Reject an expression croniter cannot evaluate, once, at `schedule.set`."""
    if not croniter.is_valid(expr):
        raise InvalidParams("cron", f"invalid cron expression {expr!r}")
    try:
        croniter(expr, datetime.now().astimezone()).get_next(float)
    except Exception as exc:  # croniter raises several kinds for expressions that never fire
        raise InvalidParams("cron", f"cron expression {expr!r} never fires: {exc}") from exc


def next_fire(expr: str, tz: str | None, after: float) -> float:
    """The first fire time of `expr` strictly after `after` (host's local time unless `tz`)."""
    # A naive local datetime (not .astimezone(), whose offset is fixed) keeps a schedule
    # at its wall-clock time across daylight-saving changes.
    start = datetime.fromtimestamp(after, ZoneInfo(tz)) if tz else datetime.fromtimestamp(after)
    nxt: datetime = croniter(expr, start).get_next(datetime)
    return nxt.timestamp()


def check_target(target: dict[str, Any]) -> None:
    """Validate the job or run a schedule submits, so a fire never fails on its shape."""
    if "job" in target:
        job_request_from(target["job"], "job")
    else:
        run = target["run"]
        if not isinstance(run, dict) or not isinstance(run.get("jobs"), list) or not run["jobs"]:
            raise InvalidParams("run.jobs", "must be a non-empty list")
        unknown = run.keys() - {"name", "tags", "jobs"}
        if unknown:
            raise InvalidParams(f"run.{min(unknown)}", "unknown field")
        if run.get("name") is not None and not isinstance(run["name"], str):
            raise InvalidParams("run.name", "must be a string")
        tags = run.get("tags")
        if tags is not None and (
            not isinstance(tags, list) or not all(isinstance(t, str) for t in tags)
        ):
            raise InvalidParams("run.tags", "must be a list of strings")
        jobs = [
            job_request_from(j, f"run.jobs[{i}]", in_run=True) for i, j in enumerate(run["jobs"])
        ]
        check_run_graph(jobs)


class Scheduler:
    """Fires due schedules; sleeps until the next one (no polling in between)."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.store = app.store
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def start(self) -> None:
        """Start firing."""
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="scheduler")

    async def stop(self) -> None:
        """Stop firing (a fire in progress completes)."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), 10.0)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task

    def wake(self) -> None:
        """Schedules changed: look again."""
        self._wake.set()

    async def _loop(self) -> None:
        # A flag, not only cancel(): in 3.11 a wait_for whose inner wait has just
        # finished can swallow the cancellation, and the loop would go on.
        while not self._stopping:
            try:
                for schedule in await self.store.schedules.due(now()):
                    await self.fire(schedule)
                nxt = await self.store.schedules.next_due()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("scheduler pass failed")
                nxt = now() + 5.0
            timeout = _MAX_SLEEP_S if nxt is None else min(_MAX_SLEEP_S, max(0.0, nxt - now()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()

    async def fire(self, schedule: Schedule, *, forced: bool = False) -> dict[str, Any]:
        """Submit the schedule's job or run (unless overlap says skip) and record the fire."""
        at = now()
        next_at = schedule.next_fire_at if forced else next_fire(schedule.cron, schedule.tz, at)

        def unit(conn: Conn) -> tuple[int | None, int | None, bool]:
            job_id: int | None = None
            run_id: int | None = None
            skipped = False
            if schedule.overlap == "skip" and is_active(
                conn, schedule.last_job_id, schedule.last_run_id
            ):
                skipped = True
            elif "job" in schedule.target:
                req = job_request_from(schedule.target["job"], "job")
                if schedule.overlap == "queue" and req.group is None:
                    req.group = f"schedule:{schedule.name}"
                (job_id,) = jobs_sql.insert_many(conn, jobs_sql.resolve(conn, [req], field=""))
            else:
                run = schedule.target["run"]
                jobs = [job_request_from(j, "", in_run=True) for j in run["jobs"]]
                run_id, _ = write_run(
                    conn, run.get("name") or schedule.name, list(run.get("tags") or []), jobs
                )
            won = record_fire(
                conn, schedule, at, next_at, job_id, run_id, skipped=skipped, forced=forced
            )
            if not won:
                raise _AlreadyFired
            return job_id, run_id, skipped

        try:
            job_id, run_id, skipped = await self.store.pool.write(unit)
        except _AlreadyFired:
            return {"fired": False}
        except HeroError as exc:
            # The target was valid at set time but is not now (its action was deleted, say):
            # record the slot as skipped, so it is not evaluated again and again.
            log.warning(
                "schedule fire failed", extra={"schedule": schedule.name, "error": str(exc)}
            )
            await self.store.pool.write(
                lambda conn: record_fire(
                    conn, schedule, at, next_at, None, None, skipped=True, forced=forced
                )
            )
            return {"fired": False, "error": str(exc)}
        if job_id is not None or run_id is not None:
            self.app.wake_jobs()
        return {"fired": not skipped, "skipped": skipped, "job_id": job_id, "run_id": run_id}


class _AlreadyFired(Exception):
    """Another fire of the same slot won the race."""
