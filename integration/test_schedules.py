"""Cron schedules over the real socket: fire rate, restarts, catch-up, pause, trigger, overlap."""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import sqlite3
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from hero_procd.client import Client
from hero_procd.errors import INVALID_PARAMS, INVALID_STATE, NOT_FOUND, HeroError
from integration.daemon_proc import DaemonProcess
from integration.helpers import DEADLINE_S, finish, jobs_by_key, list_jobs, run_done, wait_for

EVERY_SECOND = "* * * * * *"
EVERY_4_SECONDS = "* * * * * */4"  # 4 divides 60: its slots are floor(t / 4) of the epoch
ONCE_A_YEAR = "0 0 1 1 *"


def fired_after(c: Client, name: str, fires: int) -> dict[str, Any]:
    """Wait until schedule `name` has fired more than `fires` times; the schedule."""

    def probe() -> dict[str, Any] | None:
        s: dict[str, Any] = c.call("schedule.get", name=name)
        return s if s["fires"] > fires else None

    return wait_for(probe, f"schedule {name} to fire more than {fires} times")


def seconds_crossed(start: float, end: float, every: float = 1.0) -> int:
    """How many slots of `every` seconds begin in (start, end]."""
    return math.floor(end / every) - math.floor(start / every)


def assert_one_fire_per_slot(jobs: list[dict[str, Any]], every: float) -> None:
    """No two jobs were created within the same slot of `every` seconds."""
    slots = [math.floor(j["created_at"] / every) for j in jobs]
    doubles = sorted({s for s in slots if slots.count(s) > 1})
    created = [round(j["created_at"], 3) for j in jobs]
    assert not doubles, f"two fires in one {every} s slot {[d * every for d in doubles]}: {created}"


def intervals_overlap(jobs: list[dict[str, Any]]) -> bool:
    """Whether any two of these jobs were running at the same time."""
    spans = sorted(
        (j["started_at"], j["finished_at"] if j["finished_at"] is not None else math.inf)
        for j in jobs
        if j["started_at"] is not None
    )
    return any(nxt[0] < prev[1] for prev, nxt in itertools.pairwise(spans))


def cancel_all(c: Client, tag: str) -> None:
    """Cancel every queued or running job with `tag` and wait until they are terminal."""
    for job in reversed(list_jobs(c, tag=tag)):  # the queued first: none starts on a freed slot
        if job["status"] in ("queued", "running"):
            try:
                c.call("job.cancel", id=job["id"])
            except HeroError as exc:  # it ended on its own meanwhile
                assert exc.code == INVALID_STATE, exc
    for job in list_jobs(c, tag=tag):
        finish(c, job["id"])


@pytest.fixture
def client(daemon: DaemonProcess) -> Iterator[Client]:
    """A client of the test's daemon."""
    with daemon.client() as c:
        yield c


def test_every_second_fires_once_a_second_then_delete_stops_it(client: Client) -> None:
    """Fires ≈ elapsed seconds, one job per fire; list shows the fires; delete stops them."""
    c = client
    t_set = time.time()
    s = c.call(
        "schedule.set", name="tick", cron=EVERY_SECOND, job={"command": ["true"], "tags": ["tick"]}
    )
    assert s["overlap"] == "skip" and s["fires"] == 0 and s["last_fire_at"] is None
    assert t_set < s["next_fire_at"] <= math.floor(t_set) + 1.001
    time.sleep(4.2)

    (listed,) = c.call("schedule.list")["schedules"]
    t_list = time.time()
    assert listed["name"] == "tick" and listed["job"]["tags"] == ["tick"]
    assert listed["fires"] >= 3, listed
    assert t_list - 2.5 < listed["last_fire_at"] <= t_list, listed
    assert t_list - 2.5 < listed["next_fire_at"] <= t_list + 1.01, listed
    assert listed["next_fire_at"] > listed["last_fire_at"]
    assert listed["last_job_id"] in {j["id"] for j in list_jobs(c, tag="tick")}

    assert c.call("schedule.delete", name="tick") == {"deleted": 1}
    t_deleted = time.time()
    jobs = list_jobs(c, tag="tick")
    expected = seconds_crossed(t_set, t_deleted)
    assert abs(len(jobs) - expected) <= 1, (len(jobs), expected)
    assert_one_fire_per_slot(jobs, 1.0)
    with pytest.raises(HeroError) as err:
        c.call("schedule.get", name="tick")
    assert err.value.code == NOT_FOUND

    time.sleep(2.2)
    assert len(list_jobs(c, tag="tick")) == len(jobs), "a deleted schedule fired again"
    for job in jobs:
        assert c.call("job.wait", id=job["id"], timeout_s=DEADLINE_S)["status"] == "succeeded"
    counts = c.call("system.info")["counts"]
    assert counts["actions"] == 0, counts  # a fire creates no action row
    assert counts["schedules"] == 0 and counts["jobs"] == len(jobs) and counts["runs"] == 0


