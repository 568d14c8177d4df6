"""Schedules across daylight-saving changes, with a fixed clock, in America/New_York.

The rules (README "Schedules"): fire times strictly increase; each wall-clock
slot fires once; a slot of a repeated hour (fall back) fires on the hour's first
pass only; slots that spring-forward skips fire once, at the moment of the jump
(03:00 new time), together with a slot at that moment if there is one.

Each case runs twice: with `timezone` given, and without one in a host whose
local zone is America/New_York (TZ set for the test's process).
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from hero_procd.app import App
from hero_procd.config import Config
from hero_procd.engine.scheduler import Scheduler, next_fire
from hero_procd.store import Store
from tests.conftest import StoreRunner

NY = ZoneInfo("America/New_York")
FALL_BACK = (2026, 11, 1)  # 02:00 EDT -> 01:00 EST: 01:00-01:59 happens twice
SPRING_FORWARD = (2026, 3, 8)  # 02:00 EST -> 03:00 EDT: 02:00-02:59 never happens
HOUR = 3600.0


@pytest.fixture(params=["timezone", "host"])
def tz(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """`America/New_York` given as the schedule's timezone, or as the host's zone (TZ)."""
    if request.param == "timezone":
        yield "America/New_York"
        return
    old = os.environ.get("TZ")
    os.environ["TZ"] = "America/New_York"
    time.tzset()
    try:
        yield None
    finally:
        if old is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = old
        time.tzset()


def at(day: tuple[int, int, int], hh: int, mm: int = 0, ss: int = 0, *, fold: int = 0) -> float:
    """The instant New York's clocks read `hh:mm:ss` on `day` (fold=1: the repeated pass)."""
    return datetime(*day, hh, mm, ss, tzinfo=NY, fold=fold).timestamp()


def wall(t: float) -> str:
    """New York's clock reading at `t`, with its offset: `01:30-04:00`."""
    return datetime.fromtimestamp(t, NY).strftime("%H:%M:%S%z")


def drive(expr: str, tz: str | None, start: float, end: float, lag: float = 0.004) -> list[float]:
    """Fire times in (start, end) as the scheduler chains them: each next from its fire (+lag)."""
    fires: list[float] = []
    t = start
    for _ in range(10_000):
        nxt = next_fire(expr, tz, t)
        assert nxt > t, f"next fire {wall(nxt)} is not after {wall(t)}: the scheduler would spin"
        if nxt >= end:
            return fires
        fires.append(nxt)
        t = nxt + lag
    raise AssertionError("more than 10,000 fires")


def slots(day: tuple[int, int, int], every_min: int, first: int, last: int) -> list[str]:
    """`HH:MM` of every `every_min` minutes from hour `first` to before hour `last`."""
    start = datetime(*day, first)
    n = (last - first) * 60 // every_min
    return [(start + timedelta(minutes=every_min * i)).strftime("%H:%M") for i in range(n)]


def test_fall_back_every_15_minutes_fires_each_wall_slot_once(tz: str | None) -> None:
    """*/15 over the fall-back night: 00:15..03:45 once each; the repeated hour fires no slot."""
    fires = drive("*/15 * * * *", tz, at(FALL_BACK, 0), at(FALL_BACK, 4))
    assert [wall(t)[:5] for t in fires] == slots(FALL_BACK, 15, 0, 4)[1:]
    # 01:00-01:45 fire on the first pass (EDT); the next is 02:00 EST, 75 minutes later.
    assert [wall(t) for t in fires[3:8]] == [
        "01:00:00-0400",
        "01:15:00-0400",
        "01:30:00-0400",
        "01:45:00-0400",
        "02:00:00-0500",
    ]
    assert fires[7] - fires[6] == 75 * 60


@pytest.mark.parametrize("fold", [0, 1])
def test_fall_back_any_now_gives_the_next_unfired_slot(tz: str | None, fold: int) -> None:
    """Whatever `now` is in the night (both passes of 01:xx), the next fire is the next slot."""
    fires = drive("*/15 * * * *", tz, at(FALL_BACK, 0), at(FALL_BACK, 4))
    for minute in range(60):
        for second in (0, 7, 59):
            now = at(FALL_BACK, 1, minute, second, fold=fold)
            nxt = next_fire("*/15 * * * *", tz, now)
            assert nxt > now
            assert nxt == min(f for f in fires if f > now), (wall(now), wall(nxt))
    # In the repeated pass every 01:xx slot has fired already: the next is 02:00 EST.
    assert wall(next_fire("*/15 * * * *", tz, at(FALL_BACK, 1, 20, fold=1))) == "02:00:00-0500"
    assert wall(next_fire("*/15 * * * *", tz, at(FALL_BACK, 1, 20, fold=0))) == "01:30:00-0400"


