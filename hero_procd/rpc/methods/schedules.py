"""schedule.*: cron expressions that submit a job or a run."""

from __future__ import annotations

import asyncio
from typing import Any

from hero_procd.app import App
from hero_procd.engine.scheduler import check_cron, check_target, check_timezone, next_fire
from hero_procd.errors import InvalidParams, InvalidState
from hero_procd.model import now
from hero_procd.params import Params
from hero_procd.rpc.registry import rpc

OVERLAP = ("skip", "queue", "allow")


@rpc("schedule.set")
async def schedule_set(app: App, p: Params) -> dict[str, Any]:
    """Create or replace a schedule; a bad cron expression or timezone is refused here, once."""
    name = p.req_text("name", name_like=True)
    cron = p.req_text("cron")
    tz = p.text("timezone")
    job = p.raw("job")
    run = p.raw("run")
    overlap = p.choice("overlap", OVERLAP, default="skip") or "skip"
    paused = bool(p.boolean("paused", default=False))
    p.finish()
    if (job is None) == (run is None):
        raise InvalidParams("job", "give exactly one of job or run")
    check_cron(cron)
    # The first check reads the host's zone list (~30 ms of files): not on the event loop.
    await asyncio.to_thread(check_timezone, tz)
    target = {"job": job} if job is not None else {"run": run}
    check_target(target)
    next_at = None if paused else next_fire(cron, tz, now())
    schedule = await app.store.schedules.upsert(name, cron, tz, target, overlap, paused, next_at)
    if app.scheduler is not None:
        app.scheduler.wake()
    return schedule.to_dict()


@rpc("schedule.get")
async def schedule_get(app: App, p: Params) -> dict[str, Any]:
    """One schedule with its next and last fire."""
    name = p.req_text("name")
    p.finish()
    return (await app.store.schedules.get(name)).to_dict()


@rpc("schedule.list")
async def schedule_list(app: App, p: Params) -> dict[str, Any]:
    """Every schedule with its next and last fire."""
    p.finish()
    return {"schedules": [s.to_dict() for s in await app.store.schedules.list()]}


@rpc("schedule.delete")
async def schedule_delete(app: App, p: Params) -> dict[str, Any]:
    """Delete a schedule (what it submitted stays)."""
    name = p.req_text("name")
    p.finish()
    deleted = await app.store.schedules.delete(name)
    # Earlier versions ran an overlap-queue schedule's jobs in group `schedule:<name>`.
    group = f"schedule:{name}"
    if deleted and await app.store.groups.delete(group) and app.executor is not None:
        app.executor.group_limits.pop(group, None)
    return {"deleted": deleted}


@rpc("schedule.pause")
async def schedule_pause(app: App, p: Params) -> dict[str, Any]:
    """Stop firing until resumed."""
    name = p.req_text("name")
    p.finish()
    await app.store.schedules.get(name)
    await app.store.schedules.set_paused(name, True, None)
    return (await app.store.schedules.get(name)).to_dict()


@rpc("schedule.resume")
async def schedule_resume(app: App, p: Params) -> dict[str, Any]:
    """Fire again from the next slot after now (missed slots while paused are not fired)."""
    name = p.req_text("name")
    p.finish()
    schedule = await app.store.schedules.get(name)
    await app.store.schedules.set_paused(name, False, next_fire(schedule.cron, schedule.tz, now()))
    if app.scheduler is not None:
        app.scheduler.wake()  # its fires, and those queued while it was paused
    return (await app.store.schedules.get(name)).to_dict()


@rpc("schedule.trigger")
async def schedule_trigger(app: App, p: Params) -> dict[str, Any]:
    """Fire now, once, without moving the next scheduled fire."""
    name = p.req_text("name")
    p.finish()
    schedule = await app.store.schedules.get(name)
    if app.scheduler is None:
        raise InvalidState("the scheduler is not running")
    return await app.scheduler.fire(schedule, forced=True)