def test_restart_neither_repeats_nor_doubles_a_fire(workdir: Path) -> None:
    """SIGTERM and an immediate restart on the same database: at most one fire per slot."""
    daemon = DaemonProcess(workdir).start()
    try:
        with daemon.client() as c:
            t_set = time.time()
            c.call(
                "schedule.set",
                name="tick",
                cron=EVERY_SECOND,
                job={"command": ["true"], "tags": ["tick"]},
            )
            # Slots of 4 s outlast a restart: a fire repeated after it lands in the same slot.
            c.call(
                "schedule.set",
                name="four",
                cron=EVERY_4_SECONDS,
                job={"command": ["true"], "tags": ["four"]},
            )
            fired_after(c, "four", 0)
        t_stop = time.time()
        daemon.stop()  # right after a fire of `four`: its slot has about 4 s left
        daemon.start()
        t_ready = time.time()
        with daemon.client() as c:
            fired_after(c, "four", c.call("schedule.get", name="four")["fires"])
            time.sleep(1.2)
            tick = c.call("schedule.get", name="tick")
            four = c.call("schedule.get", name="four")
            t_end = time.time()
            tick_jobs, four_jobs = list_jobs(c, tag="tick"), list_jobs(c, tag="four")
    finally:
        daemon.stop()
    assert_one_fire_per_slot(tick_jobs, 1.0)
    assert_one_fire_per_slot(four_jobs, 4.0)
    assert any(j["created_at"] >= t_ready for j in tick_jobs), "no fire after the restart"
    # Fires are counted in the same transaction as their job: the counter survives the restart.
    assert tick["fires"] <= len(tick_jobs) <= tick["fires"] + 1, (tick, len(tick_jobs))
    assert four["fires"] <= len(four_jobs) <= four["fires"] + 1, (four, len(four_jobs))
    assert len(tick_jobs) <= seconds_crossed(t_set, t_end) + 1
    # Down for (t_ready - t_stop): the slots missed then collapse into one catch-up fire.
    missed = seconds_crossed(t_stop, t_ready)
    assert len(tick_jobs) >= seconds_crossed(t_set, t_end) - missed - 1, (len(tick_jobs), missed)


def test_catch_up_after_downtime_fires_once(workdir: Path) -> None:
    """Ten missed per-minute slots give one fire on restart, and the next fire is in the future."""
    daemon = DaemonProcess(workdir).start()
    try:
        with daemon.client() as c:
            c.call(
                "schedule.set",
                name="minutely",
                cron="* * * * *",
                overlap="allow",  # so that every wrong extra fire shows as a job
                job={"command": ["true"], "tags": ["m"]},
            )
        daemon.stop()
        with (
            contextlib.closing(sqlite3.connect(daemon.db_path)) as db,
            db,
        ):  # the daemon is down: no other writer
            (fires_before,) = db.execute("SELECT fires FROM schedules").fetchone()
            (jobs_before,) = db.execute("SELECT count(*) FROM jobs").fetchone()
            changed = db.execute(
                "UPDATE schedules SET next_fire_at = ? WHERE name = 'minutely'",
                (time.time() - 600,),
            ).rowcount
        db.close()
        assert changed == 1 and fires_before == jobs_before
        t_restart = time.time()
        daemon.start()
        with daemon.client() as c:
            s = fired_after(c, "minutely", fires_before)
            time.sleep(1.0)  # room for any wrong extra catch-up fires to show
            s = c.call("schedule.get", name="minutely")
            t_check = time.time()
            jobs = list_jobs(c, tag="m")
    finally:
        daemon.stop()
    # A minute may really begin meanwhile: after the catch-up fire, that is a second fire.
    natural = seconds_crossed(t_restart, t_check, 60.0)
    assert 1 <= len(jobs) - jobs_before <= 1 + natural, (jobs, natural)
    assert s["fires"] - fires_before == len(jobs) - jobs_before, s
    assert s["skipped"] == 0, s
    assert s["last_fire_at"] >= t_restart
    assert t_check < s["next_fire_at"] <= t_check + 60.0, s
    assert s["last_job_id"] == jobs[-1]["id"]