def test_fall_back_daily_at_1_30_fires_once(tz: str | None) -> None:
    """30 1 * * * fires at 01:30 EDT on the fall-back night, not again at 01:30 EST."""
    fires = drive("30 1 * * *", tz, at((2026, 10, 31), 0), at((2026, 11, 3), 0))
    assert [datetime.fromtimestamp(t, NY).isoformat() for t in fires] == [
        "2026-10-31T01:30:00-04:00",
        "2026-11-01T01:30:00-04:00",
        "2026-11-02T01:30:00-05:00",
    ]
    # A daemon that comes up (or whose clock is read) in the repeated hour does not fire it.
    again = next_fire("30 1 * * *", tz, at(FALL_BACK, 1, 30, 0, fold=1) - 1)
    assert datetime.fromtimestamp(again, NY).isoformat() == "2026-11-02T01:30:00-05:00"


def test_fall_back_every_second_crosses_the_fold(tz: str | None) -> None:
    """A seconds schedule: 01:59:59 EDT, then 02:00:00 EST; none in the repeated hour."""
    fires = drive("* * * * * *", tz, at(FALL_BACK, 1, 59, 57), at(FALL_BACK, 2, 0, 2))
    assert [wall(t) for t in fires] == [
        "01:59:58-0400",
        "01:59:59-0400",
        "02:00:00-0500",
        "02:00:01-0500",
    ]
    inside = at(FALL_BACK, 1, 0, 0, fold=1) + 0.5
    assert wall(next_fire("* * * * * *", tz, inside)) == "02:00:00-0500"


def test_spring_forward_every_15_minutes_skipped_slots_fire_once_at_the_jump(
    tz: str | None,
) -> None:
    """*/15 over the spring-forward night: 02:00-02:45 never happen; one fire at 03:00 EDT."""
    fires = drive("*/15 * * * *", tz, at(SPRING_FORWARD, 0), at(SPRING_FORWARD, 4))
    expected = [s for s in slots(SPRING_FORWARD, 15, 0, 4)[1:] if not s.startswith("02:")]
    assert [wall(t)[:5] for t in fires] == expected
    assert [wall(t) for t in fires[6:9]] == ["01:45:00-0500", "03:00:00-0400", "03:15:00-0400"]
    assert fires[7] - fires[6] == 15 * 60  # 01:45 EST to 03:00 EDT is a quarter of an hour


@pytest.mark.parametrize(("expr", "jump_fires"), [("30 2 * * *", 1), ("0 2 * * *", 1)])
def test_spring_forward_daily_in_the_skipped_hour_fires_at_the_jump(
    tz: str | None, expr: str, jump_fires: int
) -> None:
    """A daily 02:xx job runs once on the spring-forward day, at 03:00 EDT (as cronie does)."""
    fires = drive(expr, tz, at((2026, 3, 7), 0), at((2026, 3, 10), 0))
    hhmm = expr.split()[1].zfill(2) + ":" + expr.split()[0].zfill(2)
    assert [datetime.fromtimestamp(t, NY).isoformat() for t in fires] == [
        f"2026-03-07T{hhmm}:00-05:00",
        "2026-03-08T03:00:00-04:00",
        f"2026-03-09T{hhmm}:00-04:00",
    ]
    assert sum(datetime.fromtimestamp(t, NY).date().day == 8 for t in fires) == jump_fires


def test_spring_forward_daily_at_3_fires_once(tz: str | None) -> None:
    """0 3 * * * is not doubled by the skipped slots that also fire at 03:00."""
    fires = drive("0 3 * * *", tz, at((2026, 3, 7), 0), at((2026, 3, 10), 0))
    assert [wall(t) for t in fires] == ["03:00:00-0500", "03:00:00-0400", "03:00:00-0400"]


def test_spring_forward_any_now_gives_the_next_slot(tz: str | None) -> None:
    """Around the jump, every `now` gets a next fire after it, from the chained sequence."""
    fires = drive("*/15 * * * *", tz, at(SPRING_FORWARD, 0), at(SPRING_FORWARD, 5))
    jump = at(SPRING_FORWARD, 3)
    for offset in range(-3600, 3600, 37):
        now = jump + offset + 0.25
        nxt = next_fire("*/15 * * * *", tz, now)
        assert nxt == min(f for f in fires if f > now), (wall(now), wall(nxt))


