"""Retention over the real daemon: old finished jobs, per-owner log caps, incremental vacuum."""

from __future__ import annotations

import sqlite3
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hero_procd.client import Client
from hero_procd.errors import NOT_FOUND, HeroError
from integration.daemon_proc import DaemonProcess
from integration.helpers import daemon_running, finish, sh, submit, wait_for, wait_running

RETENTION_DAYS = 0.00005  # 4.32 s
RETENTION_S = RETENTION_DAYS * 86400.0
NO_PERIODIC_PASS = {"HERO_PROC_JANITOR_INTERVAL_S": "3600"}  # only explicit passes run


def read_only(db_path: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Rows of one query on a fresh read-only connection (closed at once: no checkpoint held up)."""
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def scalar(db_path: Path, sql: str, params: tuple[Any, ...] = ()) -> Any:
    """The single value of a one-row, one-column read-only query."""
    ((value,),) = read_only(db_path, sql, params)
    return value


def line_count(c: Client, job_id: int) -> int:
    """How many log lines the job has stored."""
    return len(c.call("job.logs", id=job_id, limit=10_000)["lines"])


def files_size(db_path: Path) -> int:
    """Bytes of the database and its WAL."""
    wal = db_path.with_name(db_path.name + "-wal")
    return db_path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


@pytest.fixture
def started(workdir: Path, request: pytest.FixtureRequest) -> Iterator[DaemonProcess]:
    """A daemon started with the environment the test is parametrized with."""
    with daemon_running(workdir, env=request.param) as proc:
        yield proc


@pytest.mark.parametrize(
    "started",
    [{"HERO_PROC_JOB_RETENTION_DAYS": str(RETENTION_DAYS), **NO_PERIODIC_PASS}],
    indirect=True,
)
def test_old_finished_jobs_go_while_active_and_recent_ones_stay(started: DaemonProcess) -> None:
    """One pass deletes exactly the old finished jobs, their lines and emptied runs."""
    db = started.db_path
    with started.client() as c:
        info = c.call("system.info")
        assert info["retention"]["job_retention_days"] == RETENTION_DAYS
        assert info["retention"]["interval_s"] == 3600
        old = [submit(c, command=sh("seq 1 50"), tags=["old"]) for _ in range(5)]
        old.append(submit(c, command=sh("seq 1 7; exit 3"), tags=["old"]))
        run = c.call(
            "run.submit",
            name="old-run",
            jobs=[
                {"key": "a", "command": ["seq", "1", "20"]},
                {"key": "b", "depends_on": ["a"], "command": ["seq", "1", "30"]},
            ],
        )
        old += list(run["jobs"].values())
        statuses = [finish(c, j)["status"] for j in old]
        assert statuses.count("failed") == 1 and statuses.count("succeeded") == len(old) - 1

        # Still active when the pass comes: one running, one queued behind it in its group.
        c.call("group.set", name="one", max_parallel=1)
        running = submit(c, command=sh("echo started; sleep 60"), group="one", tags=["keep"])
        queued = submit(c, command=sh("echo never"), group="one", tags=["keep"])
        wait_running(c, running)
        last_old = max(c.call("job.get", id=j)["finished_at"] for j in old)
        time.sleep(max(0.0, last_old + RETENTION_S + 0.3 - time.time()))
        recent = [submit(c, command=sh("seq 1 30"), tags=["recent"]) for _ in range(2)]
        for j in recent:
            finish(c, j)

        cutoff = time.time() - RETENTION_S
        expired = {
            row[0]
            for row in read_only(
                db,
                "SELECT id FROM jobs WHERE status NOT IN ('queued', 'running') AND finished_at < ?",
                (cutoff,),
            )
        }
        assert expired == set(old)
        marks = ",".join("?" * len(old))
        expected_logs = scalar(
            db,
            f"SELECT count(*) FROM log_lines WHERE owner_kind = 'job' AND owner_id IN ({marks})",
            tuple(str(j) for j in old),
        )
        assert expected_logs == 5 * 50 + 7 + 20 + 30
        jobs_before = scalar(db, "SELECT count(*) FROM jobs")

        report = c.call("system.retention_run")
        assert report["jobs"] == len(old), report
        assert report["logs"] == expected_logs, report
        assert report["runs"] == 1, report
        assert report["log_lines_trimmed"] == 0, report
        assert report["bytes_freed"] == report["pages_freed"] * scalar(db, "PRAGMA page_size")

        assert scalar(db, "SELECT count(*) FROM jobs") == jobs_before - len(old) == 4
        left = scalar(
            db,
            f"SELECT count(*) FROM log_lines WHERE owner_kind = 'job' AND owner_id IN ({marks})",
            tuple(str(j) for j in old),
        )
        assert left == 0
        for job_id in old:
            with pytest.raises(HeroError) as err:
                c.call("job.get", id=job_id)
            assert err.value.code == NOT_FOUND
        with pytest.raises(HeroError) as err:
            c.call("run.get", id=run["id"])
        assert err.value.code == NOT_FOUND
        assert c.call("job.get", id=running)["status"] == "running"
        assert c.call("job.get", id=queued)["status"] == "queued"
        for job_id in recent:
            assert c.call("job.get", id=job_id)["status"] == "succeeded"
            assert line_count(c, job_id) == 30

        again = c.call("system.retention_run")
        assert (again["jobs"], again["logs"], again["runs"]) == (0, 0, 0), again
        assert c.call("system.info")["last_retention"]["jobs"] == 0
        c.call("job.cancel", id=queued)  # first: cancelling the blocker would let it start
        c.call("job.cancel", id=running)
        finish(c, running)


@pytest.mark.parametrize(
    "started", [{"HERO_PROC_MAX_LOG_LINES": "100", **NO_PERIODIC_PASS}], indirect=True
)
def test_log_cap_keeps_each_owners_newest_lines(started: DaemonProcess) -> None:
    """Cap 100: lines are trimmed as they are written (within cap + cap/10) and by a pass to 100.

    Every dropped line is counted once, whichever of the two dropped it.
    """
    with started.client() as c:
        long_job = submit(c, command=sh("seq 1 1000"))
        at_cap = submit(c, command=sh("seq 1 100"))
        short = submit(c, command=sh("seq 1 50"))
        c.call("service.define", name="chatty", command=["sh", "-c", "seq 1 300; exec sleep 60"])
        c.call("service.start", name="chatty")
        for job_id in (long_job, at_cap, short):
            finish(c, job_id)
        assert 100 <= line_count(c, long_job) <= 110  # trimmed while it was written
        wait_for(
            lambda: (
                True
                if c.call("service.logs", name="chatty", limit=1000, after_seq=299)["lines"]
                else None
            ),
            "the service's last line",
        )

        report = c.call("system.retention_run")
        assert report["jobs"] == 0, "the jobs are recent: retention keeps them"

        lines = c.call("job.logs", id=long_job, limit=10_000)["lines"]
        assert [ln["seq"] for ln in lines] == list(range(901, 1001))
        assert [ln["text"] for ln in lines] == [str(i) for i in range(901, 1001)]
        assert line_count(c, at_cap) == 100 and line_count(c, short) == 50
        svc = c.call("service.logs", name="chatty", limit=1000)["lines"]
        assert [ln["text"] for ln in svc] == [str(i) for i in range(201, 301)]

        info = c.call("system.info")
        assert info["log_lines_trimmed"] == 900 + 200
        assert info["counts"]["logs"] == 100 + 100 + 50 + 100
        assert info["last_retention"]["log_lines_trimmed"] == report["log_lines_trimmed"]
        assert c.call("system.retention_run")["log_lines_trimmed"] == 0
        assert c.call("system.info")["log_lines_trimmed"] == 1100
        c.call("service.stop", name="chatty")


@pytest.mark.parametrize("started", [NO_PERIODIC_PASS], indirect=True)
def test_vacuum_returns_freed_pages_and_the_file_shrinks(started: DaemonProcess) -> None:
    """After deleting many rows a pass frees their pages: freelist 0, a smaller file."""
    db = started.db_path
    assert scalar(db, "PRAGMA auto_vacuum") == 2  # incremental
    printer = "for i in range(15000): print('x' * 100, i)"
    with started.client() as c:
        ids = [
            int(c.call("job.submit", command=[sys.executable, "-c", printer], tags=["bulk"])["id"])
            for _ in range(2)
        ]
        for job_id in ids:
            assert finish(c, job_id)["status"] == "succeeded"
        assert c.call("system.info")["counts"]["logs"] == 30_000
    started.stop()  # checkpoints the WAL into the file
    full = files_size(db)
    started.start()
    with started.client() as c:
        before = scalar(db, "PRAGMA freelist_count")
        cleaned = c.call("job.clean_by_tag", tag="bulk")
        assert cleaned["deleted"]["jobs"] == 2 and cleaned["deleted"]["logs"] == 30_000
        free = scalar(db, "PRAGMA freelist_count")
        assert free > before, (before, free)

        report = c.call("system.retention_run")
        page_size = scalar(db, "PRAGMA page_size")
        assert report["pages_freed"] > 0, report
        assert report["pages_freed"] >= free - before, (report, free)
        assert report["bytes_freed"] == report["pages_freed"] * page_size
        assert scalar(db, "PRAGMA freelist_count") == 0
        assert c.call("system.retention_run")["pages_freed"] == 0
    started.stop()
    shrunk = files_size(db)
    assert shrunk <= full - report["bytes_freed"] // 2, (full, shrunk, report)
    started.start()  # the fixture stops it


@pytest.mark.parametrize(
    "started",
    [{"HERO_PROC_MAX_LOG_LINES": "100", "HERO_PROC_JANITOR_INTERVAL_S": "0.5"}],
    indirect=True,
)
def test_periodic_pass_runs_without_being_asked(started: DaemonProcess) -> None:
    """With a short janitor interval passes run in the background, and the cap holds."""
    with started.client() as c:
        job_id = submit(c, command=sh("seq 1 500"))
        finish(c, job_id)

        def trimmed() -> dict[str, Any] | None:
            info: dict[str, Any] = c.call("system.info")
            done = info["log_lines_trimmed"] >= 400 and info["last_retention"] is not None
            return info if done else None

        info = wait_for(trimmed, "a background pass to trim the job's lines")
        assert info["log_lines_trimmed"] == 400 and info["last_retention"] is not None
        lines = c.call("job.logs", id=job_id, limit=10_000)["lines"]
        assert [ln["seq"] for ln in lines] == list(range(401, 501))