def test_bad_cron_or_timezone_is_refused_and_nothing_stored(client: Client) -> None:
    """set refuses a bad cron expression, timezone, target or overlap with -32602."""
    c = client
    job = {"command": ["true"]}
    bad: list[dict[str, Any]] = [
        {"cron": "61 * * * *", "job": job},
        {"cron": "not cron", "job": job},
        {"cron": "", "job": job},
        {"cron": "   ", "job": job},
        {"cron": "0 0 30 2 *", "job": job},  # February 30th never comes
        {"cron": "* * * * *", "timezone": "Mars/Olympus", "job": job},
        {"cron": "* * * * *", "timezone": "", "job": job},
        {"cron": "* * * * *", "job": {"tags": ["no command"]}},
        {"cron": "* * * * *", "job": job, "run": {"jobs": [{"key": "a", "command": ["true"]}]}},
        {"cron": "* * * * *"},
        {"cron": "* * * * *", "run": {"jobs": []}},
        {
            "cron": "* * * * *",
            "run": {"jobs": [{"key": "a", "command": ["true"], "depends_on": ["a"]}]},
        },
        {"cron": "* * * * *", "job": job, "overlap": "sometimes"},
    ]
    for i, params in enumerate(bad):
        with pytest.raises(HeroError) as err:
            c.call("schedule.set", name=f"bad{i}", **params)
        assert err.value.code == INVALID_PARAMS, (params, err.value)
    assert c.call("schedule.list") == {"schedules": []}

    good = c.call("schedule.set", name="good", cron=ONCE_A_YEAR, timezone="UTC", job=job)
    for params in bad[:7]:
        with pytest.raises(HeroError) as err:
            c.call("schedule.set", name="good", **params)
        assert err.value.code == INVALID_PARAMS
    assert c.call("schedule.get", name="good") == good, "a refused set changed the schedule"
    assert c.call("system.info")["counts"]["schedules"] == 1
    for method in ("schedule.trigger", "schedule.pause", "schedule.resume", "schedule.get"):
        with pytest.raises(HeroError) as err:
            c.call(method, name="nope")
        assert err.value.code == NOT_FOUND, method
    assert c.call("schedule.delete", name="nope") == {"deleted": 0}


def test_pause_stops_fires_and_resume_restarts_them(client: Client) -> None:
    """No fire while paused (nor of one set paused); resume fires again from the next slot."""
    c = client
    c.call(
        "schedule.set", name="tick", cron=EVERY_SECOND, job={"command": ["true"], "tags": ["tick"]}
    )
    held = c.call(
        "schedule.set",
        name="held",
        cron=EVERY_SECOND,
        paused=True,
        job={"command": ["true"], "tags": ["held"]},
    )
    assert held["paused"] is True and held["next_fire_at"] is None
    fired_after(c, "tick", 0)
    paused = c.call("schedule.pause", name="tick")
    assert paused["paused"] is True and paused["next_fire_at"] is None
    ids = [j["id"] for j in list_jobs(c, tag="tick")]
    time.sleep(2.3)
    assert [j["id"] for j in list_jobs(c, tag="tick")] == ids, "a paused schedule fired"
    assert c.call("schedule.get", name="tick")["fires"] == paused["fires"] == len(ids)
    assert list_jobs(c, tag="held") == [] and c.call("schedule.get", name="held")["fires"] == 0

    t_resume = time.time()
    resumed = c.call("schedule.resume", name="tick")
    assert resumed["paused"] is False
    assert t_resume < resumed["next_fire_at"] <= t_resume + 1.01
    after = fired_after(c, "tick", paused["fires"])
    assert after["last_fire_at"] >= t_resume and after["last_job_id"] not in ids
    assert len(list_jobs(c, tag="tick")) > len(ids)
    c.call("schedule.delete", name="tick")