def test_other_zone_and_no_dst() -> None:
    """A 30-minute change (Lord Howe) and UTC keep the same rules."""
    lh = ZoneInfo("Australia/Lord_Howe")
    for day in ((2026, 4, 5), (2026, 10, 4)):  # back at 02:00 to 01:30; forward 02:00 to 02:30
        start = datetime(*day, 0, tzinfo=lh).timestamp()
        fires = drive("*/10 * * * *", "Australia/Lord_Howe", start, start + 5 * HOUR)
        walls = [datetime.fromtimestamp(t, lh).strftime("%H:%M") for t in fires]
        assert len(walls) == len(set(walls)), walls
        assert walls == sorted(walls)
    utc = drive("*/15 * * * *", "UTC", 0.0, 4 * HOUR)
    assert utc == [900.0 * i for i in range(1, 16)]


# -- the scheduler itself, on a real store, with a fixed clock ------------------------------


class FakeClock:
    """A clock the test moves; the scheduler reads it instead of time.time()."""

    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


async def _night(
    store: Store, db_path: Path, tz: str | None, expr: str, start: float, end: float
) -> tuple[list[float], dict[str, Any]]:
    """Run the scheduler's passes from `start` to `end`, the clock jumping to each due time."""
    clock = FakeClock(start)
    app = App(config=Config(db_path=db_path, socket_path=db_path.with_suffix(".sock")), store=store,
              openrpc={})  # fmt: skip
    scheduler = Scheduler(app, clock=clock)
    target = {"job": {"command": ["true"], "tags": ["dst"]}}
    await store.schedules.upsert(
        "s", expr, tz, target, "allow", False, next_fire(expr, tz, clock())
    )
    fired: list[float] = []  # the due time of each pass that submitted a job
    jobs = 0
    while True:
        due = await store.schedules.next_due()
        assert due is not None and due > clock.t, "a due time not after the last pass: a spin"
        if due >= end:
            break
        clock.t = due + 0.003
        await scheduler.run_pass()
        row = await store.pool.fetch_one("SELECT count(*) FROM jobs")
        assert row is not None
        assert row[0] - jobs <= 1, f"{row[0] - jobs} jobs in one pass at {wall(due)}"
        if row[0] > jobs:
            fired.append(due)
        jobs = row[0]
        assert len(fired) < 1000
    return fired, (await store.schedules.get("s")).to_dict()


def test_scheduler_passes_over_the_fall_back_night(
    tz: str | None, run_store: StoreRunner, db_path: Path
) -> None:
    """The real fire path over the night: one job per */15 slot, none in the repeated hour."""
    created, s = run_store(
        lambda store: _night(store, db_path, tz, "*/15 * * * *", at(FALL_BACK, 0), at(FALL_BACK, 4))
    )
    assert [wall(t)[:5] for t in created] == slots(FALL_BACK, 15, 0, 4)[1:]
    assert s["fires"] == len(created) == 15 and s["skipped"] == 0
    assert wall(s["next_fire_at"]) == "04:00:00-0500"


def test_scheduler_passes_over_the_spring_forward_night(
    tz: str | None, run_store: StoreRunner, db_path: Path
) -> None:
    """The real fire path: 30 2 * * * submits one job on the short night, at 03:00 EDT."""
    created, s = run_store(
        lambda store: _night(
            store, db_path, tz, "30 2 * * *", at((2026, 3, 7), 12), at((2026, 3, 9), 12)
        )
    )
    assert [datetime.fromtimestamp(t, NY).strftime("%d %H:%M%z") for t in created] == [
        "08 03:00-0400",
        "09 02:30-0400",
    ]
    assert s["fires"] == 2


def test_fire_never_goes_back_when_the_clock_does(run_store: StoreRunner, db_path: Path) -> None:
    """A pass whose clock reads before the due time (a clock stepped back) still moves forward."""

    async def body(store: Store) -> list[float]:
        clock = FakeClock(at(FALL_BACK, 0))
        app = App(config=Config(db_path=db_path), store=store, openrpc={})
        scheduler = Scheduler(app, clock=clock)
        nxt = next_fire("*/15 * * * *", "America/New_York", clock())
        await store.schedules.upsert(
            "s", "*/15 * * * *", "America/New_York", {"job": {"command": ["true"]}}, "allow",
            False, nxt,
        )  # fmt: skip
        seen = [nxt]
        for _ in range(3):
            schedule = await store.schedules.get("s")
            clock.t = schedule.next_fire_at - 600  # type: ignore[operator]
            await scheduler.fire(schedule)
            seen.append((await store.schedules.get("s")).next_fire_at)  # type: ignore[arg-type]
        return seen

    seen = run_store(body)
    assert all(b > a for a, b in itertools.pairwise(seen)), [wall(t) for t in seen]


