"""Cron schedules: each due fire submits exactly one job or run.

The fire, its job or run, and the next fire time are written in ONE
transaction, guarded by the fire time it replaces: a restart neither loses
nor repeats a fire. After downtime a schedule fires once (catch-up), then
its next time is computed from now, not once per missed slot.

Slots are wall-clock times, each fired once across daylight-saving changes
(`next_fire_in`, rules below); overlap "queue" holds fires on the schedule
until the previous fire's job or run has ended (`Scheduler`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable
from datetime import datetime, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

from croniter import croniter

from hero_procd.app import App
from hero_procd.errors import HeroError, InvalidParams, NotFound, StorageError
from hero_procd.model import TERMINAL_JOB_STATES, check_run_graph, job_request_from, now
from hero_procd.params import check_timezone_name
from hero_procd.store.schedules import Schedule

log = logging.getLogger(__name__)

_MAX_SLEEP_S = 60.0  # re-read the table at least this often (clock changes, missed wakes)
_WATCH_RETRY_S = 1.0  # a watcher that could not wait for a job's end looks again after this


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


# Daylight saving, the rules (README "Schedules"): a schedule's slots are wall-clock times
# (`30 1 * * *` is 01:30 on the clock), and each slot fires once, at the first moment the
# clock reads it or later:
# - fall back (01:00-01:59 happens twice): a slot of the repeated hour fires on its first
#   pass only; in the second pass no slot fires, the next is 02:00 (new offset);
# - spring forward (02:00-02:59 never happens): a skipped slot fires at the jump (03:00
#   new time); all the slots skipped, and a 03:00 slot, make that one fire.
# Fire times strictly increase: the next fire is always after `after`, so a loop that
# fires and asks again never fires a slot twice nor spins.


def next_fire(expr: str, tz: str | None, after: float) -> float:
    """The first fire time of `expr` strictly after `after` (host's local time unless `tz`)."""
    return next_fire_in(expr, ZoneInfo(tz) if tz else None, after)


def next_fire_in(expr: str, zone: tzinfo | None, after: float) -> float:
    """The first fire time of `expr` strictly after `after` in `zone` (None: local time).

    Pure: no clock is read. See the rules above.
    """
    start = _wall(after, zone)
    if start.fold:
        # The second pass of a repeated hour: its slots fired on the first pass. Go on from
        # the end of the repetition, the first instant whose clock reading is not repeated.
        rerun = _instant(start, zone, 1) - _instant(start, zone, 0)
        end = _first_true(
            math.floor(after), math.ceil(after + rerun), lambda s: not _wall(s, zone).fold
        )
        start = _wall(end, zone)
    # A second early: the slot of the current second is a candidate too (it is kept only if
    # it fires after `after`), whatever the rounding of `after` to microseconds.
    slots = croniter(expr, start.replace(fold=0) - timedelta(seconds=1))
    for _ in range(_MAX_STEPS):
        fire_at = _slot_instant(slots.get_next(datetime), zone)
        if fire_at > after:
            return fire_at
    raise RuntimeError(f"no fire of {expr!r} found after {after}")  # pragma: no cover


_MAX_STEPS = 16  # candidates from a second before `after`: two suffice, a few are spare


def _wall(t: float, zone: tzinfo | None) -> datetime:
    """The clock reading at instant `t`, naive; fold=1 in the second pass of a repeated hour."""
    if zone is None:
        return datetime.fromtimestamp(t)
    return datetime.fromtimestamp(t, zone).replace(tzinfo=None)


def _instant(wall: datetime, zone: tzinfo | None, fold: int) -> float:
    """The instant of a clock reading; a repeated one by `fold`; a skipped one as PEP 495 says."""
    return wall.replace(tzinfo=zone, fold=fold).timestamp()


def _slot_instant(slot: datetime, zone: tzinfo | None) -> float:
    """When a wall-clock slot fires: the first instant the clock reads `slot` or later."""
    first, second = _instant(slot, zone, 0), _instant(slot, zone, 1)
    if first <= second:  # an ordinary time (equal), or a repeated one: its first pass
        return first
    # Skipped by a jump forward (PEP 495 reads it with the offset before the jump, `first`,
    # or after it, `second`): the jump is between, the first second whose clock is past it.
    jump = _first_true(math.floor(second), math.ceil(first), lambda s: _wall(s, zone) >= slot)
    return float(jump)


def _first_true(lo: int, hi: int, pred: Callable[[int], bool]) -> int:
    """The least integer in (lo, hi] where `pred` holds; `pred` is monotone and holds at hi."""
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if pred(mid):
            hi = mid
        else:
            lo = mid
    return hi


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
    """Fires due schedules; sleeps until the next one (no polling in between).

    overlap "queue": a fire that comes while the previous fire's job or run is still
    queued or running (or while older fires wait) is not submitted but counted on the
    schedule (`queued`, in the fire's own transaction). Each pass submits the next queued
    fire of every schedule whose last fire is over, in its own guarded transaction; while
    one waits, a watcher awaits the end of the jobs it waits for and wakes the loop. So a
    schedule's runs never overlap, whatever their jobs, and every fire runs, in order.
    """

    def __init__(self, app: App, clock: Callable[[], float] = now) -> None:
        self.app = app
        self.store = app.store
        self.clock = clock  # the wall clock; tests give a fixed one
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._watchers: dict[str, asyncio.Task[None]] = {}

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
        watchers = list(self._watchers.values())
        for task in watchers:
            task.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)

    def wake(self) -> None:
        """Schedules changed: look again."""
        self._wake.set()

    async def _loop(self) -> None:
        # A flag, not only cancel(): in 3.11 a wait_for whose inner wait has just
        # finished can swallow the cancellation, and the loop would go on.
        while not self._stopping:
            try:
                await self.run_pass()
                nxt = await self.store.schedules.next_due()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("scheduler pass failed")
                nxt = self.clock() + 5.0
            # Every fire moved its schedule's next fire past the clock (see `fire`): a due
            # time in the past here is one that came during the pass, not a spin.
            timeout = (
                _MAX_SLEEP_S if nxt is None else min(_MAX_SLEEP_S, max(0.0, nxt - self.clock()))
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()

    async def run_pass(self) -> None:
        """One pass: fire every due schedule, then release the queued fires that may run."""
        for schedule in await self.store.schedules.due(self.clock()):
            await self.fire(schedule)
        for schedule in await self.store.schedules.with_queued():
            await self.release_queued(schedule.name)

    async def fire(self, schedule: Schedule, *, forced: bool = False) -> dict[str, Any]:
        """Submit the schedule's job or run (unless overlap says skip or queue); record the fire."""
        at = self.clock()
        if forced or schedule.next_fire_at is None:
            next_at = schedule.next_fire_at
        else:
            # From the slot being fired at the earliest: a clock read before it (stepped back)
            # must not give this slot again. So fire times strictly increase.
            next_at = next_fire(schedule.cron, schedule.tz, max(at, schedule.next_fire_at))

        try:
            fired = await self.store.schedules.fire(schedule, at, next_at, forced=forced)
        except HeroError as exc:
            if isinstance(exc, StorageError):
                raise  # the database, not the target: the slot stays due, the pass is retried
            # The target was valid at set time but is not now (its action was deleted, say):
            # record the slot as skipped, so it is not evaluated again and again.
            log.warning(
                "schedule fire failed", extra={"schedule": schedule.name, "error": str(exc)}
            )
            await self.store.schedules.record_skipped(schedule, at, next_at, forced=forced)
            return {"fired": False, "error": str(exc)}
        if fired is None:
            return {"fired": False}  # another fire of the slot won, or the schedule is gone
        job_id, run_id, held = fired
        if job_id is not None or run_id is not None:
            self.app.wake_jobs()
        if held == "queued":
            self.wake()  # the loop's pass watches the previous fire's jobs
        return {
            "fired": held is None,
            "skipped": held == "skipped",
            "queued": held == "queued",
            "job_id": job_id,
            "run_id": run_id,
        }

    async def release_queued(self, name: str) -> int:
        """Submit the queued fires of schedule `name` that may run now; how many were submitted.

        One at a time, each in its own transaction, and only while the last fire's jobs are
        all over: the one just submitted is active, so that is at most one per previous end.
        While fires wait, a watcher wakes the loop when the jobs they wait for end.
        """
        released = 0
        while True:
            try:
                submitted, waiting_for = await self.store.schedules.release_one(name)
            except StorageError:
                raise  # the database, not the target: the fire stays queued, the pass is retried
            except HeroError as exc:
                log.warning(
                    "queued schedule fire failed", extra={"schedule": name, "error": str(exc)}
                )
                dropped = await self.store.schedules.drop_queued(name)
                if dropped:
                    continue
                return released
            if not submitted:
                if waiting_for:
                    self._watch(name, waiting_for)
                return released
            released += 1
            self.app.wake_jobs()

    def _watch(self, name: str, job_ids: list[int]) -> None:
        """Wake the loop when these jobs (a queued fire's predecessor) have all ended."""
        if name in self._watchers or self._stopping:
            return
        self._watchers[name] = asyncio.get_running_loop().create_task(
            self._wait_then_wake(name, job_ids), name=f"scheduler-watch-{name}"
        )

    async def _wait_then_wake(self, name: str, job_ids: list[int]) -> None:
        try:
            for job_id in job_ids:
                if not await self._wait_job(job_id):
                    # No executor, or it is stopping, or a long job: look again later.
                    await asyncio.sleep(_WATCH_RETRY_S)
                    break
        except Exception:
            log.exception("watching a schedule's jobs failed", extra={"schedule": name})
            await asyncio.sleep(_WATCH_RETRY_S)
        finally:
            self._watchers.pop(name, None)
            self.wake()

    async def _wait_job(self, job_id: int) -> bool:
        """Wait (bounded) until job `job_id` is terminal; whether it is."""
        if self.app.executor is None:
            return False
        try:
            job = await self.app.executor.wait(job_id, _MAX_SLEEP_S)
        except NotFound:
            return True  # deleted (wipe, clean): over
        return job.status in TERMINAL_JOB_STATES