def test_trigger_fires_now_without_moving_the_next_fire(client: Client) -> None:
    """trigger submits a job at once; next_fire_at stays; overlap skip applies; paused stays."""
    c = client
    s = c.call(
        "schedule.set", name="yearly", cron=ONCE_A_YEAR, job={"command": ["true"], "tags": ["y"]}
    )
    t0 = time.time()
    out = c.call("schedule.trigger", name="yearly")
    assert out["fired"] is True and out["skipped"] is False and out["run_id"] is None
    job = c.call("job.wait", id=out["job_id"], timeout_s=DEADLINE_S)
    assert job["status"] == "succeeded" and job["tags"] == ["y"]
    after = c.call("schedule.get", name="yearly")
    assert after["next_fire_at"] == s["next_fire_at"]
    assert after["fires"] == 1 and after["last_job_id"] == out["job_id"]
    assert after["last_fire_at"] is not None and after["last_fire_at"] >= t0

    c.call("schedule.pause", name="yearly")
    out2 = c.call("schedule.trigger", name="yearly")
    assert out2["fired"] is True and out2["job_id"] != out["job_id"]
    paused = c.call("schedule.get", name="yearly")
    assert paused["paused"] is True and paused["next_fire_at"] is None and paused["fires"] == 2

    # overlap=skip: a second trigger while the first one's job still runs is skipped.
    c.call(
        "schedule.set",
        name="slow",
        cron=ONCE_A_YEAR,
        job={"command": ["sleep", "30"], "tags": ["slow"]},
    )
    first = c.call("schedule.trigger", name="slow")
    assert first["fired"] is True
    second = c.call("schedule.trigger", name="slow")
    assert second["fired"] is False and second["skipped"] is True and second["job_id"] is None
    slow = c.call("schedule.get", name="slow")
    assert slow["fires"] == 1 and slow["skipped"] == 1 and slow["last_job_id"] == first["job_id"]
    assert [j["id"] for j in list_jobs(c, tag="slow")] == [first["job_id"]]
    cancel_all(c, "slow")
    third = c.call("schedule.trigger", name="slow")
    assert third["fired"] is True, "the job is over: overlap skip no longer applies"
    cancel_all(c, "slow")


def test_run_target_submits_a_run_with_its_dependency(client: Client, workdir: Path) -> None:
    """A schedule of a run submits the run's two jobs, the second after the first."""
    c = client
    out = workdir / "order"
    run = {
        "name": "nightly",
        "jobs": [
            {"key": "a", "command": ["sh", "-c", f"sleep 0.2; echo a >> {out}"]},
            {"key": "b", "depends_on": ["a"], "command": ["sh", "-c", f"echo b >> {out}"]},
        ],
    }
    s = c.call("schedule.set", name="runner", cron=EVERY_SECOND, run=run)
    assert s["run"] == run and "job" not in s
    fired = fired_after(c, "runner", 0)
    c.call("schedule.pause", name="runner")
    run_id = fired["last_run_id"]
    assert run_id is not None and fired["last_job_id"] is None
    got = run_done(c, run_id)
    assert got["status"] == "succeeded" and got["name"] == "nightly", got
    by_key = jobs_by_key(got)
    assert sorted(by_key) == ["a", "b"] and by_key["b"]["depends_on"] == ["a"]
    assert by_key["b"]["started_at"] >= by_key["a"]["finished_at"]
    assert c.call("job.get", id=by_key["b"]["id"])["depends_on"] == [by_key["a"]["id"]]
    runs = c.call("run.list")["runs"]
    final = c.call("schedule.get", name="runner")
    assert len(runs) == final["fires"], (runs, final)
    assert out.read_text().splitlines()[:2] == ["a", "b"]
    assert c.call("system.info")["counts"]["actions"] == 0


def test_overlap_skip_queue_and_allow(client: Client) -> None:
    """Every second, jobs of 2.5 s: skip never overlaps and counts skips; queue serialises."""
    c = client
    sleeper = {"command": ["sleep", "2.5"]}
    t_set = time.time()
    for overlap in ("skip", "queue", "allow"):
        c.call(
            "schedule.set",
            name=overlap,
            cron=EVERY_SECOND,
            overlap=overlap,
            job={**sleeper, "tags": [overlap]},
        )
    time.sleep(5.6)
    for overlap in ("skip", "queue", "allow"):
        c.call("schedule.pause", name=overlap)
    t_paused = time.time()
    skip = c.call("schedule.get", name="skip")
    queue = c.call("schedule.get", name="queue")
    allow = c.call("schedule.get", name="allow")
    slots = seconds_crossed(t_set, t_paused)

    skip_jobs = list_jobs(c, tag="skip")
    assert skip["skipped"] >= 2, skip
    assert abs(skip["fires"] + skip["skipped"] - slots) <= 1, (skip, slots)
    assert len(skip_jobs) == skip["fires"] and 1 <= len(skip_jobs) <= 3, skip_jobs
    assert not intervals_overlap(skip_jobs), skip_jobs

    # queue: fires that come while a job runs wait, counted, and run one after another.
    queue_jobs = list_jobs(c, tag="queue")
    assert queue["skipped"] == 0 and len(queue_jobs) == queue["fires"] >= 2, queue
    assert queue["fires"] + queue["queued"] >= slots - 1, (queue, slots)
    assert queue["queued"] >= 1, queue
    assert {j["group"] for j in queue_jobs} == {None}
    assert sum(j["status"] in ("queued", "running") for j in queue_jobs) <= 1, queue_jobs
    assert not intervals_overlap(queue_jobs), queue_jobs

    allow_jobs = list_jobs(c, tag="allow")
    assert allow["skipped"] == 0 and len(allow_jobs) == allow["fires"] >= slots - 1
    assert intervals_overlap(allow_jobs), "allow should let fires run side by side"
    for overlap in ("skip", "queue", "allow"):
        cancel_all(c, overlap)