def test_run_pass_is_cheap_to_call_with_nothing_due(run_store: StoreRunner, db_path: Path) -> None:
    """A pass with nothing due submits nothing (the loop's sleep comes from next_due)."""

    async def body(store: Store) -> int:
        app = App(config=Config(db_path=db_path), store=store, openrpc={})
        scheduler = Scheduler(app, clock=FakeClock(at(FALL_BACK, 0)))
        await store.schedules.upsert(
            "s", "30 1 * * *", "America/New_York", {"job": {"command": ["true"]}}, "allow",
            False, at(FALL_BACK, 1, 30),
        )  # fmt: skip
        await scheduler.run_pass()
        row = await store.pool.fetch_one("SELECT count(*) FROM jobs")
        assert row is not None
        return int(row[0])

    assert run_store(body) == 0


# -- overlap "queue": a fire waits until the previous fire's run has ended -----------------


def test_overlap_queue_holds_a_run_until_the_previous_run_ends(
    run_store: StoreRunner, db_path: Path
) -> None:
    """Fires during a run are counted as queued; each is submitted once the run before is over."""
    run = {
        "jobs": [
            {"key": "a", "command": ["true"]},
            {"key": "b", "command": ["true"]},
            {"key": "c", "command": ["true"], "depends_on": ["a"]},
        ]
    }

    async def body(store: Store) -> list[tuple[int, int, int]]:
        clock = FakeClock(at(FALL_BACK, 12))
        app = App(config=Config(db_path=db_path), store=store, openrpc={})
        scheduler = Scheduler(app, clock=clock)
        await store.schedules.upsert(
            "q", "* * * * *", None, {"run": run}, "queue", False, next_fire("* * * * *", None,
            clock()),
        )  # fmt: skip
        seen: list[tuple[int, int, int]] = []

        async def state() -> None:
            s = await store.schedules.get("q")
            runs = await store.runs.list()
            seen.append((s.fires, s.queued, len(runs)))
            assert s.last_run_id == runs[-1].id

        async def next_slot() -> None:
            s = await store.schedules.get("q")
            assert s.next_fire_at is not None
            clock.t = s.next_fire_at + 0.003
            await scheduler.run_pass()
            await state()

        async def job_ids(run_id: int) -> dict[str, int]:
            _, jobs, _ = await store.runs.get(run_id)
            return {j.key or "": j.id for j in jobs}

        await next_slot()  # run 1 submitted
        await next_slot()  # run 1 still queued: this fire waits
        await next_slot()  # and this one
        first = await job_ids((await store.runs.list())[0].id)
        await store.jobs.cancel(first["a"])  # c is skipped with it; b still queued
        await scheduler.run_pass()
        await state()
        await store.jobs.cancel(first["b"])  # run 1 is over: one queued fire goes
        await scheduler.run_pass()
        await state()
        await scheduler.run_pass()  # run 2 is active: the other one waits
        await state()
        # A paused schedule keeps its queued fires until it is resumed.
        await store.schedules.set_paused("q", True, None)
        await store.jobs.cancel_run((await store.runs.list())[-1].id)
        await scheduler.run_pass()
        await state()
        await store.schedules.set_paused("q", False, next_fire("* * * * *", None, clock()))
        await scheduler.run_pass()
        await state()
        await scheduler.stop()
        return seen

    # (fires, queued, runs) after each step
    assert run_store(body) == [
        (1, 0, 1),
        (1, 1, 1),
        (1, 2, 1),
        (1, 2, 1),
        (2, 1, 2),
        (2, 1, 2),
        (2, 1, 2),
        (3, 0, 3),
    ]


def test_overlap_queue_trigger_and_replace(run_store: StoreRunner, db_path: Path) -> None:
    """trigger queues behind an active job too; set with another overlap drops queued fires."""

    async def body(store: Store) -> list[dict[str, Any]]:
        app = App(config=Config(db_path=db_path), store=store, openrpc={})
        scheduler = Scheduler(app, clock=FakeClock(at(FALL_BACK, 12)))
        target = {"job": {"command": ["true"], "group": "mine"}}
        s = await store.schedules.upsert("q", "0 0 1 1 *", None, target, "queue", False, None)
        out = [await scheduler.fire(s, forced=True), await scheduler.fire(s, forced=True)]
        queued = await store.schedules.get("q")
        assert queued.queued == 1 and queued.fires == 1
        again = await store.schedules.upsert("q", "0 0 1 1 *", None, target, "queue", False, None)
        assert again.queued == 1, "replacing a queue schedule keeps its queued fires"
        skip = await store.schedules.upsert("q", "0 0 1 1 *", None, target, "skip", False, None)
        assert skip.queued == 0
        await scheduler.stop()
        return out

    first, second = run_store(body)
    assert first["fired"] is True and first["job_id"] is not None and first["queued"] is False
    assert second == {
        "fired": False,
        "skipped": False,
        "queued": True,
        "job_id": None,
        "run_id": None,
    }