def run_span(c: Client, run_id: int) -> tuple[float, float, list[dict[str, Any]]]:
    """When a finished run's first job started and its last one finished; its jobs."""
    jobs = list(c.call("run.get", id=run_id)["jobs"])
    started = [j["started_at"] for j in jobs if j["started_at"] is not None]
    finished = [j["finished_at"] for j in jobs if j["finished_at"] is not None]
    return min(started), max(finished), jobs


def test_overlap_queue_serialises_runs(client: Client) -> None:
    """Runs of parallel jobs fired every second: each run starts after the one before ended."""
    c = client
    run = {
        "name": "q",
        "jobs": [
            {"key": "a", "command": ["sleep", "1.2"]},
            {"key": "b", "command": ["sleep", "1.2"]},
            {"key": "c", "depends_on": ["a"], "command": ["true"]},
        ],
    }
    c.call("schedule.set", name="q", cron=EVERY_SECOND, overlap="queue", run=run)

    def queued_two() -> dict[str, Any] | None:
        s: dict[str, Any] = c.call("schedule.get", name="q")
        return s if s["queued"] >= 2 else None

    wait_for(queued_two, "two fires queued behind the first run")
    # No more fires (the same overlap keeps the queued ones): the queue drains, in order.
    c.call("schedule.set", name="q", cron=ONCE_A_YEAR, overlap="queue", run=run)

    def drained() -> dict[str, Any] | None:
        s: dict[str, Any] = c.call("schedule.get", name="q")
        if s["queued"] or s["last_run_id"] is None:
            return None
        return s if c.call("run.get", id=s["last_run_id"])["status"] == "succeeded" else None

    s = wait_for(drained, "the queued runs to run", timeout_s=3 * DEADLINE_S)
    runs = sorted(r["id"] for r in c.call("run.list")["runs"])
    assert len(runs) == s["fires"] >= 3, (runs, s)
    spans = [run_span(c, run_id) for run_id in runs]
    for (_, end, _), (start, _, _) in itertools.pairwise(spans):
        assert start >= end, f"a run started at {start} before the previous one ended at {end}"
    for _, _, jobs in spans:
        assert {j["status"] for j in jobs} == {"succeeded"}, jobs
        a, b = (next(j for j in jobs if j["key"] == k) for k in ("a", "b"))
        assert intervals_overlap([a, b]), "the jobs of one run no longer run side by side"


# -- daylight saving, on the real daemon: its clock set to a night of change -----------------

NY = ZoneInfo("America/New_York")
FALL_BACK = (2026, 11, 1)  # 02:00 EDT -> 01:00 EST
SPRING_FORWARD = (2026, 3, 8)  # 02:00 EST -> 03:00 EDT

SITECUSTOMIZE = '''"""Test hook: the wall clock starts at $HERO_TEST_CLOCK_START, at real speed."""
import os
import time

_real_time = time.time
_offset = float(os.environ["HERO_TEST_CLOCK_START"]) - _real_time()


def _time():
    return _real_time() + _offset


time.time = _time
'''


def ny(day: tuple[int, int, int], hh: int, mm: int, ss: int = 0, *, fold: int = 0) -> float:
    """The instant New York's clocks read `hh:mm:ss` on `day` (fold=1: the repeated pass)."""
    return datetime(*day, hh, mm, ss, tzinfo=NY, fold=fold).timestamp()


def ny_text(t: float) -> str:
    """`2026-11-01T01:30:00-04:00`."""
    return datetime.fromtimestamp(t, NY).isoformat()


@contextlib.contextmanager
def ny_daemon(workdir: Path, clock_start: float) -> Iterator[Client]:
    """A daemon in TZ=America/New_York whose clock reads `clock_start` when it starts."""
    hook = workdir / "clock"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)
    path = os.pathsep.join(p for p in (str(hook), os.environ.get("PYTHONPATH")) if p)
    env = {"TZ": "America/New_York", "PYTHONPATH": path, "HERO_TEST_CLOCK_START": repr(clock_start)}
    daemon = DaemonProcess(workdir, env=env).start()
    try:
        with daemon.client() as c:
            yield c
    finally:
        code = daemon.stop()
        assert code == 0, daemon.log()


def test_dst_repeated_hour_no_storm_no_second_fire(workdir: Path) -> None:
    """Host zone New York, clock in the repeated 01:xx of a fall-back night: nothing refires."""
    with ny_daemon(workdir, ny(FALL_BACK, 1, 14, 40, fold=1)) as c:
        job = {"command": ["true"], "tags": ["dst"]}
        quarter = c.call("schedule.set", name="quarter", cron="*/15 * * * *", overlap="allow",
                         job=job)  # fmt: skip
        daily = c.call("schedule.set", name="daily", cron="30 1 * * *", overlap="allow", job=job)
        # The slots of the repeated hour fired on its first pass: next are 02:00 and tomorrow.
        assert ny_text(quarter["next_fire_at"]) == "2026-11-01T02:00:00-05:00"
        assert ny_text(daily["next_fire_at"]) == "2026-11-02T01:30:00-05:00"
        # Progress to compare with: a schedule in UTC fires every second meanwhile.
        c.call("schedule.set", name="utc", cron=EVERY_SECOND, timezone="UTC",
               job={"command": ["true"], "tags": ["utc"]})  # fmt: skip
        fired_after(c, "utc", 2)
        for name in ("quarter", "daily"):
            s = c.call("schedule.get", name=name)
            assert s["fires"] == 0 and s["last_fire_at"] is None, s
        assert list_jobs(c, tag="dst") == []


def test_dst_fall_back_every_second_crosses_the_fold(workdir: Path) -> None:
    """From 01:59:50 EDT a seconds schedule fires each second to 01:59:59, then at 02:00 EST."""
    with ny_daemon(workdir, ny(FALL_BACK, 1, 59, 50)) as c:
        c.call("schedule.set", name="s", cron=EVERY_SECOND, overlap="allow",
               job={"command": ["true"], "tags": ["s"]})  # fmt: skip
        est_two = ny(FALL_BACK, 2, 0, 0)  # 02:00 happens once: EST

        def crossed() -> dict[str, Any] | None:
            s: dict[str, Any] = c.call("schedule.get", name="s")
            return s if s["next_fire_at"] == est_two else None

        s = wait_for(crossed, "the next fire to be 02:00:00 EST")
        jobs = list_jobs(c, tag="s")
    assert 1 <= s["fires"] == len(jobs) <= 10, (s, jobs)
    assert_one_fire_per_slot(jobs, 1.0)
    repeated = ny(FALL_BACK, 1, 0, 0, fold=1)  # 01:00 EST, the second pass begins
    assert all(j["created_at"] < repeated for j in jobs), [ny_text(j["created_at"]) for j in jobs]
    assert ny_text(s["last_fire_at"]).startswith("2026-11-01T01:59:"), s


def test_dst_spring_forward_skipped_slot_fires_at_the_jump(workdir: Path) -> None:
    """30 2 * * * on the spring-forward night (no 02:30): one fire at 03:00 EDT, next tomorrow."""
    with ny_daemon(workdir, ny(SPRING_FORWARD, 1, 59, 50)) as c:
        s = c.call("schedule.set", name="s", cron="30 2 * * *",
                   job={"command": ["true"], "tags": ["s"]})  # fmt: skip
        jump = ny(SPRING_FORWARD, 3, 0, 0)
        assert s["next_fire_at"] == jump, ny_text(s["next_fire_at"])
        s = fired_after(c, "s", 0)
        assert ny_text(s["next_fire_at"]) == "2026-03-09T02:30:00-04:00"
        assert jump <= s["last_fire_at"] < jump + 5, ny_text(s["last_fire_at"])
        (job,) = list_jobs(c, tag="s")
        assert job["id"] == s["last_job_id"] and s["fires"] == 1
